"""Algorithm 1 (metric alignment) against known affine transforms, corrupted anchors and ground-truth points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from annotation.align import (
    align_to_oracle,
    collect_anchors,
    fit_scale_shift,
    grid_labels,
    grouped_median,
    mask_labels,
    median_scale,
    sparse_depth_from_tracks,
    trajectory_scale,
)
from d4s.geometry import intrinsics_from_fov, look_at
from d4s.geometry.cameras import unproject_depth


def scene_depth(T: int = 3, H: int = 48, W: int = 64, seed: int = 0) -> np.ndarray:
    """A slanted floor-like plane plus a smooth bump per frame: metric z-depth [T, H, W] in 1.5..8 m."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W] / np.array([H, W])[:, None, None]
    frames = []
    for _ in range(T):
        a, b = rng.uniform(0.5, 1.5, 2)
        bump = np.exp(-((u - rng.uniform(0.3, 0.7)) ** 2 + (v - 0.5) ** 2) / 0.02)
        frames.append(2.0 + 4.0 * a * (1 - v) + b * u - 1.0 * bump)
    return np.stack(frames).astype(np.float64)


def textured_frames(T: int, H: int, W: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8)


def test_grouped_median_matches_numpy():
    rng = np.random.default_rng(1)
    values, groups = rng.normal(size=1000), rng.integers(0, 13, 1000)
    medians, counts = grouped_median(values, groups, 15)
    for g in range(15):
        members = values[groups == g]
        assert counts[g] == len(members)
        if len(members):
            assert medians[g] == pytest.approx(np.median(members), abs=1e-12)
        else:
            assert np.isnan(medians[g])


@pytest.mark.parametrize("masks", ["grid", "superpixels"])
def test_exact_affine_disparity_is_recovered(masks):
    depth = scene_depth()
    scale_true, shift_true = 0.37, 0.052  # metric disparity = scale * relative + shift
    relative = (1.0 / depth - shift_true) / scale_true
    labels = mask_labels(textured_frames(*depth.shape), kind=masks, num_segments=64, cell=8)
    aligned, (result,) = align_to_oracle(relative, depth, labels, space="disparity")
    assert result.scale == pytest.approx(scale_true, rel=1e-6)
    assert result.shift == pytest.approx(shift_true, rel=1e-6)
    np.testing.assert_allclose(aligned, depth, rtol=1e-5)
    assert result.depth_absrel < 1e-5


def test_pointmaps_from_aligned_depth_match_ground_truth():
    depth = scene_depth(T=2)
    T, H, W = depth.shape
    rng = np.random.default_rng(3)
    relative = 2.5 / depth + 0.1 + rng.normal(0, 1e-4, depth.shape)
    aligned, _ = align_to_oracle(relative, depth, mask_labels(textured_frames(T, H, W), "grid", cell=8))
    K = intrinsics_from_fov(W, H, 60.0).expand(T, 3, 3)
    c2w = look_at(torch.tensor([[0.0, 0, 0], [0.3, 0.1, 0]]), torch.tensor([[0.0, 0, 5], [0.0, 0, 5]]))
    truth = unproject_depth(torch.from_numpy(depth).float(), K, c2w)
    ours = unproject_depth(torch.from_numpy(aligned).float(), K, c2w)
    error = (ours - truth).norm(dim=-1)
    assert float(error.median()) < 5e-3  # metres, from 1e-4 disparity noise at 2-8 m
    assert float(error.max()) < 0.05


@pytest.mark.parametrize("robust", ["ransac", "irls"])
def test_robust_variants_tolerate_30_percent_corrupted_masks(robust):
    depth = scene_depth(T=4)
    T, H, W = depth.shape
    rng = np.random.default_rng(7)
    scale_true, shift_true = 0.8, -0.02
    relative = (1.0 / depth - shift_true) / scale_true + rng.normal(0, 1e-4, depth.shape)
    labels = mask_labels(textured_frames(T, H, W), "grid", cell=8)
    oracle = depth.copy()
    frame_mask = labels + (labels.max() + 1) * np.arange(T)[:, None, None]
    masks = np.unique(frame_mask)
    corrupted = rng.choice(masks, int(0.3 * len(masks)), replace=False)
    factors = dict(zip(corrupted, rng.choice([0.3, 0.5, 2.0, 3.0], len(corrupted))))
    for mask, factor in factors.items():
        oracle[frame_mask == mask] *= factor  # a wrong metric value for the whole mask

    _, (plain,) = align_to_oracle(relative, oracle, labels, robust="none")
    aligned, (result,) = align_to_oracle(relative, oracle, labels, robust=robust)
    assert abs(plain.scale - scale_true) > 0.05  # least squares alone is pulled away by the corruption
    assert result.scale == pytest.approx(scale_true, rel=2e-3)
    assert result.shift == pytest.approx(shift_true, abs=2e-3)
    assert result.num_inliers == pytest.approx(0.7 * result.num_anchors, rel=0.05)
    clean = ~np.isin(frame_mask, corrupted)
    assert np.median(np.abs(aligned[clean] - depth[clean]) / depth[clean]) < 1e-3


def test_depth_space_and_per_frame_alignment():
    depth = scene_depth(T=3)
    scales = np.array([0.5, 2.0, 4.0])
    relative = depth / scales[:, None, None]  # MegaSaM-like: up to a per-frame scale
    labels = mask_labels(textured_frames(*depth.shape), "grid", cell=8)
    aligned, results = align_to_oracle(relative, depth, labels, space="depth", per_frame=True)
    assert [r.scale for r in results] == pytest.approx(list(scales), rel=1e-9)
    np.testing.assert_allclose(aligned, depth, rtol=1e-6)


def test_anchor_validity_rules():
    relative = np.arange(16, dtype=float).reshape(1, 4, 4) + 1
    oracle = np.zeros((1, 4, 4))
    oracle[0, :2, :2] = 5.0  # mask 0 fully covered
    oracle[0, 0, 2] = 7.0  # mask 1 a quarter covered
    labels = grid_labels(4, 4, 2)[None]
    x, y = collect_anchors(relative, oracle, labels, min_oracle_fraction=0.5)
    assert list(y) == [5.0] and list(x) == [np.median([1, 2, 5, 6])]
    x, y = collect_anchors(relative, oracle, labels, min_oracle_fraction=0.0)
    assert sorted(y) == [5.0, 7.0]


def test_too_few_anchors_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 anchors"):
        fit_scale_shift(np.array([1.0]), np.array([2.0]))
    with pytest.raises(ValueError, match="do not vary"):
        fit_scale_shift(np.ones(5), np.arange(5.0))


def test_sparse_depth_from_tracks_projects_and_keeps_nearest():
    K = np.array([[50.0, 0, 32], [0, 50, 24], [0, 0, 1]])[None].repeat(2, 0)
    c2w = np.eye(4)[None].repeat(2, 0)
    c2w[1, 0, 3] = 1.0
    xyz = np.array([[[0.0, 0, 2], [0.0, 0, 2]], [[0.0, 0, 4], [0.0, 0, 4]], [[0, 0, -1], [0, 0, -1]]])
    visible = np.array([[True, True], [True, False], [True, True]])
    depth = sparse_depth_from_tracks(xyz, visible, K, c2w, 48, 64)
    assert depth[0, 24, 32] == 2.0  # nearest of two points on one pixel; the point behind is dropped
    assert np.count_nonzero(depth[0]) == 1
    col = int(np.floor(32 + 50 * (-1.0) / 2))  # camera 1 is 1 m to the right
    assert depth[1, 24, col] == 2.0 and np.count_nonzero(depth[1]) == 1


def test_median_scale_and_trajectory_scale():
    depth = scene_depth(T=1)
    assert median_scale(depth / 3.0, depth) == pytest.approx(3.0)
    c2w = (
        look_at(
            torch.rand(5, 3, generator=torch.Generator().manual_seed(0)) * 2, torch.tensor([0.0, 0, 5]).expand(5, 3)
        )
        .double()
        .numpy()
    )
    world = np.eye(4)
    world[:3, :3] = look_at(torch.tensor([[1.0, 2, 3]]), torch.tensor([[0.0, 0, 0]]))[0, :3, :3].double().numpy()
    scaled = c2w.copy()
    scaled[:, :3, 3] *= 0.25
    assert trajectory_scale(scaled, world @ c2w) == pytest.approx(4.0, rel=1e-6)


def test_invalid_relative_values_are_ignored_and_stay_invalid():
    depth = scene_depth(T=2)
    relative = 3.0 / depth + 0.2
    relative[:, :8] = 0.0  # invalid rows (the DepthEstimate contract: 0 = invalid)
    relative[0, 10, 10] = np.nan
    labels = mask_labels(textured_frames(*depth.shape), "grid", cell=8)
    aligned, (result,) = align_to_oracle(relative, depth, labels)
    assert result.scale == pytest.approx(1 / 3.0, rel=1e-6) and result.shift == pytest.approx(-0.2 / 3.0, rel=1e-6)
    assert (aligned[:, :8] == 0).all() and aligned[0, 10, 10] == 0
    np.testing.assert_allclose(aligned[:, 8:][relative[:, 8:] > 0], depth[:, 8:][relative[:, 8:] > 0], rtol=1e-5)
