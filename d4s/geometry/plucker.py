"""Plücker ray embeddings used for camera conditioning (paper Sec. 3, "Plücker embeddings P in R^{T x H x W x 6}")."""

from __future__ import annotations

import torch
from torch import Tensor

from d4s.geometry.cameras import camera_frame_rays, check_c2w, check_intrinsics
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
    rays = camera_frame_rays(K.to(dtype=c2w.dtype, device=c2w.device), height, width).flatten(-3, -2)
    unit = torch.nn.functional.normalize(rays, dim=-1)  # [..., H W, 3]; |R r| = |r|
    R, origin = c2w[..., :3, :3], c2w[..., :3, 3]
    # d = R r and o x d = [o]x R r: one [6, 3] map per camera, applied to every ray at once, channels first
    to_plucker = torch.cat([_cross_product_matrix(origin) @ R, R], dim=-2)
    return (to_plucker @ unit.mT).unflatten(-1, (height, width))


def _cross_product_matrix(v: Tensor) -> Tensor:
    """``[..., 3, 3]`` matrices ``[v]x`` with ``[v]x a = v x a`` for ``v [..., 3]``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))
