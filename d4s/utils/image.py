"""Reading image files: fully decoded through Pillow, every failure a clear ``FileNotFoundError`` or ``ValueError``.

Pillow refuses truncated files instead of returning a partly grey image, and returns RGB (OpenCV returns BGR).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I")


def open_image(path: str | Path) -> Image.Image:
    """The fully decoded image at ``path`` (any mode); raises ``FileNotFoundError`` when missing and
    ``ValueError`` when it cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: cannot read the image ({error})") from error


def load_photo(path: str | Path) -> np.ndarray:
    """A photo as uint8 RGB ``[H, W, 3]``, turned upright as its EXIF orientation tag says (phone pictures).

    Single-channel 16-bit and 32-bit integer images are taken as 16-bit grey (Pillow's own conversion would clip
    them to white)."""
    image = ImageOps.exif_transpose(open_image(path))
    if image.mode in WIDE_GREY_MODES:
        grey = np.asarray(image).astype(np.float64) * (255.0 / 65535.0)
        return np.repeat(grey.clip(0, 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"))
