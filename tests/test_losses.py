"""The training losses (Sec. 3.4) against hand computations, scipy and brute-force loops."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import pearsonr

from d4s.geometry import intrinsics_from_fov, look_at, project_points
from d4s.losses import (
    depth_total_variation,
    lpips_distance,
    motion_loss,
    mse,
    pearson_depth_loss,
    random_visible_frame,
    track_motion,
    weighted_mean,
)
from d4s.models.perceptual import LPIPS


def test_pearson_of_affinely_related_depths_is_zero_whatever_the_invalid_pixels_hold():
    generator = torch.Generator().manual_seed(0)
    reference = 1.0 + 5.0 * torch.rand(3, 20, 24, generator=generator)
    valid = torch.rand(3, 20, 24, generator=generator) > 0.3
    rendered = 0.37 * reference + 2.5  # another scale and shift: Eq. 4 does not care
    rendered = torch.where(valid, rendered, torch.randn(3, 20, 24, generator=generator) * 100)
    loss, supervised = pearson_depth_loss(rendered, reference, valid)
    assert supervised.all()
    torch.testing.assert_close(loss, torch.zeros(3), atol=1e-5, rtol=0)
    anti, _ = pearson_depth_loss(-rendered, reference, valid)  # reversed depth order: correlation -1
    torch.testing.assert_close(anti, torch.full((3,), 2.0), atol=1e-5, rtol=0)


def test_pearson_matches_scipy_on_the_valid_pixels():
    generator = torch.Generator().manual_seed(1)
    rendered, reference = torch.rand(2, 2, 16, 16, generator=generator), torch.rand(2, 2, 16, 16, generator=generator)
    reference = reference + 0.5 * rendered  # some correlation
    valid = torch.rand(2, 2, 16, 16, generator=generator) > 0.5
    loss, _ = pearson_depth_loss(rendered, reference, valid)
    for i in range(2):
        for j in range(2):
            m = valid[i, j]
            expected = 1.0 - pearsonr(rendered[i, j][m].double().numpy(), reference[i, j][m].double().numpy())[0]
            assert loss[i, j].item() == pytest.approx(expected, abs=1e-5)


def test_pearson_skips_views_with_too_few_pixels_or_a_flat_reference():
    rendered = torch.rand(3, 8, 8)
    reference = torch.rand(3, 8, 8) + 1.0
    reference[1] = 4.0  # fronto-parallel plane: correlation undefined
    valid = torch.ones(3, 8, 8, dtype=torch.bool)
    valid[2] = False
    valid[2, 0, :5] = True  # 5 pixels < min_pixels
    loss, supervised = pearson_depth_loss(rendered, reference, valid, min_pixels=16)
    assert supervised.tolist() == [True, False, False]
    assert loss[1] == 0 and loss[2] == 0 and torch.isfinite(loss).all()


def test_total_variation_of_a_plane_is_its_slopes():
    v, u = torch.meshgrid(torch.arange(12.0), torch.arange(15.0), indexing="ij")
    plane = 0.3 * u - 0.7 * v + 4.0
    assert depth_total_variation(plane).item() == pytest.approx(0.3 + 0.7, abs=1e-5)
    assert depth_total_variation(torch.full((2, 5, 5), 3.0)).tolist() == [0.0, 0.0]


def test_mse_and_lpips_per_view():
    generator = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, 3, 3, 32, 32, generator=generator), torch.rand(2, 3, 3, 32, 32, generator=generator)
    torch.testing.assert_close(mse(a, b)[1, 2], torch.nn.functional.mse_loss(a[1, 2], b[1, 2]))
    lpips = LPIPS("alex", random_backbone=True)
    per_view = lpips_distance(lpips, a, b)
    assert per_view.shape == (2, 3)
    torch.testing.assert_close(per_view[1], lpips(a[1], b[1]))


def test_motion_loss_ignores_unsupervised_pairs_and_matches_a_loop():
    generator = torch.Generator().manual_seed(3)
    predicted, true = torch.randn(2, 3, 5, 3, generator=generator), torch.randn(2, 3, 5, 3, generator=generator)
    supervised = torch.rand(2, 3, 5, generator=generator) > 0.4
    supervised[1] = False  # a clip with no visible track
    error, magnitude, count = motion_loss(predicted, true, supervised)
    pairs = [(v, n) for v in range(3) for n in range(5) if supervised[0, v, n]]
    assert count.tolist() == [len(pairs), 0]
    expected_error = sum((predicted[0, v, n] - true[0, v, n]).norm() for v, n in pairs) / len(pairs)
    expected_magnitude = sum(predicted[0, v, n].abs().sum() for v, n in pairs) / len(pairs)
    assert error[0].item() == pytest.approx(expected_error.item(), rel=1e-5)
    assert magnitude[0].item() == pytest.approx(expected_magnitude.item(), rel=1e-5)
    assert error[1] == 0 and magnitude[1] == 0
    changed = predicted.clone()
    changed[~supervised] = 1e6  # what invisible points predict does not matter
    torch.testing.assert_close(motion_loss(changed, true, supervised)[0], error)


def test_random_visible_frame_only_picks_visible_frames():
    visible = torch.zeros(4, 50, 7, dtype=torch.bool)
    visible[:, :, 2] = visible[:, :, 5] = True
    visible[0, 0] = False
    frame, seen = random_visible_frame(visible, torch.Generator().manual_seed(0))
    assert not seen[0, 0] and seen.sum() == 4 * 50 - 1
    assert set(frame[seen].tolist()) == {2, 5}


def test_track_motion_picks_the_gaussian_at_the_tracks_source_pixel():
    """Brute force: project each track into its source camera, find its Gaussian by hand, read its offsets."""
    B, T, H, W, s, V = 1, 3, 16, 20, 2, 2
    h, w = H // s, W // s
    eye = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0], [0.4, 0.1, 0.0]])
    c2w = look_at(eye, eye + torch.tensor([0.0, 0.0, 1.0]))[None]
    K = intrinsics_from_fov(W, H, 60.0).expand(1, T, 3, 3).clone()
    generator = torch.Generator().manual_seed(4)
    N = 12
    start = torch.cat([torch.rand(N, 2, generator=generator) - 0.5, 3.0 + torch.rand(N, 1, generator=generator)], -1)
    velocity = 0.1 * torch.randn(N, 3, generator=generator)
    track_xyz = (start[:, None] + velocity[:, None] * torch.arange(T)[None, :, None])[None]  # [1, N, T, 3]
    track_visible = torch.ones(1, N, T, dtype=torch.bool)
    track_visible[0, 0, 2] = False  # invisible at target frame 2
    track_valid = torch.ones(1, N, dtype=torch.bool)
    track_valid[0, 1] = False  # padding
    dmu = torch.randn(B, V, T * h * w, 3, generator=generator)
    frames = torch.tensor([[0, 2]])
    predicted, true, supervised = track_motion(
        dmu, (h, w), track_xyz, track_visible, track_valid, c2w, K, (H, W), frames, torch.Generator().manual_seed(5)
    )
    source_frame, _ = random_visible_frame(track_visible, torch.Generator().manual_seed(5))
    for n in range(N):
        f = int(source_frame[0, n])
        uv, z = project_points(track_xyz[0, n, f][None], c2w[0, f], K[0, f])
        u, v = uv[0].tolist()
        inside = z[0] > 0 and 0 <= u < W and 0 <= v < H
        index = f * h * w + int(v // s) * w + int(u // s)
        for k, target in enumerate(frames[0].tolist()):
            expected = bool(track_valid[0, n]) and inside and bool(track_visible[0, n, target])
            assert bool(supervised[0, k, n]) == expected
            if expected:
                torch.testing.assert_close(predicted[0, k, n], dmu[0, k, index])
                torch.testing.assert_close(true[0, k, n], track_xyz[0, n, target] - track_xyz[0, n, f])
    assert not supervised[0, :, 1].any() and not supervised[0, 1, 0]


def test_weighted_mean_drops_zero_weight_clips_and_stays_finite_without_any():
    values = torch.tensor([1.0, 5.0, 3.0])
    assert weighted_mean(values, torch.tensor([1.0, 0.0, 1.0])).item() == 2.0
    assert weighted_mean(values, torch.zeros(3)).item() == 0.0


def test_motion_loss_squared_option_matches_a_loop():
    generator = torch.Generator().manual_seed(6)
    predicted, true = torch.randn(1, 2, 4, 3, generator=generator), torch.randn(1, 2, 4, 3, generator=generator)
    supervised = torch.rand(1, 2, 4, generator=generator) > 0.3
    error, magnitude, _ = motion_loss(predicted, true, supervised, squared_scale=0.1)
    pairs = [(v, n) for v in range(2) for n in range(4) if supervised[0, v, n]]
    expected = sum((predicted[0, v, n] - true[0, v, n]).pow(2).sum() / 0.1 for v, n in pairs) / len(pairs)
    assert error[0].item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(magnitude, motion_loss(predicted, true, supervised)[1])


def test_motion_loss_balance_option_weighs_moving_and_static_pairs_equally():
    true = torch.zeros(2, 1, 5, 3)
    true[0, 0, 0] = torch.tensor([0.5, 0.0, 0.0])  # clip 0: one moving pair among four static ones
    predicted = torch.zeros(2, 1, 5, 3)
    predicted[0, 0, 1:] = 0.1  # static pairs predicted to move a little
    predicted[1, 0] = 0.2  # clip 1: only static pairs
    supervised = torch.ones(2, 1, 5, dtype=torch.bool)
    error, _, count = motion_loss(predicted, true, supervised, balance_threshold=0.05)
    static_error = math.sqrt(3 * 0.1**2)
    assert error[0].item() == pytest.approx((0.5 + static_error) / 2, rel=1e-5)  # moving mean and static mean
    plain = motion_loss(predicted, true, supervised)[0]
    assert plain[0].item() == pytest.approx((0.5 + 4 * static_error) / 5, rel=1e-5)
    assert error[1].item() == pytest.approx(plain[1].item(), rel=1e-6)  # one class only: the plain mean
    squared = motion_loss(predicted, true, supervised, squared_scale=0.1, balance_threshold=0.05)[0]
    assert squared[0].item() == pytest.approx((0.25 / 0.1 + 0.03 / 0.1) / 2, rel=1e-5)
    assert count.tolist() == [5, 5]
