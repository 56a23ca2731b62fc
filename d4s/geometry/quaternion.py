"""Quaternion utilities. Convention: ``wxyz`` order, Hamilton product, right-handed rotations.

A unit quaternion ``q = (w, x, y, z)`` rotates a vector ``v`` as ``q ⊗ (0, v) ⊗ q*``, which equals
``quat_to_rotmat(q) @ v``. Functions broadcast over leading dimensions and are differentiable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from d4s.utils.checks import check_shape


def quat_identity(*shape: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """Identity rotations ``(1, 0, 0, 0)`` of shape ``[*shape, 4]``."""
    q = torch.zeros(*shape, 4, dtype=dtype, device=device)
    q[..., 0] = 1.0
    return q


def quat_normalize(q: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit-norm quaternions ``[..., 4]``."""
    return F.normalize(q, p=2.0, dim=-1, eps=eps)


def quat_conjugate(q: Tensor) -> Tensor:
    """Conjugate ``(w, -x, -y, -z)`` of ``q [..., 4]``: the inverse rotation for unit quaternions."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a ⊗ b`` of ``[..., 4]`` wxyz quaternions (applies ``b`` first, then ``a``)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def quat_to_rotmat(q: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` of quaternions ``q [..., 4]`` (normalised first)."""
    check_shape(q, "q", (4,), batched=True)
    w, x, y, z = quat_normalize(q).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def rotmat_to_quat(R: Tensor) -> Tensor:
    """Unit quaternions ``[..., 4]`` with ``w >= 0`` of rotation matrices ``R [..., 3, 3]``.

    Uses the best-conditioned of the four standard formulas per matrix (largest of |w|, |x|, |y|, |z|),
    so it is accurate for every rotation including 180 degree turns.
    """
    check_shape(R, "R", (3, 3), batched=True)
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # twice |w|, |x|, |y|, |z|
    two_abs = torch.sqrt(
        torch.stack(
            [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
        ).clamp_min(0.0)
    )
    candidates = (
        torch.stack(
            [
                torch.stack([two_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
                torch.stack([m21 - m12, two_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
                torch.stack([m02 - m20, m10 + m01, two_abs[..., 2] ** 2, m12 + m21], dim=-1),
                torch.stack([m10 - m01, m20 + m02, m21 + m12, two_abs[..., 3] ** 2], dim=-1),
            ],
            dim=-2,
        )
        / (2.0 * two_abs.clamp_min(1e-12))[..., None]
    )
    best = two_abs.argmax(dim=-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    q = torch.where(q[..., :1] < 0, -q, q)
    return quat_normalize(q)


def axis_angle_to_quat(axis_angle: Tensor) -> Tensor:
    """Quaternions ``[..., 4]`` of rotation vectors ``[..., 3]`` (axis times angle in radians)."""
    check_shape(axis_angle, "axis_angle", (3,), batched=True)
    angle = axis_angle.norm(dim=-1, keepdim=True)
    half = 0.5 * angle
    # sin(half)/angle -> 1/2 as angle -> 0
    scale = torch.where(angle > 1e-8, torch.sin(half) / angle.clamp_min(1e-8), 0.5 - angle * angle / 48.0)
    return torch.cat([torch.cos(half), axis_angle * scale], dim=-1)


def quat_slerp(q0: Tensor, q1: Tensor, t: Tensor | float) -> Tensor:
    """Spherical linear interpolation between unit quaternions along the shorter arc.

    Args:
        q0, q1: ``[..., 4]`` endpoints (normalised first).
        t: interpolation weight in ``[0, 1]``, a float or a tensor broadcastable to ``[...]``.
    Returns:
        ``[..., 4]`` unit quaternions; ``t = 0`` gives ``q0`` and ``t = 1`` gives ``±q1``.
    """
    q0, q1 = quat_normalize(q0), quat_normalize(q1)
    t = torch.as_tensor(t, dtype=q0.dtype, device=q0.device)[..., None]
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0)
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    near = sin_theta < 1e-6
    safe_sin = torch.where(near, torch.ones_like(sin_theta), sin_theta)
    w0 = torch.where(near, 1 - t, torch.sin((1 - t) * theta) / safe_sin)
    w1 = torch.where(near, t, torch.sin(t * theta) / safe_sin)
    return quat_normalize(w0 * q0 + w1 * q1)
