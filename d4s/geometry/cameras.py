"""Camera conventions shared by every module.

- Axes: OpenCV (x right, y down, z forward).
- Poses: camera-to-world ``c2w [..., 4, 4]`` (rotation columns are the camera axes in world coordinates,
  translation is the camera centre), metres, float32 unless a caller asks otherwise.
- Intrinsics: ``K [..., 3, 3]`` in pixels of the image they belong to. Pixel ``(u, v)`` (column, row) covers
  the square ``[u, u+1) x [v, v+1)``, so its centre is ``(u + 0.5, v + 0.5)``. Under this convention a resize by
  ``s`` scales ``fx, fy, cx, cy`` by ``s`` exactly, and normalised intrinsics are the intrinsics of a 1x1 image.
- Depth: z-depth in metres, 0 marks an invalid pixel.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from d4s.utils.checks import check_finite, check_shape


def check_c2w(c2w: Tensor, name: str = "c2w", atol: float = 1e-3) -> Tensor:
    """Validate camera-to-world poses ``[..., 4, 4]``; return them unchanged.

    Raises ``ValueError`` naming ``name`` if the shape is wrong, a value is not finite, the last row is not
    ``[0, 0, 0, 1]``, or the upper-left 3x3 block is not a rotation (orthonormal with determinant +1).
    """
    check_shape(c2w, name, (4, 4), batched=True)
    check_finite(c2w, name)
    c2w64 = c2w.detach().double()
    bottom = c2w64.new_tensor([0.0, 0.0, 0.0, 1.0])
    if not torch.allclose(c2w64[..., 3, :], bottom.expand_as(c2w64[..., 3, :]), atol=atol):
        raise ValueError(f"{name}: last row must be [0, 0, 0, 1] (a rigid 4x4 camera-to-world pose)")
    R = c2w64[..., :3, :3]
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    ortho_err = (R @ R.transpose(-1, -2) - eye).abs().amax() if R.numel() else R.new_zeros(())
    if ortho_err > atol:
        raise ValueError(
            f"{name}: rotation block is not orthonormal (max |R R^T - I| = {float(ortho_err):.3g} > {atol}); "
            "poses must be rigid, without scale or shear"
        )
    if R.numel() and bool((torch.linalg.det(R) < 0).any()):
        raise ValueError(f"{name}: rotation block has determinant -1 (a reflection); expected a right-handed rotation")
    return c2w


def check_intrinsics(K: Tensor, name: str = "K") -> Tensor:
    """Validate pinhole intrinsics ``[..., 3, 3]``: finite, positive focal lengths, no skew, last row ``[0, 0, 1]``."""
    check_shape(K, name, (3, 3), batched=True)
    check_finite(K, name)
    if bool((K[..., 0, 0] <= 0).any()) or bool((K[..., 1, 1] <= 0).any()):
        raise ValueError(f"{name}: focal lengths fx = K[0,0] and fy = K[1,1] must be positive (found zero or negative)")
    last = K.new_tensor([0.0, 0.0, 1.0])
    if not torch.allclose(K[..., 2, :], last.expand_as(K[..., 2, :])):
        raise ValueError(f"{name}: last row must be [0, 0, 1] (pinhole intrinsics in pixels)")
    if bool((K[..., 0, 1] != 0).any()) or bool((K[..., 1, 0] != 0).any()):
        raise ValueError(f"{name}: skew K[0,1] and K[1,0] must be 0 (square-axis pinhole cameras only)")
    return K


def rigid_inverse(T: Tensor) -> Tensor:
    """Inverse of rigid transforms ``[..., 4, 4]`` (``[R | t]`` -> ``[R^T | -R^T t]``), exact and cheap."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    R_inv = R.transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = R_inv
    out[..., :3, 3:] = -R_inv @ t
    out[..., 3, 3] = 1.0
    return out


def relative_to_first(c2w: Tensor) -> Tensor:
    """Re-express poses ``[..., T, 4, 4]`` relative to frame 0, so that frame 0 becomes exactly the identity."""
    check_shape(c2w, "c2w", (None, 4, 4), batched=True)
    relative = rigid_inverse(c2w[..., :1, :, :]) @ c2w
    relative[..., 0, :, :] = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
    return relative


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """Camera-to-world pose ``[..., 4, 4]`` of a camera at ``eye [..., 3]`` looking at ``target [..., 3]``.

    ``up [..., 3]`` is the world's up direction (default ``(0, -1, 0)``: up is -y in OpenCV axes), so a camera
    at the origin looking at ``(0, 0, 1)`` gets the identity rotation.
    """
    if up is None:
        up = eye.new_tensor([0.0, -1.0, 0.0]).expand_as(eye)
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    x = torch.nn.functional.normalize(torch.cross(-up, z, dim=-1), dim=-1)
    y = torch.cross(z, x, dim=-1)
    c2w = torch.zeros(eye.shape[:-1] + (4, 4), dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = x, y, z, eye
    c2w[..., 3, 3] = 1.0
    return c2w


#: horizontal field of view assumed for an image whose intrinsics nobody gave (the showcase, generation, viewers)
DEFAULT_FOV_DEGREES = 60.0


def intrinsics_from_fov(
    width: int, height: int, fov_x_degrees: float = DEFAULT_FOV_DEGREES, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Intrinsics ``[3, 3]`` of a centred pinhole camera with square pixels and horizontal FoV in degrees."""
    if not 0.0 < fov_x_degrees < 180.0:
        raise ValueError(f"fov_x_degrees: must lie in (0, 180), got {fov_x_degrees}")
    focal = 0.5 * width / math.tan(math.radians(fov_x_degrees) / 2.0)
    return torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]], dtype=dtype)


def resize_intrinsics(K: Tensor, src_size: tuple[int, int], dst_size: tuple[int, int]) -> Tensor:
    """Intrinsics ``[..., 3, 3]`` after resizing an image from ``src_size`` to ``dst_size`` (both ``(H, W)``)."""
    (src_h, src_w), (dst_h, dst_w) = src_size, dst_size
    scale = K.new_tensor([[dst_w / src_w], [dst_h / src_h], [1.0]])
    return K * scale


def crop_intrinsics(K: Tensor, top: int, left: int) -> Tensor:
    """Intrinsics ``[..., 3, 3]`` of the crop whose top-left pixel is ``(left, top)`` of the original image."""
    out = K.clone()
    out[..., 0, 2] -= left
    out[..., 1, 2] -= top
    return out


def pixel_centers(height: int, width: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Pixel-centre coordinates ``[H, W, 2]`` as ``(u + 0.5, v + 0.5)`` (column, row)."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device), torch.arange(width, dtype=dtype, device=device), indexing="ij"
    )
    return torch.stack([u, v], dim=-1) + 0.5


def camera_frame_rays(K: Tensor, height: int, width: int) -> Tensor:
    """Rays ``K^-1 [u, v, 1]`` through pixel centres, camera frame, z = 1: ``[..., H, W, 3]``."""
    uv = pixel_centers(height, width, dtype=K.dtype, device=K.device)
    uv1 = torch.cat([uv, torch.ones_like(uv[..., :1])], dim=-1).reshape(height * width, 3)
    # one [H W, 3] x [3, 3] product per camera, not H W products of 3 x 3 by 3 x 1 (tens of times slower on a CPU)
    return (uv1 @ torch.linalg.inv(K).mT).unflatten(-2, (height, width))


def camera_rays(c2w: Tensor, K: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """World-space rays through every pixel centre.

    Args:
        c2w: ``[..., 4, 4]`` camera-to-world poses.
        K: ``[..., 3, 3]`` intrinsics in pixels of a ``height x width`` image (same batch shape).
    Returns:
        origins ``[..., H, W, 3]`` (the camera centre) and unit directions ``[..., H, W, 3]``,
        ``d = normalize(R K^-1 [u + 0.5, v + 0.5, 1])``.
    """
    rays_cam = camera_frame_rays(K, height, width).flatten(-3, -2)  # [..., H W, 3]
    rotated = (rays_cam @ c2w[..., :3, :3].mT).unflatten(-2, (height, width))
    directions = torch.nn.functional.normalize(rotated, dim=-1)
    origins = c2w[..., None, None, :3, 3].expand_as(directions)
    return origins, directions


def unproject_depth(depth: Tensor, K: Tensor, c2w: Tensor | None = None) -> Tensor:
    """Lift a z-depth map to a pointmap.

    Args:
        depth: ``[..., H, W]`` z-depth in metres (0 = invalid; such pixels map to the camera centre).
        K: ``[..., 3, 3]`` intrinsics of that image.
        c2w: ``[..., 4, 4]`` camera-to-world poses, or ``None`` for camera-frame points.
    Returns:
        points ``[..., H, W, 3]``, world frame if ``c2w`` is given, else camera frame.
    """
    height, width = depth.shape[-2:]
    points = camera_frame_rays(K, height, width) * depth[..., None]
    if c2w is None:
        return points
    R = c2w[..., None, None, :3, :3]
    return (R @ points[..., None]).squeeze(-1) + c2w[..., None, None, :3, 3]


def unproject_pixels(uv: Tensor, depth: Tensor, K: Tensor, c2w: Tensor) -> Tensor:
    """Lift pixels ``uv [..., N, 2]`` (pixel centres at ``+0.5``) with z-depth ``[..., N]`` to world points.

    ``K [..., 3, 3]``, ``c2w [..., 4, 4]``; returns ``[..., N, 3]``; the inverse of :func:`project_points`.
    """
    uv1 = torch.cat([uv, torch.ones_like(uv[..., :1])], dim=-1)
    cam = (uv1 @ torch.linalg.inv(K).transpose(-1, -2)) * depth[..., None]
    return cam @ c2w[..., :3, :3].transpose(-1, -2) + c2w[..., None, :3, 3]


def project_points(points: Tensor, c2w: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points ``[..., N, 3]`` into cameras ``c2w [..., 4, 4]``, ``K [..., 3, 3]``.

    Returns:
        pixel coordinates ``[..., N, 2]`` (continuous, pixel centres at ``+0.5``) and z-depth ``[..., N]``.
    """
    cam = (points - c2w[..., None, :3, 3]) @ c2w[..., :3, :3]  # R^T (x - t), row vectors
    z = cam[..., 2]
    uv = (cam @ K.transpose(-1, -2))[..., :2] / z[..., None]
    return uv, z
