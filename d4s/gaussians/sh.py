"""Real spherical harmonics up to degree 3 for view-dependent Gaussian colour (3DGS / gsplat convention).

Colour of a Gaussian seen along unit direction ``d`` (from the camera centre to the Gaussian's mean) is
``max(sum_k c_k Y_k(d) + 0.5, 0)`` with ``c [K, 3]`` its coefficients and ``K = (degree + 1)^2``.
The constant basis is ``Y_0 = C0 = 0.28209...``, so a DC coefficient ``(rgb - 0.5) / C0`` shows colour ``rgb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)
MAX_SH_DEGREE = 3


def num_sh_bases(degree: int) -> int:
    """Number of coefficients ``(degree + 1)^2`` of a degree-``degree`` expansion."""
    return (degree + 1) ** 2


def sh_degree_from_bases(num_bases: int) -> int:
    """Inverse of ``num_sh_bases``; raises ``ValueError`` unless ``num_bases`` is 1, 4, 9 or 16."""
    for degree in range(MAX_SH_DEGREE + 1):
        if num_sh_bases(degree) == num_bases:
            return degree
    raise ValueError(f"sh: {num_bases} coefficients per channel is not (degree + 1)^2 for a degree in 0..3")


def sh_basis(directions: Tensor, degree: int) -> Tensor:
    """Real SH basis ``[..., (degree + 1)^2]`` evaluated at directions ``[..., 3]`` (normalised here)."""
    x, y, z = F.normalize(directions, dim=-1).unbind(-1)
    bases = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        bases += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        bases += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        bases += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(bases, dim=-1)


def sh_to_color(sh: Tensor, directions: Tensor) -> Tensor:
    """View-dependent colours ``[..., 3]`` of coefficients ``sh [..., K, 3]`` seen along ``directions [..., 3]``.

    Applies the +0.5 offset and the clamp at 0 used by 3DGS and gsplat (no upper clamp).
    """
    degree = sh_degree_from_bases(sh.shape[-2])
    basis = sh_basis(directions, degree)
    return torch.clamp_min((basis[..., None] * sh).sum(dim=-2) + 0.5, 0.0)


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """DC coefficients ``[..., 3]`` that display ``rgb [..., 3]`` in ``[0, 1]`` from every direction."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: Tensor) -> Tensor:
    """View-independent colour ``[..., 3]`` of DC coefficients ``[..., 3]`` (inverse of ``rgb_to_sh_dc``)."""
    return dc * SH_C0 + 0.5
