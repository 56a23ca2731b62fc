"""Our EWA projection against gsplat's own PyTorch reference (which runs on CPU)."""

import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

from d4s.render.projection import project_gaussians, quat_scale_to_covariance
from tests.helpers import orbit_cameras, random_field


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_matches_gsplat_reference(seed):
    width, height = 96, 64
    field = random_field(500, seed=seed, depth_range=(0.005, 8.0), scale_range=(0.005, 0.8))
    c2w, K = orbit_cameras(3, width, height)
    covars = quat_scale_to_covariance(field.quats, field.scales)

    ref_covars, _ = _quat_scale_to_covar_preci(field.quats, field.scales, compute_preci=False)
    torch.testing.assert_close(covars, ref_covars, atol=1e-6, rtol=1e-5)

    ours = project_gaussians(field.means, covars, c2w, K, width, height, eps2d=0.3, near_plane=0.01)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        field.means, ref_covars, torch.linalg.inv(c2w), K, width, height, eps2d=0.3, near_plane=0.01
    )
    torch.testing.assert_close(ours.radii, radii, atol=0, rtol=0)
    visible = (radii > 0).all(-1)
    assert visible.sum() > 100 and (~visible).sum() > 10  # both culled and kept Gaussians are exercised
    torch.testing.assert_close(ours.depths, depths, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.means2d[visible], means2d[visible], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.conics[visible], conics[visible], atol=1e-4, rtol=1e-4)


def test_opacity_aware_radii_only_drop_pixels_below_the_alpha_threshold():
    width, height = 64, 64
    field = random_field(300, seed=3, opacity_range=(0.001, 1.0))
    c2w, K = orbit_cameras(1, width, height)
    covars = quat_scale_to_covariance(field.quats, field.scales)
    plain = project_gaussians(field.means, covars, c2w, K, width, height)
    tight = project_gaussians(field.means, covars, c2w, K, width, height, opacities=field.opacities)
    assert (tight.radii <= plain.radii).all()
    culled = (tight.radii == 0).all(-1) & (plain.radii > 0).all(-1)
    assert (field.opacities[culled[0]] < 1 / 255).all()
    # at the edge of the tight box (along x) the alpha is below 1/255
    kept = (tight.radii > 0).all(-1)[0]
    rx = tight.radii[0, kept, 0].double()
    a = tight.conics[0, kept, 0].double()
    c = tight.conics[0, kept, 2].double()
    b = tight.conics[0, kept, 1].double()
    # the smallest Mahalanobis half-distance over the line x = mean + rx is rx^2 / (2 cov_xx)
    cov_xx = c / (a * c - b * b)
    sigma_min = rx * rx / (2 * cov_xx)
    alpha_edge = field.opacities[kept].double() * torch.exp(-sigma_min)
    assert (alpha_edge < 1 / 255 + 1e-9).all()
