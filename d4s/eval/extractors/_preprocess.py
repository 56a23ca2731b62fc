"""Input checks and torch image preprocessing shared by the extractors (resize, centre crop, normalise)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from d4s.utils.checks import check_finite, check_floating, check_shape

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_frames(frames: Tensor, name: str = "frames") -> Tensor:
    """``frames [N, 3, H, W]`` float in ``[0, 1]``, checked (``ValueError`` naming ``name``) and made float32."""
    check_shape(frames, name, (None, 3, None, None))
    check_floating(frames, name)
    check_finite(frames, name)
    if frames.shape[0] == 0:
        raise ValueError(f"{name}: no frames given (shape {list(frames.shape)})")
    return frames.float()


def resize_short_side(frames: Tensor, size: int, mode: str, antialias: bool) -> Tensor:
    """``frames [N, C, H, W]`` scaled so that the shorter side is ``size`` (the longer one rounded up).

    ``mode``: ``"bilinear"`` or ``"bicubic"`` (pixel-centre aligned, ``align_corners=False``).
    """
    height, width = frames.shape[-2:]
    scale = size / min(height, width)
    target = (size, math.ceil(width * scale)) if height <= width else (math.ceil(height * scale), size)
    if target == (height, width):
        return frames
    return F.interpolate(frames, size=target, mode=mode, align_corners=False, antialias=antialias)


def center_crop(frames: Tensor, size: int) -> Tensor:
    """The central ``size x size`` window of ``frames [N, C, H, W]`` (``H, W >= size``)."""
    height, width = frames.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return frames[..., top : top + size, left : left + size]


def normalize(frames: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(frames - mean) / std`` per channel of ``frames [N, 3, H, W]``."""
    mean_t = torch.tensor(mean, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    return (frames - mean_t) / std_t


def clip_pixels(frames: Tensor, size: int) -> Tensor:
    """CLIP's image preprocessing in torch: ``frames [N, 3, H, W]`` in ``[0, 1]`` -> ``[N, 3, size, size]``.

    As OpenAI CLIP / ``CLIPImageProcessor``: bicubic resize of the shorter side to ``size`` (antialiased, clamped
    to ``[0, 1]`` as an 8-bit image would be), centre crop, CLIP mean/std normalisation.
    """
    resized = resize_short_side(frames, size, "bicubic", antialias=True).clamp(0.0, 1.0)
    return normalize(center_crop(resized, size), CLIP_MEAN, CLIP_STD)
