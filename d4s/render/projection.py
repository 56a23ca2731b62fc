"""EWA projection of 3D Gaussians to image-space ellipses (pinhole cameras), as gsplat's fused projection.

The world-to-camera transform is applied from the camera-to-world pose directly (``x_cam = R^T (x - t)``);
no view matrix is formed here.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from d4s.geometry.quaternion import quat_to_rotmat

# 3DGS / gsplat constants.
ALPHA_THRESHOLD = 1.0 / 255.0  # contributions below this alpha are skipped
RADIUS_SIGMAS = 3.33  # bounding-box half-width in standard deviations of the blurred 2D Gaussian
FRUSTUM_GUARD = 0.3  # 2D Jacobian evaluated at most 30% of the half field of view outside the image


class ProjectedGaussians(NamedTuple):
    """Per-camera image-space Gaussians, ``C`` cameras by ``N`` Gaussians.

    Attributes:
        means2d: ``[C, N, 2]`` projected centres in pixels (pixel centres at +0.5).
        depths: ``[C, N]`` camera-frame z of the centres.
        conics: ``[C, N, 3]`` upper triangle ``(a, b, c)`` of the inverse blurred 2D covariance.
        radii: ``[C, N, 2]`` int32 bounding-box half-sizes in pixels; 0 marks a culled Gaussian.
    """

    means2d: Tensor
    depths: Tensor
    conics: Tensor
    radii: Tensor


def quat_scale_to_covariance(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances ``R S S^T R^T [..., 3, 3]`` from quaternions ``[..., 4]`` and scales ``[..., 3]``."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Tensor,
    covars: Tensor,
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    opacities: Tensor | None = None,
) -> ProjectedGaussians:
    """Project Gaussians into ``C`` pinhole cameras (EWA splatting with a local affine Jacobian).

    Matches gsplat 1.5.3 (``fully_fused_projection``): the Jacobian's ``x/z, y/z`` are clamped to 1.3x the
    field of view, ``eps2d`` is added to the 2D covariance's diagonal, Gaussians outside ``(near, far)`` in depth,
    with a non-positive determinant, or whose box misses the image get radius 0. With ``opacities``, the box is
    opacity-aware as in gsplat's CUDA kernel (``extent = min(3.33, sqrt(2 ln(255 opacity)))``, and Gaussians
    with opacity below 1/255 are culled): a tighter box that drops only pixels whose alpha would be skipped.

    Args:
        means: ``[N, 3]`` world centres.
        covars: ``[N, 3, 3]`` world covariances.
        c2w: ``[C, 4, 4]`` camera-to-world poses (OpenCV).
        K: ``[C, 3, 3]`` intrinsics in pixels.
        width, height: image size in pixels.
        opacities: optional ``[N]`` activated opacities for the tighter box.
    """
    R = c2w[:, None, :3, :3]  # [C, 1, 3, 3]
    means_c = ((means[None] - c2w[:, None, :3, 3])[..., None, :] @ R).squeeze(-2)  # R^T (x - t), [C, N, 3]
    covars_c = R.transpose(-1, -2) @ covars[None] @ R  # [C, N, 3, 3]
    x, y, depths = means_c.unbind(-1)
    in_range = (depths > near_plane) & (depths < far_plane)
    z = torch.where(in_range, depths, torch.ones_like(depths))  # keeps culled Gaussians' gradients finite

    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]  # [C, 1]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    tan_half_fov_x, tan_half_fov_y = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + FRUSTUM_GUARD * tan_half_fov_x
    lim_x_neg = cx / fx + FRUSTUM_GUARD * tan_half_fov_x
    lim_y_pos = (height - cy) / fy + FRUSTUM_GUARD * tan_half_fov_y
    lim_y_neg = cy / fy + FRUSTUM_GUARD * tan_half_fov_y
    tx = z * torch.clamp(x / z, min=-lim_x_neg, max=lim_x_pos)
    ty = z * torch.clamp(y / z, min=-lim_y_neg, max=lim_y_pos)
    zeros = torch.zeros_like(z)
    J = torch.stack([fx / z, zeros, -fx * tx / (z * z), zeros, fy / z, -fy * ty / (z * z)], dim=-1)
    J = J.reshape(z.shape + (2, 3))
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)

    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det_blurred = a * c - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    det = det_blurred.clamp_min(1e-10)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)

    with torch.no_grad():
        extent = torch.full_like(z, RADIUS_SIGMAS)
        visible = (det_blurred > 0) & in_range
        if opacities is not None:
            opacity = opacities.detach()[None].expand_as(z)
            visible &= opacity >= ALPHA_THRESHOLD
            extent = torch.clamp(
                torch.sqrt(2.0 * torch.log(opacity.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)), max=RADIUS_SIGMAS
            )
        radius = torch.stack([torch.ceil(extent * torch.sqrt(a)), torch.ceil(extent * torch.sqrt(c))], dim=-1)
        visible &= (radius > 0).any(dim=-1)
        mx, my = means2d.detach().unbind(-1)
        visible &= (mx + radius[..., 0] > 0) & (mx - radius[..., 0] < width)
        visible &= (my + radius[..., 1] > 0) & (my - radius[..., 1] < height)
        # clamp before the int cast: huge Gaussians cover the image instead of overflowing to "culled"
        radius = radius.clamp_max(float(2**30))
        radii = torch.where(visible[..., None], radius, 0.0).to(torch.int32)
    return ProjectedGaussians(means2d=means2d, depths=depths, conics=conics, radii=radii)
