"""Shared test helpers: small random Gaussian scenes and cameras that look at them."""

from __future__ import annotations

import torch

from d4s.gaussians import GaussianField
from d4s.geometry import intrinsics_from_fov, look_at


def random_field(
    num: int,
    seed: int = 0,
    sh_degree: int = 0,
    dtype: torch.dtype = torch.float32,
    depth_range: tuple[float, float] = (2.0, 6.0),
    scale_range: tuple[float, float] = (0.02, 0.3),
    opacity_range: tuple[float, float] = (0.1, 0.95),
) -> GaussianField:
    """``num`` random Gaussians in front of the identity camera (z in ``depth_range``), any orientation."""
    g = torch.Generator().manual_seed(seed)
    z = torch.empty(num).uniform_(*depth_range, generator=g)
    xy = (torch.rand(num, 2, generator=g) * 2 - 1) * 0.6 * z[:, None]
    scales = torch.empty(num, 3).uniform_(*scale_range, generator=g)
    opacities = torch.empty(num).uniform_(*opacity_range, generator=g)
    sh = torch.randn(num, (sh_degree + 1) ** 2, 3, generator=g) * 0.5
    field = GaussianField.from_activated(
        means=torch.cat([xy, z[:, None]], dim=1),
        rotations=torch.randn(num, 4, generator=g),
        scales=scales,
        opacities=opacities,
        sh=sh,
    )
    return field.to(dtype)


def orbit_cameras(num: int, width: int, height: int, dtype: torch.dtype = torch.float32, radius: float = 0.5):
    """``num`` cameras near the origin looking at ``(0, 0, 4)``: ``c2w [C, 4, 4]``, ``K [C, 3, 3]``."""
    angles = torch.linspace(0, 2 * torch.pi, num + 1, dtype=torch.float64)[:num]
    eye = torch.stack([radius * torch.cos(angles), 0.3 * radius * torch.sin(angles), 0.2 * torch.sin(angles)], -1)
    c2w = look_at(eye, torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64).expand_as(eye)).to(dtype)
    K = intrinsics_from_fov(width, height, 60.0, dtype=dtype).expand(num, 3, 3).clone()
    K[:, 0, 2] += 0.3  # an off-centre principal point exercises cx, cy
    K[:, 1, 2] -= 0.7
    return c2w, K

