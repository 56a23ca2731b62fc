"""Differentiable rendering of Gaussian fields: ``render()`` dispatches to gsplat (CUDA) or pure PyTorch.

Both backends implement the same image formation (EWA projection with ``eps2d`` blur, depth-sorted
front-to-back alpha compositing, gsplat's thresholds) and return ``RenderOutput(rgb, depth, alpha)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from d4s.gaussians.field import DeformableGaussianField, GaussianField
from d4s.geometry.cameras import check_c2w, check_intrinsics
from d4s.render.gsplat_backend import gsplat_available, render_gsplat
from d4s.render.output import RenderOutput
from d4s.render.torch_backend import render_torch
from d4s.utils.checks import check_choice, check_finite, check_positive_int, check_shape

Backend = Literal["auto", "torch", "gsplat"]


def resolve_backend(backend: Backend, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The concrete backend for ``backend``: ``auto`` picks gsplat for float32 CUDA tensors when its kernels
    load, else torch."""
    check_choice(backend, "backend", Backend)
    gsplat_ok = device.type == "cuda" and dtype == torch.float32 and gsplat_available()
    if backend == "auto":
        return "gsplat" if gsplat_ok else "torch"
    if backend == "gsplat" and not gsplat_ok:
        raise ValueError(
            "backend: 'gsplat' needs float32 tensors on a CUDA device and gsplat's CUDA kernels; "
            f"got {dtype} on {device}. Use backend='torch' (or 'auto') there."
        )
    return backend


def _check_background(background: Tensor | None, num_cameras: int, like: Tensor) -> Tensor | None:
    if background is None:
        return None
    check_shape(background, "background", (3,), batched=True)
    check_finite(background, "background")
    if background.dim() == 1:
        background = background.expand(num_cameras, 3)
    check_shape(background, "background", (num_cameras, 3))
    return background.to(device=like.device, dtype=like.dtype)


def render(
    field: GaussianField,
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    backend: Backend = "auto",
    background: Tensor | None = None,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
) -> RenderOutput:
    """Render a Gaussian field from ``C`` cameras.

    Args:
        field: ``N`` Gaussians; for a 4D scene pass ``deformable.at(t)``.
        c2w: ``[C, 4, 4]`` camera-to-world poses, OpenCV axes (x right, y down, z forward), metres.
        K: ``[C, 3, 3]`` pinhole intrinsics in pixels of a ``width x height`` image (pixel centres at +0.5).
        width, height: output size in pixels.
        backend: ``"gsplat"`` (CUDA), ``"torch"`` (pure PyTorch, any device, differentiable) or ``"auto"``
            (gsplat when the tensors are on CUDA and its kernels load, else torch).
        background: ``[3]`` or ``[C, 3]`` colour behind the Gaussians; ``None`` is black.
        near_plane, far_plane: Gaussians whose centre depth is outside ``(near, far)`` are culled.
        eps2d: screen-space blur (pixels^2) added to each 2D covariance, as gsplat.
    Returns:
        ``RenderOutput``: rgb ``[C, H, W, 3]``, depth ``[C, H, W]`` (expected z-depth, 0 where nothing is
        hit), alpha ``[C, H, W]``.
    Raises:
        ValueError naming the argument for wrong shapes, non-finite values, non-rigid ``c2w``,
        non-positive focal lengths, unknown or unavailable backends.
    """
    if isinstance(field, DeformableGaussianField):
        raise ValueError("field: got a DeformableGaussianField; render one time of it with field.at(t)")
    if not isinstance(field, GaussianField):
        raise ValueError(f"field: expected a GaussianField, got {type(field).__name__}")
    field.check_finite("field")
    check_positive_int(width, "width")
    check_positive_int(height, "height")
    check_shape(c2w, "c2w", (None, 4, 4))
    if c2w.shape[0] == 0:
        raise ValueError("c2w: no cameras given (shape [0, 4, 4]); pass at least one pose")
    check_c2w(c2w, "c2w")
    check_shape(K, "K", (c2w.shape[0], 3, 3))
    check_intrinsics(K, "K")
    if not 0.0 < near_plane < far_plane:
        raise ValueError(f"near_plane, far_plane: need 0 < near < far, got {near_plane}, {far_plane}")
    if not eps2d >= 0.0:
        raise ValueError(f"eps2d: the screen-space blur must be >= 0, got {eps2d}")
    c2w = c2w.to(device=field.device, dtype=field.dtype)
    K = K.to(device=field.device, dtype=field.dtype)
    background = _check_background(background, c2w.shape[0], field.means)
    options = dict(background=background, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d)
    if resolve_backend(backend, field.device, field.dtype) == "gsplat":
        return render_gsplat(field, c2w, K, width, height, **options)
    return render_torch(field, c2w, K, width, height, **options)


__all__ = ["Backend", "RenderOutput", "gsplat_available", "render", "render_gsplat", "render_torch", "resolve_backend"]
