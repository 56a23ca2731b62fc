"""Spherical harmonics against gsplat's PyTorch reference."""

import pytest
import torch
from gsplat.cuda._torch_impl import _spherical_harmonics

from d4s.gaussians.sh import rgb_to_sh_dc, sh_basis, sh_degree_from_bases, sh_dc_to_rgb, sh_to_color


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat(degree):
    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(200, 3, generator=g, dtype=torch.float64) * 3
    coeffs = torch.randn(200, (degree + 1) ** 2, 3, generator=g, dtype=torch.float64)
    reference = torch.clamp_min(_spherical_harmonics(degree, dirs, coeffs) + 0.5, 0.0)
    torch.testing.assert_close(sh_to_color(coeffs, dirs), reference, atol=1e-12, rtol=1e-12)


def test_dc_round_trip_and_view_independence():
    rgb = torch.rand(50, 3, dtype=torch.float64)
    dc = rgb_to_sh_dc(rgb)
    torch.testing.assert_close(sh_dc_to_rgb(dc), rgb)
    dirs = torch.randn(50, 3, dtype=torch.float64)
    torch.testing.assert_close(sh_to_color(dc[:, None, :], dirs), rgb)


def test_basis_is_orthonormal_over_the_sphere():
    """Monte-Carlo check: E[Y_i Y_j] over uniform directions is delta_ij / (4 pi)."""
    dirs = torch.randn(400_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    basis = sh_basis(dirs, 3)
    gram = basis.T @ basis / len(dirs) * 4 * torch.pi
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=2e-2, rtol=0)


def test_bad_number_of_coefficients():
    with pytest.raises(ValueError, match="degree"):
        sh_degree_from_bases(5)
