"""Reading photos for generation: any mode Pillow opens becomes uint8 RGB, failures name the file."""

import numpy as np
import pytest
from PIL import Image

from d4s.utils.image import load_photo, open_image


def test_modes_become_rgb(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_photo(tmp_path / "rgba.png"), rgba[..., :3])
    grey16 = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 1800).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    expected = np.round(grey16 / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(load_photo(tmp_path / "grey16.png"), np.repeat(expected[..., None], 3, axis=-1))


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[0, 0] = 255  # a white top-left pixel
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    photo = load_photo(tmp_path / "rotated.jpg")
    assert photo.shape == (6, 4, 3)
    assert photo[0, -1].mean() > 200  # the top-left corner moved to the top-right


def test_failures_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        open_image(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n nothing")
    with pytest.raises(ValueError, match="broken.png: cannot read the image"):
        load_photo(tmp_path / "broken.png")
