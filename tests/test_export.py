"""Rendering saved scenes along cameras and time schedules, and the focus depth of a scene."""

import numpy as np
import pytest
import torch

from d4s.export import CAMERAS_PER_CALL, focus_depth, follow_times, render_sequence, save_render
from d4s.gaussians import DeformableGaussianField, GaussianField
from d4s.geometry.trajectories import load_camera_path
from d4s.render import render
from d4s.utils.video import read_video
from tests.helpers import orbit_cameras, random_field


def moving_scene(frames: int = 4) -> DeformableGaussianField:
    scene = DeformableGaussianField.static(random_field(300, seed=2), frames)
    scene.dmu[..., 0] = torch.linspace(0.0, 0.6, frames)[:, None]  # everything slides along x over time
    return scene


def test_each_frame_shows_its_time_from_its_camera():
    scene = moving_scene()
    c2w, K = orbit_cameras(11, 40, 30)
    times = [0.0, 0.0, 0.0, 1.0, 1.5, 3.0, 3.0, 3.0, 3.0, 3.0, 2.0]  # runs of one time are rendered together
    result = render_sequence(scene, c2w, K, times, (30, 40), backend="torch")
    assert result.rgb.shape == (11, 30, 40, 3) and result.depth.shape == (11, 30, 40)
    for f, t in enumerate(times):
        expected = render(scene.at_time(t), c2w[f : f + 1], K[f : f + 1], 40, 30, "torch")
        torch.testing.assert_close(result.rgb[f], expected.rgb[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(result.depth[f], expected.depth[0], atol=1e-5, rtol=0)
    assert result.times == times and result.size == (30, 40)
    assert CAMERAS_PER_CALL > 1


def test_save_render_writes_videos_depth_and_cameras(tmp_path):
    c2w, K = orbit_cameras(3, 32, 24)
    result = render_sequence(moving_scene(), c2w, K, [0.0, 1.0, 2.0], (24, 32), backend="torch")
    paths = save_render(result, tmp_path, fps=5)
    assert [p.name for p in paths] == ["rgb.mp4", "depth.mp4", "depth.npy", "cameras.json"]
    assert read_video(tmp_path / "rgb.mp4").shape == (3, 24, 32, 3)
    np.testing.assert_array_equal(np.load(tmp_path / "depth.npy"), result.depth.numpy())
    cameras = load_camera_path(tmp_path / "cameras.json")
    assert torch.equal(cameras.c2w.float(), c2w) and cameras.image_size == (24, 32)


def test_follow_times_play_the_scene_once():
    assert follow_times(5, 5) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert follow_times(3, 5) == [0.0, 2.0, 4.0]
    assert follow_times(9, 5) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0])


def test_focus_depth_is_the_opacity_weighted_median_of_the_depths_in_front():
    g = torch.Generator().manual_seed(0)
    n = 501
    means = torch.randn(n, 3, generator=g) * torch.tensor([1.0, 1.0, 3.0]) + torch.tensor([0.0, 0.0, 2.0])
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    field = GaussianField.from_activated(
        means, torch.randn(n, 4), torch.full((n, 3), 0.01), opacities, rgb=torch.rand(n, 3)
    )
    z, w = means[:, 2].double().numpy(), field.opacities.double().numpy()
    front = z > 0
    z, w = z[front], w[front]
    # brute force: the smallest depth with at least half of the opacity at or in front of it
    candidates = [d for d in np.sort(z) if w[z <= d].sum() >= w.sum() / 2]
    assert focus_depth(field) == pytest.approx(candidates[0], rel=1e-6)
    behind = GaussianField.from_activated(
        -means.abs(), torch.randn(n, 4), torch.full((n, 3), 0.01), opacities, rgb=torch.rand(n, 3)
    )
    with pytest.raises(ValueError, match="in front"):
        focus_depth(behind)


def test_focus_depth_from_another_camera_is_the_depth_in_its_frame():
    field = random_field(200, seed=9)
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.3, -0.2, -1.5])  # a camera 1.5 m further back: every depth grows by 1.5
    assert focus_depth(field, c2w) == pytest.approx(focus_depth(field) + 1.5, abs=1e-4)
