"""The renderer showcase behind `make demo`, at a tiny size."""

import json

import numpy as np
import torch

from d4s import showcase
from d4s.gaussians import load_ply, load_scene
from d4s.render import render
from d4s.utils.video import read_video


def test_showcase_writes_every_output(tmp_path):
    args = ["--out", str(tmp_path), "--frames", "3", "--size", "24", "--trajectory", "orbit", "--device", "cpu"]
    summary = showcase.main(args)
    assert summary["frames"] == 3
    for name in ("rgb.mp4", "depth.mp4", "depth.npy", "scene.npz", "scene_t0000.ply", "cameras.json"):
        assert (tmp_path / name).is_file(), name
    video = read_video(tmp_path / "rgb.mp4")
    assert video.shape == (3, 24, 24, 3)
    scene = load_scene(tmp_path / "scene.npz")
    cameras = json.loads((tmp_path / "cameras.json").read_text())
    c2w = torch.tensor(cameras["frames"][1]["c2w"])[None]
    K = torch.tensor(cameras["frames"][1]["K"])[None]
    # re-rendering the saved scene at time 1 from camera 1 reproduces the saved depth
    depth = render(scene.at(1), c2w, K, 24, 24, backend="torch").depth
    np.testing.assert_allclose(depth[0].numpy(), np.load(tmp_path / "depth.npy")[1], atol=1e-5)
    assert load_ply(tmp_path / "scene_t0000.ply").num_gaussians == scene.num_gaussians
