"""Deformation of Gaussian parameters over time (paper Sec. 3.3).

For Gaussian ``p`` at time ``t`` the deformation head predicts ``(dmu, dq, ds)`` (K_d = 10 numbers) and

    mu_t = mu_0 + dmu,    q_t = normalize(q_0 ⊗ normalize(dq)),    log s_t = log s_0 + ds.

The paper writes ``s_t = s_0 + ds``; we apply the offset to the stored log-scale (as 4DGaussians do) so that
scales stay positive for any prediction. The identity deformation is ``(0, (1, 0, 0, 0), 0)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from d4s.geometry.quaternion import quat_identity, quat_multiply, quat_normalize


def apply_deformation(
    means: Tensor, quats: Tensor, log_scales: Tensor, dmu: Tensor, dq: Tensor, ds: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Deformed ``(means [..., 3], unit quats [..., 4] wxyz, log_scales [..., 3])`` (Sec. 3.3, Eq. 7)."""
    deformed_quats = quat_normalize(quat_multiply(quats, quat_normalize(dq)))
    return means + dmu, deformed_quats, log_scales + ds


def identity_deformation(
    num_frames: int, num_gaussians: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Zero motion: ``dmu [T, N, 3] = 0``, ``dq [T, N, 4] = (1, 0, 0, 0)``, ``ds [T, N, 3] = 0``."""
    zeros = torch.zeros(num_frames, num_gaussians, 3, dtype=dtype, device=device)
    return zeros, quat_identity(num_frames, num_gaussians, dtype=dtype, device=device), zeros.clone()
