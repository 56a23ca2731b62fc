"""Sampling images at continuous pixel positions (pixel centres at ``+0.5``, the project convention), and numpy
arrays handed to the torch geometry of ``d4s.geometry`` in float64."""

from __future__ import annotations

import numpy as np
import torch


def query_grid(height: int, width: int, stride: int) -> np.ndarray:
    """Pixel centres of a regular grid with ``stride`` pixels between points: ``uv [N, 2]`` (x, then y)."""
    if stride < 1:
        raise ValueError(f"stride: must be >= 1, got {stride}")
    v, u = np.mgrid[stride // 2 : height : stride, stride // 2 : width : stride]
    return np.stack([u.ravel(), v.ravel()], -1).astype(np.float64) + 0.5


def inside_image(uv: np.ndarray, height: int, width: int) -> np.ndarray:
    """Whether positions ``uv [..., 2]`` lie inside an ``height x width`` image: ``[...]`` bool."""
    finite = np.isfinite(uv).all(-1)
    return finite & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)


def sample_nearest(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Values of ``image [H, W, ...]`` at the pixels containing ``uv [N, 2]`` (clamped to the border): ``[N, ...]``."""
    height, width = image.shape[:2]
    uv = np.nan_to_num(uv)
    col = np.clip(np.floor(uv[:, 0]), 0, width - 1).astype(np.int64)  # clamp before the cast: inf has no int64
    row = np.clip(np.floor(uv[:, 1]), 0, height - 1).astype(np.int64)
    return image[row, col]


def sample_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``image [H, W, C]`` at ``uv [N, 2]`` (border clamped): ``[N, C]``."""
    height, width = image.shape[:2]
    x = np.clip(np.nan_to_num(uv[:, 0]) - 0.5, 0, width - 1)
    y = np.clip(np.nan_to_num(uv[:, 1]) - 0.5, 0, height - 1)
    x0, y0 = np.minimum(np.floor(x).astype(np.int64), width - 2), np.minimum(np.floor(y).astype(np.int64), height - 2)
    x0, y0 = np.maximum(x0, 0), np.maximum(y0, 0)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    wx, wy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - wx) + image[y0, x1] * wx
    bottom = image[y1, x0] * (1 - wx) + image[y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def float64_tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    """The arrays as float64 torch tensors (for ``d4s.geometry``'s projection functions)."""
    return [torch.from_numpy(np.asarray(array, np.float64)) for array in arrays]
