"""The real-video path end to end (paper Appendix B) on a toy4d scene dressed up as RealEstate10K.

The scene's exact depth and cameras are the truth. The RealEstate10K cameras get an arbitrary scale, Video Depth
Anything's saved output is an affine transform of the true disparity, MegaSaM's saved output has depth and
translations at another unknown scale, and UniDepth's saved output is the metric reference. The pipeline must
recover metric depth (Algorithm 1) and metric cameras (the dataset's poses rescaled).
"""

from __future__ import annotations

import glob

import numpy as np
import webdataset as wds
from PIL import Image

from annotation.__main__ import main
from annotation.config import load_config
from annotation.pipeline import load_clip
from annotation.readers import make_reader
from d4s.data.schema import decode_record, sample_key
from tests.annotation.conftest import cli_overrides, saved_real_video_outputs
from tests.annotation.test_estimators import write_megasam_output

T, SIZE = 10, 64
RE10K_SCALE, MEGASAM_SCALE = 0.4, 3.0  # unknown to the pipeline


def write_realestate10k(root, scene) -> None:
    timestamps = [33_333 * i for i in range(T)]
    lines = []
    for ts, c2w, K in zip(timestamps, scene.c2w[:T], scene.K[:T]):
        w2c = np.linalg.inv(c2w)
        w2c[:3, 3] *= RE10K_SCALE
        intrinsics = [float(K[0, 0]) / SIZE, float(K[1, 1]) / SIZE, float(K[0, 2]) / SIZE, float(K[1, 2]) / SIZE]
        lines.append(" ".join(map(repr, [ts, *intrinsics, 0, 0, *w2c[:3].ravel().tolist()])))
    (root / "train").mkdir(parents=True)
    (root / "train" / "clip.txt").write_text("https://www.youtube.com/watch?v=toy\n" + "\n".join(lines) + "\n")
    (root / "frames" / "clip").mkdir(parents=True)
    for ts, frame in zip(timestamps, scene.frames(range(T))):
        Image.fromarray(frame).save(root / "frames" / "clip" / f"{ts}.png")


def test_relative_depth_and_unscaled_poses_become_metric(tmp_path):
    toy = make_reader("toy4d", None, num_scenes=1, num_frames=49, size=SIZE, seed=5, dynamic_fraction=0.0)
    scene = toy.open_scene(toy.scene_names()[0])
    depth, c2w = scene.depth(range(T)), scene.c2w[:T]
    root = tmp_path / "re10k"
    write_realestate10k(root, scene)
    key = sample_key("realestate10k", "clip", 0)

    estimators, megasam = saved_real_video_outputs(tmp_path, key, depth)
    overrides = {
        "clips": {"frames_per_clip": T, "stride": T, "frame_step": 1, "max_short_side": None},
        **estimators,
    }
    config = load_config("realestate10k", overrides=overrides)
    clip = load_clip(make_reader("realestate10k", root).open_scene("clip"), list(range(T)), config)
    megasam_c2w = c2w.copy()
    megasam_c2w[:, :3, 3] /= MEGASAM_SCALE
    write_megasam_output(
        megasam / "outputs_cvd" / f"{key}_sgd_cvd_hr.npz", clip, megasam_c2w, clip.K[0], depth / MEGASAM_SCALE
    )

    out = tmp_path / "out"
    assert (
        main(
            [
                "--dataset",
                "realestate10k",
                "--root",
                str(root),
                "--out",
                str(out),
                "--manifest",
                "none",
                "--no-progress",
                *cli_overrides(overrides),
            ]
        )
        == 0
    )
    (sample,) = wds.WebDataset(glob.glob(str(out / "train" / "*.tar")), shardshuffle=False)
    record = decode_record(sample)

    valid = record.depth > 0
    assert valid.mean() > 0.9
    relative_error = np.abs(record.depth[valid] - depth[valid]) / depth[valid]
    assert np.median(relative_error) < 2e-3  # float16 storage
    np.testing.assert_allclose(record.c2w[:, :3, 3], c2w[:, :3, 3], atol=1e-4)
    np.testing.assert_allclose(record.c2w[:, :3, :3], c2w[:, :3, :3], atol=1e-5)
    assert record.meta.alignment["oracle"] == "megasam"
    assert record.meta.pose_source == "gt+metric-scale" and record.meta.metric
    assert record.dynamic_mask.mean() < 0.05  # a static scene: flow agrees with the camera motion
    assert record.track_xyz.shape[1] == T and record.track_visible.any()
