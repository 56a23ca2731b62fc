"""gsplat (CUDA) backend. World-to-camera view matrices are formed here and nowhere else in d4s."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from d4s.gaussians.field import GaussianField
from d4s.geometry.cameras import rigid_inverse
from d4s.render.output import RenderOutput


@functools.cache
def gsplat_available() -> bool:
    """True when CUDA is present and gsplat's CUDA kernels load (the first call may JIT-compile them)."""
    if not torch.cuda.is_available():
        return False
    try:
        from gsplat.cuda._backend import _C
    except Exception:  # any build or import failure means the kernels are unusable
        return False
    return _C is not None


def render_gsplat(
    field: GaussianField,
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
) -> RenderOutput:
    """Render ``field`` into ``C`` cameras with ``gsplat.rasterization`` (classic mode, "RGB+ED", packed).

    Shapes as ``d4s.render.render``; all tensors must be float32 on one CUDA device.
    """
    from gsplat import rasterization

    viewmats = rigid_inverse(c2w)  # gsplat takes world-to-camera matrices
    colors, alphas, _ = rasterization(
        means=field.means,
        quats=field.quats,
        scales=field.scales,
        opacities=field.opacities,
        colors=field.sh,
        viewmats=viewmats,
        Ks=K,
        width=width,
        height=height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        sh_degree=field.sh_degree,
        backgrounds=background,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )
    return RenderOutput(rgb=colors[..., :3], depth=colors[..., 3], alpha=alphas[..., 0])
