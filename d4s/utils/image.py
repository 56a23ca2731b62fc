"""Reading image files: fully decoded through Pillow, every failure a clear ``FileNotFoundError`` or ``ValueError``.

Pillow refuses truncated files instead of returning a partly grey image, and returns RGB (OpenCV returns BGR).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


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
    """A photo as uint8 RGB ``[H, W, 3]``, turned upright as its EXIF orientation tag says (phone pictures)."""
    return np.asarray(ImageOps.exif_transpose(open_image(path)).convert("RGB"))
