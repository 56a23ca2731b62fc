"""Procedurally built Gaussian scenes: textured planes, spheres, a moving object, random fields, and the
pixel-aligned field of an RGB-D image.

Used by the renderer showcase (``python -m d4s.showcase``), the demo's ground-truth reference and handy for tests and
benchmarks: the geometry is known in closed form, so renders can be checked against it.
World frame: OpenCV-like, the first camera at the origin looking along +z, up is -y.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from d4s.gaussians.deform import identity_deformation
from d4s.gaussians.field import DeformableGaussianField, GaussianField
from d4s.geometry.cameras import unproject_depth
from d4s.geometry.quaternion import axis_angle_to_quat, quat_conjugate, quat_multiply, quat_to_rotmat, rotmat_to_quat


def plane(
    center: tuple[float, float, float],
    u_axis: tuple[float, float, float],
    v_axis: tuple[float, float, float],
    size: tuple[float, float],
    spacing: float,
    color_fn,
    opacity: float = 0.95,
    thickness: float = 1e-3,
) -> GaussianField:
    """Flat Gaussians tiling a rectangle spanned by unit, orthogonal ``u_axis`` and ``v_axis``.

    ``color_fn(u [M], v [M]) -> rgb [M, 3]`` textures the plane from its local coordinates in metres.
    """
    u_dir, v_dir = torch.tensor(u_axis), torch.tensor(v_axis)
    normal = torch.linalg.cross(u_dir, v_dir)
    nu, nv = max(1, round(size[0] / spacing)), max(1, round(size[1] / spacing))
    us = (torch.arange(nu) + 0.5) * size[0] / nu - size[0] / 2
    vs = (torch.arange(nv) + 0.5) * size[1] / nv - size[1] / 2
    uu, vv = (t.flatten() for t in torch.meshgrid(us, vs, indexing="ij"))
    means = torch.tensor(center) + uu[:, None] * u_dir + vv[:, None] * v_dir
    rotation = rotmat_to_quat(torch.stack([u_dir, v_dir, normal], dim=1))
    n = means.shape[0]
    return GaussianField.from_activated(
        means=means,
        rotations=rotation.expand(n, 4),
        scales=torch.tensor([0.6 * spacing, 0.6 * spacing, thickness]).expand(n, 3),
        opacities=torch.full((n,), opacity),
        rgb=color_fn(uu, vv).clamp(0.0, 1.0),
    )


def rgbd_field(image: Tensor, depth: Tensor, K: Tensor, opacity: float = 0.99) -> GaussianField:
    """One Gaussian per pixel with valid depth: the RGB-D image lifted into its own camera frame (pixel-aligned, as
    the LDRM predicts, Sec. 3.3). Each Gaussian is a disc facing the camera whose standard deviation is half the
    pixel's footprint at its depth (``z / 2 fx`` by ``z / 2 fy``): the discs cover the image without gaps and spill
    little into their neighbours, so the field renders back to ``image`` from the camera it came from.

    Args:
        image: ``[3, H, W]`` colours in [0, 1]; depth: ``[H, W]`` z-depth in metres (0 = invalid, no Gaussian);
        K: ``[3, 3]`` intrinsics of the image. Returns a field in the camera frame (OpenCV axes).
    """
    valid = depth > 0
    points = unproject_depth(depth.float(), K.float())[valid]
    z = depth.float()[valid]
    footprint = torch.stack([0.5 * z / K[0, 0], 0.5 * z / K[1, 1], 1e-3 * z], dim=-1)
    n = points.shape[0]
    return GaussianField.from_activated(
        means=points,
        rotations=torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4),
        scales=footprint,
        opacities=torch.full((n,), opacity),
        rgb=image.float().permute(1, 2, 0)[valid].clamp(0.0, 1.0),
    )


def sphere(
    center: tuple[float, float, float], radius: float, count: int, color_fn, opacity: float = 0.97
) -> GaussianField:
    """Surface Gaussians on a sphere (Fibonacci lattice), each a disc tangent to the surface.

    ``color_fn(unit_normals [M, 3]) -> rgb [M, 3]`` textures the sphere.
    """
    i = torch.arange(count, dtype=torch.float32) + 0.5
    polar = torch.arccos(1 - 2 * i / count)
    azimuth = math.pi * (1 + 5**0.5) * i
    normal = torch.stack(
        [torch.cos(azimuth) * torch.sin(polar), torch.cos(polar), torch.sin(azimuth) * torch.sin(polar)], dim=1
    )
    helper = torch.where(normal[:, 1:2].abs() < 0.9, torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]))
    tangent = torch.nn.functional.normalize(torch.linalg.cross(helper, normal), dim=1)
    bitangent = torch.linalg.cross(normal, tangent)
    disc = 1.2 * radius * math.sqrt(4 * math.pi / count) / 2
    return GaussianField.from_activated(
        means=torch.tensor(center) + radius * normal,
        rotations=rotmat_to_quat(torch.stack([tangent, bitangent, normal], dim=2)),
        scales=torch.tensor([disc, disc, disc * 0.05]).expand(count, 3),
        opacities=torch.full((count,), opacity),
        rgb=color_fn(normal).clamp(0.0, 1.0),
    )


def rigid_motion(
    field: GaussianField, center: Tensor, rotations: Tensor, translations: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Deformations ``(dmu [T, N, 3], dq [T, N, 4], ds [T, N, 3])`` that move ``field`` rigidly.

    At time ``t`` every Gaussian turns by the world rotation ``rotations[t]`` (wxyz) about ``center [3]`` and
    then shifts by ``translations[t] [3]``. Because ``q_t = q_0 ⊗ dq`` applies ``dq`` in the Gaussian's own
    frame, a world rotation ``r`` becomes ``dq = q_0^-1 ⊗ r ⊗ q_0``.
    """
    q0 = field.rotations[None]  # [1, N, 4]
    r = rotations[:, None, :].expand(-1, field.num_gaussians, 4)  # [T, N, 4]
    offset = field.means - center
    moved = center + (quat_to_rotmat(rotations)[:, None] @ offset[None, :, :, None]).squeeze(-1)
    dmu = moved + translations[:, None, :] - field.means
    dq = quat_multiply(quat_conjugate(q0).expand_as(r), quat_multiply(r, q0.expand_as(r)))
    return dmu, dq, torch.zeros_like(dmu)


def showcase_scene(num_frames: int) -> DeformableGaussianField:
    """A small room: a checkered floor, a gradient back wall, two static spheres and a striped ball that
    bounces and spins over ``num_frames`` times. About 34k Gaussians, scene centre 4 m in front of the origin."""

    def checker(u: Tensor, v: Tensor) -> Tensor:
        odd = ((torch.floor(u / 0.5) + torch.floor(v / 0.5)) % 2)[:, None]
        return torch.tensor([0.85, 0.82, 0.75]) * (1 - odd) + torch.tensor([0.25, 0.3, 0.38]) * odd

    def wall(u: Tensor, v: Tensor) -> Tensor:
        s = ((u + 4) / 8)[:, None]
        return (
            torch.tensor([0.95, 0.55, 0.3]) * (1 - s)
            + torch.tensor([0.3, 0.5, 0.9]) * s
            + 0.05 * torch.sin(6 * v)[:, None]
        )

    def solid(rgb: tuple[float, float, float]):
        return lambda normals: torch.tensor(rgb).expand(normals.shape[0], 3)

    def stripes(normals: Tensor) -> Tensor:
        band = (torch.floor(4 * torch.atan2(normals[:, 2], normals[:, 0]) / math.pi) % 2)[:, None]
        return torch.tensor([0.95, 0.9, 0.2]) * band + torch.tensor([0.8, 0.1, 0.25]) * (1 - band)

    static = GaussianField.cat(
        [
            plane((0.0, 1.0, 4.5), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (8.0, 9.0), 0.06, checker),
            plane((0.0, -1.0, 8.5), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (8.0, 4.4), 0.07, wall),
            sphere((-1.3, 0.45, 4.6), 0.55, 2500, solid((0.2, 0.7, 0.35))),
            sphere((1.4, 0.6, 5.4), 0.4, 1800, solid((0.35, 0.4, 0.95))),
        ]
    )
    ball_center = torch.tensor([0.1, 0.55, 3.6])
    ball = sphere(tuple(ball_center.tolist()), 0.35, 2500, stripes)
    phase = torch.linspace(0.0, 1.0, num_frames)
    height = 0.9 * torch.abs(torch.sin(2 * math.pi * phase))  # two bounces
    translations = torch.stack([0.3 * torch.sin(2 * math.pi * phase), -height, torch.zeros_like(phase)], dim=1)
    spin = axis_angle_to_quat(torch.stack([torch.zeros_like(phase), -2 * math.pi * phase, torch.zeros_like(phase)], 1))
    dmu, dq, ds = rigid_motion(ball, ball_center, spin, translations)
    still = identity_deformation(num_frames, static.num_gaussians)
    return DeformableGaussianField(
        GaussianField.cat([static, ball]), *(torch.cat([a, b], dim=1) for a, b in zip(still, (dmu, dq, ds)))
    )


def random_field(
    num: int,
    seed: int = 0,
    sh_degree: int = 0,
    dtype: torch.dtype = torch.float32,
    depth_range: tuple[float, float] = (2.0, 6.0),
    scale_range: tuple[float, float] = (0.02, 0.3),
    opacity_range: tuple[float, float] = (0.1, 0.95),
) -> GaussianField:
    """``num`` random Gaussians in front of the identity camera, for tests and benchmarks.

    Depths are uniform in ``depth_range``, with ``|x|, |y| <= 0.6 z`` (a 62 degree cone); scales, opacities and SH
    coefficients (normal, std 0.5) are random, orientations uniform. Reproducible for a given ``seed``.
    """
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
