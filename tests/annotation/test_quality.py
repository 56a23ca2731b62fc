"""Quality control against exact toy4d geometry: camera-induced flow, flow-residual masks, reprojection filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from annotation.estimators.flow import DISFlow
from annotation.quality import (
    QualityThresholds,
    assess,
    camera_flow,
    dynamic_mask_from_flow,
    filter_depth,
    mask_flow_pairs,
    pose_problem,
    reprojection_check,
)
from annotation.readers import make_reader
from annotation.tracks import chain_flow
from d4s.geometry import project_points, unproject_depth


@pytest.fixture(scope="module")
def dynamic_scene():
    """16 frames of a toy4d scene with objects swinging and spinning (``random`` motion: faster than the default
    rising and sinking, as real datasets' movers often are) and a slowly moving camera."""
    reader = make_reader(
        "toy4d", None, num_scenes=6, num_frames=49, size=96, seed=0, dynamic_fraction=1.0, motion="random"
    )
    scene = reader.open_scene("scene_0005")
    indices = list(range(16))
    return scene, scene.frames(indices), scene.depth(indices), scene.dynamic_mask(indices), scene.K, scene.c2w


def test_camera_flow_matches_brute_force_projection(dynamic_scene):
    _scene, _, depth, _, K, c2w = dynamic_scene
    flow = camera_flow(depth[0], K[0], c2w[0], K[3], c2w[3])
    for v, u in [(10, 20), (50, 70), (90, 5)]:
        point = unproject_depth(torch.from_numpy(depth[0]), torch.from_numpy(K[0]), torch.from_numpy(c2w[0]))[v, u]
        uv, _ = project_points(point[None], torch.from_numpy(c2w[3]), torch.from_numpy(K[3]))
        np.testing.assert_allclose(flow[v, u], uv[0].numpy() - [u + 0.5, v + 0.5], atol=1e-9)


def test_flow_residual_finds_the_moving_objects(dynamic_scene):
    _, frames, depth, truth, K, c2w = dynamic_scene
    pairs = mask_flow_pairs(len(frames), gap=4)
    found = dynamic_mask_from_flow(pairs, DISFlow("medium").pairs(frames, pairs), depth, K, c2w)
    moving_pixels = truth.sum()
    assert moving_pixels > 0
    recall = (found & truth).sum() / moving_pixels
    false_alarms = (found & ~truth).sum() / (~truth).sum()
    print(f"flow-residual mask: recall {recall:.2f}, false alarms {false_alarms:.3f}")
    assert recall > 0.6 and false_alarms < 0.05


def test_reprojection_filter_drops_wrong_depth_and_keeps_exact_depth(dynamic_scene):
    _, _, depth, mask, K, c2w = dynamic_scene
    exact, score = filter_depth(depth, K, c2w, mask)
    assert score > 0.97 and ((exact > 0) == (depth > 0)).mean() > 0.97
    corrupted = depth.copy()
    corrupted[8, 20:40, 20:40] *= 1.3  # a wrong patch in one frame
    filtered, worse = filter_depth(corrupted, K, c2w, mask)
    patch = filtered[8, 20:40, 20:40][~mask[8, 20:40, 20:40]]
    assert (patch == 0).mean() > 0.9 and worse < score
    passed, checked = reprojection_check(depth, K, c2w)
    static = checked & ~mask
    assert passed[static].mean() == pytest.approx(score)


def test_pose_sanity_and_verdicts():
    good = np.tile(np.eye(4), (3, 1, 1))
    assert pose_problem(good) is None
    for edit, value, reason in [
        ((0, 0, 0), np.nan, "non-finite"),
        ((1, 0, 0), -1.0, "det != +1"),
        ((2, 0, 1), 0.5, "orthonormal"),
    ]:
        bad = good.copy()
        bad[edit] = value
        assert reason in pose_problem(bad)
    thresholds = QualityThresholds(min_valid_depth=0.5, min_consistency=0.6, max_depth_absrel=0.1)
    depth = np.ones((3, 4, 4))
    assert assess(good, depth, 0.9, 0.01, thresholds).accepted
    depth[:, :3] = 0
    assert "valid depth" in assess(good, depth, 0.9, 0.01, thresholds).reason
    assert "consistency" in assess(good, np.ones((3, 4, 4)), 0.5, 0.01, thresholds).reason
    assert "alignment residual" in assess(good, np.ones((3, 4, 4)), 0.9, 0.2, thresholds).reason
    assert "bad poses" in assess(good * np.nan, None, None, None, thresholds).reason


def test_chain_flow_follows_a_constant_translation_and_drops_inconsistent_steps():
    forward = np.tile(np.array([1.5, -0.5]), (3, 20, 30, 1))
    backward = -forward
    query = np.array([[5.5, 10.5], [28.5, 10.5]])
    uv, valid = chain_flow(query, forward, backward)
    np.testing.assert_allclose(uv[0, 3], [10.0, 9.0])
    assert valid[0].all() and not valid[1, 1]  # the second point leaves the image
    backward[1] = 0.0  # inconsistent second step
    _, valid = chain_flow(query, forward, backward)
    assert valid[0, :2].all() and not valid[0, 2:].any()


@pytest.mark.parametrize(("num_frames", "gap"), [(2, 4), (5, 4), (6, 4), (9, 4), (12, 4), (7, 1)])
def test_flow_pairs_stay_inside_the_clip_and_reach_as_far_as_the_gap_allows(num_frames, gap):
    pairs = mask_flow_pairs(num_frames, gap)
    assert [t for t, _ in pairs] == list(range(num_frames))
    for t, other in pairs:
        assert 0 <= other < num_frames and other != t
        reachable = max(t, num_frames - 1 - t)  # the farthest frame from t inside the clip
        assert abs(other - t) == min(gap, reachable)  # brute force: as far as possible, up to the gap
