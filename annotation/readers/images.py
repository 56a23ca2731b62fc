"""Image files as numpy arrays, with every failure (missing, corrupt, truncated, wrong kind) an InputError.

Decoding goes through Pillow, which refuses truncated files instead of returning a partly grey image, and
returns RGB (OpenCV would return BGR).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from annotation.errors import InputError
from d4s.utils.image import open_image

_PNG16_MODES = ("I;16", "I;16B", "I;16L")


def _open_decoded(path: Path) -> Image.Image:
    """The fully decoded image at ``path``; raises InputError when it is missing or cannot be decoded."""
    try:
        return open_image(path)
    except FileNotFoundError as error:
        raise InputError(path, "image file is missing") from error
    except ValueError as error:
        raise InputError(path, f"cannot decode image ({error.__cause__})") from error


def load_image(path: str | Path) -> np.ndarray:
    """An image file (any format Pillow reads) as uint8 RGB ``[H, W, 3]``."""
    return np.asarray(_open_decoded(Path(path)).convert("RGB"))


def load_png16(path: str | Path) -> np.ndarray:
    """A single-channel 16-bit PNG as uint16 ``[H, W]``; an 8-bit or colour image is an InputError."""
    path = Path(path)
    image = _open_decoded(path)
    if image.mode not in _PNG16_MODES:
        raise InputError(path, f"expected a single-channel 16-bit image, got Pillow mode {image.mode!r}")
    return np.asarray(image).astype(np.uint16)


def check_size(path: str | Path, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Return ``image [H, W, ...]`` if it is ``size = (H, W)``, else raise InputError naming ``path``."""
    if image.shape[:2] != tuple(size):
        height, width = image.shape[:2]
        raise InputError(path, f"image is {width}x{height}, the scene's frames are {size[1]}x{size[0]}")
    return image


def stack_maps(maps: Sequence[np.ndarray], size: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """Per-frame maps ``[H, W, ...]`` stacked as ``[t, H, W, ...]``; no maps give an empty ``[0, H, W]`` array."""
    return np.stack(maps) if len(maps) else np.zeros((0, *size), dtype)


def load_frames(paths: Sequence[Path], size: tuple[int, int]) -> np.ndarray:
    """Images that must all be ``size = (H, W)``, stacked as uint8 RGB ``[t, H, W, 3]``."""
    frames = [check_size(path, load_image(path), size) for path in paths]
    return np.stack(frames) if frames else np.zeros((0, *size, 3), np.uint8)
