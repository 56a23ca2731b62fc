"""Plücker ray embeddings used for camera conditioning (paper Sec. 3, "Plücker embeddings P in R^{T x H x W x 6}")."""

from __future__ import annotations

import torch
from torch import Tensor

from d4s.geometry.cameras import camera_rays, check_c2w, check_intrinsics
from d4s.utils.checks import check_positive_int


def plucker_embedding(c2w: Tensor, K: Tensor, height: int, width: int) -> Tensor:
    """Per-pixel Plücker coordinates ``[o x d, d]`` of the rays through pixel centres.

    Args:
        c2w: ``[..., 4, 4]`` camera-to-world poses (OpenCV axes).
        K: ``[..., 3, 3]`` intrinsics in pixels of a ``height x width`` image; batch shape as ``c2w``.
        height, width: image size in pixels.
    Returns:
        ``[..., 6, H, W]``: channels 0-2 are the moment ``o x d``, channels 3-5 the unit direction ``d``,
        with ``o`` the camera centre and ``d = normalize(R K^-1 [u + 0.5, v + 0.5, 1])``.
    """
    check_c2w(c2w, "c2w")
    check_intrinsics(K, "K")
    check_positive_int(height, "height")
    check_positive_int(width, "width")
    if c2w.shape[:-2] != K.shape[:-2]:
        raise ValueError(f"K: batch shape {list(K.shape[:-2])} does not match c2w's {list(c2w.shape[:-2])}")
    origins, directions = camera_rays(c2w, K.to(dtype=c2w.dtype, device=c2w.device), height, width)
    moments = torch.cross(origins, directions, dim=-1)
    return torch.cat([moments, directions], dim=-1).movedim(-1, -3)
