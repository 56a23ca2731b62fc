"""Estimator adapters: ground truth, Video Depth Anything, MegaSaM, metric depth references, DIS optical flow.

The official tools are replaced by stand-ins written here in their published formats and interfaces: a fake
``video_depth_anything`` package with the official constructor and ``infer_video_depth`` signature, MegaSaM
output files laid out as its ``test_demo.py`` resizes and crops, and a fake MegaSaM checkout whose scripts take
the official arguments.
"""

from __future__ import annotations

import importlib
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from annotation.clip import Clip
from annotation.errors import InputError
from annotation.estimators import make_depth_estimator, make_pose_estimator
from annotation.estimators.depth import VDA_MODEL_CONFIGS, MetricDepthReference, VideoDepthAnything, megasam_scene_name
from annotation.estimators.flow import DISFlow, forward_backward_flow, optical_flow
from annotation.estimators.gt import GroundTruthDepth, GroundTruthPoses
from annotation.estimators.poses import MEGASAM_HUB_MODELS, MegaSaM
from d4s.geometry import look_at
from d4s.geometry.cameras import project_points

SIZE = (90, 170)  # MegaSaM resizes this to 322x609 and crops to 320x608: the crop is not a plain resize
REPO = Path(__file__).resolve().parents[2]
MEGASAM_UNIDEPTH_REVISION = "1d0d3c52f60b5164629d279bb9a7546458e6dcc4"  # the revision demo_mega-sam.py pins (c83e41b)


def make_clip(
    num: int = 3, size: tuple[int, int] = SIZE, seed: int = 0, scene: str = "room 1/take a", **fields
) -> Clip:
    rng = np.random.default_rng(seed)
    height, width = size
    K = np.array([[120.0, 0.0, 0.47 * width], [0.0, 118.0, 0.52 * height], [0.0, 0.0, 1.0]], dtype=np.float32)
    return Clip(
        dataset="toy4d",
        scene=scene,
        frame_indices=list(range(5, 5 + num)),
        fps=12.0,
        frames=rng.integers(0, 256, (num, height, width, 3), dtype=np.uint8),
        K=np.repeat(K[None], num, axis=0),
        timestamps=np.arange(num) / 12.0,
        metric=True,
        **fields,
    )


def true_cameras(num: int) -> np.ndarray:
    """``c2w [T, 4, 4]`` float32: cameras on a small arc looking at a point ahead."""
    angles = torch.linspace(0.0, 0.4, num, dtype=torch.float64)
    eye = torch.stack([torch.sin(angles), 0.1 * angles, -torch.cos(angles) + 1.0], dim=-1)
    return look_at(eye, torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64).expand_as(eye)).float().numpy()


# ---------------------------------------------------------------- ground truth and registry


def test_ground_truth_depth_and_poses_pass_the_clip_through():
    rng = np.random.default_rng(1)
    depth = rng.uniform(1.0, 4.0, (3, *SIZE)).astype(np.float32)
    depth[0, 0, 0] = np.nan
    clip = make_clip(depth=depth, c2w=true_cameras(3))
    estimate = GroundTruthDepth().estimate(clip)
    assert (estimate.space, estimate.metric, estimate.source) == ("depth", True, "gt")
    assert estimate.values[0, 0, 0] == 0 and np.array_equal(estimate.values[1:], depth[1:])
    poses = GroundTruthPoses().estimate(clip)
    assert np.array_equal(poses.c2w, clip.c2w) and np.array_equal(poses.K, clip.K)
    assert (poses.metric, poses.source, poses.depth) == (True, "gt", None)


def test_ground_truth_without_data_is_a_clear_error():
    with pytest.raises(ValueError, match="has no depth"):
        GroundTruthDepth().estimate(make_clip())
    with pytest.raises(ValueError, match="has no poses"):
        GroundTruthPoses().estimate(make_clip())


def test_registry_builds_by_name_and_rejects_unknown_names(tmp_path):
    assert isinstance(make_depth_estimator("gt"), GroundTruthDepth)
    assert isinstance(make_depth_estimator("vda", outputs_dir=tmp_path), VideoDepthAnything)
    assert isinstance(make_depth_estimator("unidepth", outputs_dir=tmp_path), MetricDepthReference)
    assert isinstance(make_pose_estimator("gt"), GroundTruthPoses)
    assert isinstance(make_pose_estimator("megasam", outputs_dir=tmp_path), MegaSaM)
    with pytest.raises(ValueError, match="choose one of"):
        make_depth_estimator("megasam")
    with pytest.raises(ValueError, match="choose one of"):
        make_pose_estimator("colmap")


# ---------------------------------------------------------------- Video Depth Anything: saved outputs


def save_vda_output(outputs_dir, clip, depths):
    outputs_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(outputs_dir / f"{clip.key}_depths.npz", depths=depths)


def ramp(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A linear function of the normalised image position: bilinear resampling reproduces it inside the image."""
    return 0.5 + 2.0 * x + 1.0 * y


def test_vda_ingests_saved_disparity_and_resizes_it_bilinearly(tmp_path):
    clip = make_clip()
    height, width = SIZE
    h, w = height // 2, width // 2
    yy, xx = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    save_vda_output(tmp_path, clip, np.repeat(ramp(yy, xx)[None], 3, axis=0).astype(np.float32))
    estimate = VideoDepthAnything(outputs_dir=tmp_path).estimate(clip)
    assert (estimate.space, estimate.metric, estimate.source) == ("disparity", False, "vda")
    assert estimate.values.shape == (3, *SIZE) and estimate.values.dtype == np.float32
    v, u = (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width
    rows = (v >= 0.5 / h) & (v <= 1 - 0.5 / h)
    cols = (u >= 0.5 / w) & (u <= 1 - 0.5 / w)
    expected = ramp(*np.meshgrid(v, u, indexing="ij"))
    np.testing.assert_allclose(
        estimate.values[:, rows][:, :, cols],
        np.broadcast_to(expected[rows][:, cols], (3,) + (rows.sum(), cols.sum())),
        atol=1e-5,
    )


def test_vda_non_finite_values_become_invalid(tmp_path):
    clip = make_clip()
    depths = np.full((3, *SIZE), 2.0, dtype=np.float32)
    depths[1, 10, 20], depths[2, 30, 40] = np.nan, np.inf
    save_vda_output(tmp_path, clip, depths)
    values = VideoDepthAnything(outputs_dir=tmp_path).estimate(clip).values
    assert values[1, 10, 20] == 0 and values[2, 30, 40] == 0
    assert (values > 0).sum() == values.size - 2

    save_vda_output(tmp_path, clip, depths[:, ::2, ::2])  # resized: pixels next to the invalid one become invalid
    values = VideoDepthAnything(outputs_dir=tmp_path).estimate(clip).values
    assert np.isfinite(values).all() and values[1, 10, 20] == 0 and values[0].min() == 2.0


def test_vda_saved_output_problems_name_the_file(tmp_path):
    clip = make_clip()
    path = tmp_path / f"{clip.key}_depths.npz"
    with pytest.raises(InputError, match="run.py --save_npz") as error:
        VideoDepthAnything(outputs_dir=tmp_path).estimate(clip)
    assert error.value.path == str(path)
    save_vda_output(tmp_path, clip, np.ones((2, *SIZE), np.float32))
    with pytest.raises(InputError, match=r"T=3") as error:
        VideoDepthAnything(outputs_dir=tmp_path).estimate(clip)
    assert error.value.path == str(path)
    np.savez(path, disparity=np.ones((3, *SIZE)))
    with pytest.raises(InputError, match="missing array"):
        VideoDepthAnything(outputs_dir=tmp_path).estimate(clip)
    path.write_bytes(b"not a zip file")
    with pytest.raises(InputError, match="unreadable"):
        VideoDepthAnything(outputs_dir=tmp_path).estimate(clip)


# ---------------------------------------------------------------- Video Depth Anything: the official model

FAKE_VDA_MODULE = '''
"""Stand-in for the official video_depth_anything/video_depth.py: same constructor and inference signature."""
import torch
from torch import nn

from utils.util import frame_disparity  # the official module imports the checkout's top-level utils package too

CALLS = []


class VideoDepthAnything(nn.Module):
    def __init__(self, encoder="vitl", features=256, out_channels=[256, 512, 1024, 1024], use_bn=False,
                 use_clstoken=False, num_frames=32, pe="ape", metric=False):
        super().__init__()
        self.config = {"encoder": encoder, "features": features, "out_channels": list(out_channels), "metric": metric}
        self.gain = nn.Parameter(torch.ones(()))

    def infer_video_depth(self, frames, target_fps, input_size=518, device="cuda", fp32=False):
        CALLS.append({"config": self.config, "frames": (frames.shape, str(frames.dtype)), "target_fps": target_fps,
                      "input_size": input_size, "device": device, "fp32": fp32})
        return frame_disparity(frames) * float(self.gain.detach()), target_fps
'''
FAKE_VDA_UTILS = """
import numpy as np


def frame_disparity(frames):
    return 1.0 + frames.mean(axis=-1).astype(np.float32) / 255.0
"""


@pytest.fixture(scope="module")
def vda_checkout(tmp_path_factory):
    """One fake checkout per test session: the official package can be imported from one place per process."""
    root = tmp_path_factory.mktemp("Video-Depth-Anything")
    for relative, source in {
        "video_depth_anything/__init__.py": "",
        "video_depth_anything/video_depth.py": FAKE_VDA_MODULE,
        "utils/__init__.py": "",
        "utils/util.py": FAKE_VDA_UTILS,
    }.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(textwrap.dedent(source))
    return root


def fake_vda_calls() -> list[dict]:
    return importlib.import_module("video_depth_anything.video_depth").CALLS


def test_vda_runs_the_official_model_and_caches_its_output(vda_checkout, tmp_path):
    checkpoint = tmp_path / "video_depth_anything_vits.pth"
    torch.save({"gain": torch.tensor(3.0)}, checkpoint)
    clip = make_clip()
    options = {"outputs_dir": tmp_path / "out", "checkout": vda_checkout, "checkpoint": checkpoint, "device": "cpu"}
    estimate = VideoDepthAnything(encoder="vits", input_size=378, fp32=True, **options).estimate(clip)
    expected = 3.0 * (1.0 + clip.frames.mean(axis=-1) / 255.0)
    np.testing.assert_allclose(estimate.values, expected, rtol=1e-6)
    assert (estimate.space, estimate.metric) == ("disparity", False)
    assert fake_vda_calls()[-1] == {
        "config": {**VDA_MODEL_CONFIGS["vits"], "metric": False},
        "frames": (clip.frames.shape, "uint8"),
        "target_fps": clip.fps,
        "input_size": 378,
        "device": "cpu",
        "fp32": True,
    }
    assert VDA_MODEL_CONFIGS["vits"] == {"encoder": "vits", "features": 64, "out_channels": [48, 96, 192, 384]}

    calls = len(fake_vda_calls())
    cached = VideoDepthAnything(encoder="vits", **options).estimate(clip)
    ingested = VideoDepthAnything(outputs_dir=tmp_path / "out").estimate(clip)
    assert len(fake_vda_calls()) == calls
    np.testing.assert_array_equal(cached.values, estimate.values)
    np.testing.assert_array_equal(ingested.values, estimate.values)


def test_vda_metric_model_uses_the_official_checkpoint_name(vda_checkout):
    checkpoint = vda_checkout / "checkpoints" / "metric_video_depth_anything_vitb.pth"
    checkpoint.parent.mkdir(exist_ok=True)
    torch.save({"gain": torch.tensor(2.0)}, checkpoint)
    clip = make_clip(num=2)
    estimate = VideoDepthAnything(checkout=vda_checkout, encoder="vitb", metric=True, device="cpu").estimate(clip)
    assert (estimate.space, estimate.metric, estimate.source) == ("depth", True, "vda")
    assert fake_vda_calls()[-1]["config"] == {**VDA_MODEL_CONFIGS["vitb"], "metric": True}
    np.testing.assert_allclose(estimate.values, 2.0 * (1.0 + clip.frames.mean(axis=-1) / 255.0), rtol=1e-6)


def test_vda_cache_records_whether_it_is_metric(vda_checkout, tmp_path):
    checkpoint = tmp_path / "metric.pth"
    torch.save({"gain": torch.tensor(2.0)}, checkpoint)
    clip = make_clip(num=2)
    options = {"checkout": vda_checkout, "checkpoint": checkpoint, "encoder": "vits", "device": "cpu"}
    VideoDepthAnything(outputs_dir=tmp_path, metric=True, **options).estimate(clip)
    assert VideoDepthAnything(outputs_dir=tmp_path, metric=True).estimate(clip).metric
    with pytest.raises(InputError, match="holds metric depth") as error:
        VideoDepthAnything(outputs_dir=tmp_path, metric=False).estimate(clip)
    assert error.value.path == str(tmp_path / f"{clip.key}_depths.npz")


def test_vda_missing_checkout_or_checkpoint_names_the_path(vda_checkout, tmp_path):
    clip = make_clip()
    with pytest.raises(InputError, match="github.com/DepthAnything/Video-Depth-Anything") as error:
        VideoDepthAnything(checkout=tmp_path / "nowhere", device="cpu").estimate(clip)
    assert error.value.path == str(tmp_path / "nowhere" / "video_depth_anything" / "video_depth.py")
    with pytest.raises(InputError, match=r"video_depth_anything_vitl\.pth") as error:
        VideoDepthAnything(checkout=vda_checkout, device="cpu").estimate(clip)
    assert error.value.path == str(vda_checkout / "checkpoints" / "video_depth_anything_vitl.pth")
    with pytest.raises(ValueError, match="encoder"):
        VideoDepthAnything(outputs_dir=tmp_path, encoder="vitg")
    with pytest.raises(ValueError, match="outputs_dir"):
        VideoDepthAnything()


def test_a_checkout_whose_code_needs_a_missing_package_is_refused_before_any_clip(tmp_path):
    """Video Depth Anything's own code imports packages of its own (easydict, pinned here); one that is missing is
    named when the estimator is built. In a child process: the official package imports once per process."""
    root = tmp_path / "Video-Depth-Anything"
    (root / "video_depth_anything").mkdir(parents=True)
    (root / "video_depth_anything" / "__init__.py").write_text("")
    (root / "video_depth_anything" / "video_depth.py").write_text("import a_package_nobody_installed\n")
    code = f"from annotation.estimators.depth import VideoDepthAnything; VideoDepthAnything(checkout={str(root)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "imports 'a_package_nobody_installed', which this environment lacks" in last, result.stderr[-2000:]
    assert str(root / "video_depth_anything" / "video_depth.py") in last


# ---------------------------------------------------------------- MegaSaM outputs


def write_megasam_output(path, clip: Clip, c2w: np.ndarray, K: np.ndarray, depth: np.ndarray) -> None:
    """Write what MegaSaM's cvd_opt.py saves for ``clip``, given true cameras and depth at the clip's resolution.

    Mirrors the official test_demo.py: frames resized by sqrt(384*512 / (H*W)) (intrinsics scaled by the same
    factors), depth resized with nearest-exact, both cropped to multiples of 8.
    """
    height, width = clip.size
    factor = np.sqrt((384 * 512) / (height * width))
    h1, w1 = int(height * factor), int(width * factor)
    crop = (slice(0, h1 - h1 % 8), slice(0, w1 - w1 % 8))
    K_small = K.astype(np.float64).copy()
    K_small[0] *= w1 / width
    K_small[1] *= h1 / height
    small = torch.nn.functional.interpolate(torch.from_numpy(depth)[:, None], size=(h1, w1), mode="nearest-exact")
    images = np.stack([cv2.resize(frame, (w1, h1), interpolation=cv2.INTER_AREA)[crop] for frame in clip.frames])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        images=images,
        depths=np.clip(small[:, 0].numpy()[(slice(None), *crop)].astype(np.float16), 1e-3, 1e2),
        intrinsic=K_small,
        cam_c2w=c2w,
    )


def megasam_truth(clip: Clip, seed: int = 2):
    depth = np.random.default_rng(seed).uniform(1.0, 5.0, (clip.num_frames, *clip.size)).astype(np.float32)
    return true_cameras(clip.num_frames), clip.K[0], depth


def check_matches_truth(estimate, clip: Clip, c2w, K, depth):
    """Cameras equal the truth (a point projects to its pixel); depth equals it where MegaSaM's crop covers."""
    assert (estimate.metric, estimate.source) == (False, "megasam")
    np.testing.assert_allclose(estimate.c2w, c2w, atol=1e-6)
    np.testing.assert_allclose(estimate.K, np.broadcast_to(K, (clip.num_frames, 3, 3)), rtol=1e-6)
    pixel, z = np.array([161.3, 83.6]), 2.5  # near the bottom-right corner, where a crop-size scaling is off most
    t = clip.num_frames - 1
    point_cam = z * np.linalg.inv(K.astype(np.float64)) @ np.array([*pixel, 1.0])
    point = c2w[t, :3, :3].astype(np.float64) @ point_cam + c2w[t, :3, 3]
    uv, depth_z = project_points(
        torch.tensor(point)[None], torch.from_numpy(estimate.c2w[t]).double(), torch.from_numpy(estimate.K[t]).double()
    )
    np.testing.assert_allclose(uv[0].numpy(), pixel, atol=1e-3)
    assert abs(float(depth_z[0]) - z) < 1e-4

    height, width = clip.size
    factor = np.sqrt((384 * 512) / (height * width))
    h1, w1 = int(height * factor), int(width * factor)
    rows = (np.arange(height) + 0.5) * h1 / height <= h1 - h1 % 8
    cols = (np.arange(width) + 0.5) * w1 / width <= w1 - w1 % 8
    assert not rows.all()  # the test size leaves an uncovered strip
    values = estimate.depth.values
    assert (estimate.depth.space, estimate.depth.metric, estimate.depth.source) == ("depth", False, "megasam")
    np.testing.assert_array_equal(
        values[:, rows][:, :, cols], depth.astype(np.float16).astype(np.float32)[:, rows][:, :, cols]
    )
    assert (values[:, ~rows] == 0).all() and (values[:, :, ~cols] == 0).all()


def test_megasam_output_is_brought_to_the_clip_resolution(tmp_path):
    clip = make_clip()
    c2w, K, depth = megasam_truth(clip)
    write_megasam_output(tmp_path / "outputs_cvd" / f"{clip.key}_sgd_cvd_hr.npz", clip, c2w, K, depth)
    check_matches_truth(MegaSaM(outputs_dir=tmp_path).estimate(clip), clip, c2w, K, depth)


def test_megasam_bad_outputs_name_the_file(tmp_path):
    clip = make_clip()
    path = tmp_path / "outputs_cvd" / f"{clip.key}_sgd_cvd_hr.npz"
    with pytest.raises(InputError, match="github.com/mega-sam/mega-sam") as error:
        MegaSaM(outputs_dir=tmp_path).estimate(clip)
    assert error.value.path == str(path)
    c2w, K, _ = megasam_truth(clip)
    scaled = c2w.copy()
    scaled[1, :3, :3] *= 2.0
    non_finite = c2w.copy()
    non_finite[0, 0, 3] = np.nan
    cases = [  # (output written for, its poses, clip read with, error)
        (clip, c2w, make_clip(num=4), "T=4"),
        (clip, scaled, clip, "orthonormal"),
        (clip, non_finite, clip, "non-finite"),
        (make_clip(size=(96, 170)), c2w, clip, "another size"),
    ]
    for written_for, poses, read_as, message in cases:
        write_megasam_output(path, written_for, poses, K, megasam_truth(written_for)[2])
        with pytest.raises(InputError, match=message) as error:
            MegaSaM(outputs_dir=tmp_path).estimate(read_as)
        assert error.value.path == str(path)


# ---------------------------------------------------------------- MegaSaM: running the official pipeline

FAKE_MEGASAM_SCRIPTS = {
    "Depth-Anything/run_videos.py": """
        parser.add_argument("--img-path"); parser.add_argument("--outdir"); parser.add_argument("--encoder")
        parser.add_argument("--load-from", required=True); parser.add_argument("--localhub", action="store_true")
        args = parser.parse_args()
        assert os.path.isfile(args.load_from)
        # offline: DINOv2's code from the checkout's torchhub folder, as DPT_DINOv2(localhub=True) loads it
        assert args.localhub and os.path.isfile("torchhub/facebookresearch_dinov2_main/hubconf.py")
        os.makedirs(args.outdir, exist_ok=True)
        for image in sorted(glob.glob(os.path.join(args.img_path, "*.png"))):
            np.save(os.path.join(args.outdir, os.path.basename(image)[:-4] + ".npy"), np.ones((4, 6), np.float32))
    """,
    "UniDepth/scripts/demo_mega-sam.py": """
        import unidepth  # importable only with <checkout>/UniDepth on PYTHONPATH, as the official script needs
        assert os.environ.get("HF_HUB_OFFLINE") == "1"  # UniDepthV2.from_pretrained must read the local cache
        parser.add_argument("--img-path"); parser.add_argument("--outdir"); parser.add_argument("--scene-name")
        args = parser.parse_args()
        os.makedirs(os.path.join(args.outdir, args.scene_name), exist_ok=True)
        for image in sorted(glob.glob(os.path.join(args.img_path, "*.png"))):
            name = os.path.join(args.outdir, args.scene_name, os.path.basename(image)[:-4] + ".npz")
            np.savez(name, depth=np.full((4, 6), 2.0, np.float32), fov=60.0)
    """,
    "camera_tracking_scripts/test_demo.py": """
        parser.add_argument("--datapath"); parser.add_argument("--weights"); parser.add_argument("--scene_name")
        parser.add_argument("--mono_depth_path"); parser.add_argument("--metric_depth_path")
        parser.add_argument("--disable_vis", action="store_true")
        args = parser.parse_args()
        images = sorted(glob.glob(os.path.join(args.datapath, "*.png")))
        mono = glob.glob(os.path.join(args.mono_depth_path, args.scene_name, "*.npy"))
        metric = glob.glob(os.path.join(args.metric_depth_path, args.scene_name, "*.npz"))
        assert os.path.isfile(args.weights) and len(images) == len(mono) == len(metric) > 0
        os.makedirs(os.path.join("reconstructions", args.scene_name), exist_ok=True)
        images = np.stack([cv2.imread(image) for image in images])
        np.save(os.path.join("reconstructions", args.scene_name, "images.npy"), images)
        np.save(os.path.join("reconstructions", args.scene_name, "disps.npy"), np.ones((len(images), 4, 6)))
    """,
    "cvd_opt/preprocess_flow.py": """
        parser.add_argument("--datapath"); parser.add_argument("--model"); parser.add_argument("--scene_name")
        parser.add_argument("--mixed_precision", action="store_true")
        args = parser.parse_args()
        count = len(glob.glob(os.path.join(args.datapath, "*.png")))
        assert os.path.isfile(args.model)
        os.makedirs(os.path.join("cache_flow", args.scene_name), exist_ok=True)
        pairs = np.stack([np.arange(count - 1), np.arange(1, count)])
        np.save(os.path.join("cache_flow", args.scene_name, "ii-jj.npy"), pairs)
    """,
    "cvd_opt/cvd_opt.py": """
        parser.add_argument("--scene_name"); parser.add_argument("--w_grad", type=float)
        parser.add_argument("--w_normal", type=float); parser.add_argument("--output_dir", default="outputs_cvd")
        args = parser.parse_args()
        images = np.load(os.path.join("reconstructions", args.scene_name, "images.npy"))
        np.load(os.path.join("reconstructions", args.scene_name.replace("_opt", ""), "disps.npy"))  # as upstream
        pairs = np.load(os.path.join("cache_flow", args.scene_name, "ii-jj.npy"))
        truth = dict(np.load("truth.npz"))
        assert len(images) == len(truth["cam_c2w"]) == pairs.shape[1] + 1
        os.makedirs(args.output_dir, exist_ok=True)
        np.savez(os.path.join(args.output_dir, args.scene_name + "_sgd_cvd_hr.npz"), **truth)
    """,
}
FAKE_SCRIPT_HEADER = """
import argparse, glob, json, os, sys
import cv2
import numpy as np
with open("calls.jsonl", "a") as log:
    log.write(json.dumps(sys.argv) + "\\n")
parser = argparse.ArgumentParser()
"""
WEIGHTS = (
    "checkpoints/megasam_final.pth",
    "Depth-Anything/checkpoints/depth_anything_vitl14.pth",
    "cvd_opt/raft-things.pth",
    "torchhub/facebookresearch_dinov2_main/hubconf.py",
)


def make_megasam_checkout(root, clip: Clip, truth, monkeypatch) -> None:
    """Fake checkout: the official scripts' paths and arguments; cvd_opt.py writes ``truth.npz`` as its result. A
    Hugging Face cache beside it holds UniDepth's snapshot (``HF_HUB_CACHE``)."""
    for relative, body in FAKE_MEGASAM_SCRIPTS.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(FAKE_SCRIPT_HEADER + textwrap.dedent(body))
    (root / "UniDepth" / "unidepth").mkdir()
    (root / "UniDepth" / "unidepth" / "__init__.py").write_text("")
    for relative in WEIGHTS:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"weights")
    write_megasam_output(root / "truth.npz", clip, *truth)
    cache = root.parent / "hf-cache"
    snapshot = cache / "models--lpiccinelli--unidepth-v2-vitl14" / "snapshots" / MEGASAM_UNIDEPTH_REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))


def test_megasam_runs_the_official_steps_offline_and_caches_the_result(tmp_path, monkeypatch):
    clip = make_clip()
    truth = megasam_truth(clip)
    checkout = tmp_path / "mega sam"  # a space in the path exercises the quoting of the templates
    make_megasam_checkout(checkout, clip, truth, monkeypatch)
    cache = tmp_path / "cache"
    options = {"checkout": checkout, "python": sys.executable, "work_dir": tmp_path}
    assert MEGASAM_HUB_MODELS == {"lpiccinelli/unidepth-v2-vitl14": MEGASAM_UNIDEPTH_REVISION}
    check_matches_truth(MegaSaM(outputs_dir=cache, **options).estimate(clip), clip, *truth)

    calls = [json.loads(line) for line in (checkout / "calls.jsonl").read_text().splitlines()]
    assert [call[0] for call in calls] == [
        "Depth-Anything/run_videos.py",
        "UniDepth/scripts/demo_mega-sam.py",
        "camera_tracking_scripts/test_demo.py",
        "cvd_opt/preprocess_flow.py",
        "cvd_opt/cvd_opt.py",
    ]
    assert ["--scene_name", clip.key] == calls[2][3:5] and "--weights=checkpoints/megasam_final.pth" in calls[2]
    # the frames reached the tools losslessly, in order, as the BGR images cv2.imread gives
    np.testing.assert_array_equal(
        np.load(checkout / "reconstructions" / clip.key / "images.npy"), clip.frames[..., ::-1]
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("megasam-")] == []  # frames folder removed

    assert (cache / "outputs_cvd" / f"{clip.key}_sgd_cvd_hr.npz").is_file()
    check_matches_truth(MegaSaM(outputs_dir=cache).estimate(clip), clip, *truth)
    check_matches_truth(MegaSaM(**options).estimate(clip), clip, *truth)  # outputs_dir defaults to the checkout
    assert len((checkout / "calls.jsonl").read_text().splitlines()) == 5  # both were cache hits


def test_megasam_run_failures_are_loud(tmp_path, monkeypatch):
    clip = make_clip()
    checkout = tmp_path / "mega-sam"
    with pytest.raises(InputError, match="not a MegaSaM checkout") as error:
        MegaSaM(checkout=checkout).estimate(clip)
    assert error.value.path == str(checkout)
    make_megasam_checkout(checkout, clip, megasam_truth(clip), monkeypatch)
    (checkout / "cvd_opt" / "raft-things.pth").unlink()
    with pytest.raises(InputError, match="RAFT") as error:
        MegaSaM(checkout=checkout).estimate(clip)
    assert error.value.path == str(checkout / "cvd_opt" / "raft-things.pth")
    (checkout / "cvd_opt" / "raft-things.pth").write_bytes(b"weights")
    (checkout / "torchhub" / "facebookresearch_dinov2_main" / "hubconf.py").unlink()
    with pytest.raises(InputError, match="git clone https://github.com/facebookresearch/dinov2"):
        MegaSaM(checkout=checkout).estimate(clip)
    (checkout / "torchhub" / "facebookresearch_dinov2_main" / "hubconf.py").write_text("")
    other = tmp_path / "other cache" / "models--lpiccinelli--unidepth-v2-vitl14" / "snapshots" / "0123abc"
    other.mkdir(parents=True)
    (other / "config.json").write_text("{}")  # another revision than the one the step pins
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "other cache"))
    with pytest.raises(
        InputError, match=r"unidepth-v2-vitl14 at revision 1d0d3c5\w+ is not in this Hugging Face cache"
    ):
        MegaSaM(checkout=checkout).estimate(clip)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))

    steps = ["{python} -c 'import sys; sys.exit(3)'"]
    with pytest.raises(RuntimeError, match="exit code 3"):
        MegaSaM(checkout=checkout, python=sys.executable, steps=steps, required_files={}).estimate(clip)
    with pytest.raises(InputError, match="without writing") as error:
        MegaSaM(checkout=checkout, python=sys.executable, steps=["{python} -c pass"], required_files={}).estimate(clip)
    assert error.value.path == str(checkout / "outputs_cvd" / f"{clip.key}_sgd_cvd_hr.npz")
    with pytest.raises(ValueError, match="placeholders"):
        MegaSaM(checkout=checkout, steps=["{python} run.py --video {video}"])


def test_a_clip_key_with_opt_runs_under_a_scene_name_megasam_keeps(tmp_path, monkeypatch):
    """MegaSaM's cvd_opt.py deletes ``_opt`` from the scene name when it reads the disparities (the fake does too):
    the clip runs under :func:`megasam_scene_name`, its output is cached under its own key, and the UniDepth outputs
    of that run are found for it."""
    clip = make_clip(scene="take_opt_1")
    assert "_opt" in clip.key and "_opt" not in megasam_scene_name(clip.key)
    assert megasam_scene_name("room_1") == "room_1" and megasam_scene_name("a_opt") != megasam_scene_name("a-opt")
    truth = megasam_truth(clip)
    checkout = tmp_path / "mega-sam"
    make_megasam_checkout(checkout, clip, truth, monkeypatch)
    check_matches_truth(
        MegaSaM(checkout=checkout, python=sys.executable, work_dir=tmp_path).estimate(clip), clip, *truth
    )
    assert (checkout / "outputs_cvd" / f"{clip.key}_sgd_cvd_hr.npz").is_file()
    reference = MetricDepthReference(checkout / "UniDepth" / "outputs").estimate(clip)
    assert reference.values.shape == (clip.num_frames, *clip.size) and np.all(reference.values == 2.0)


# ---------------------------------------------------------------- metric depth references (UniDepth)


def test_unidepth_reference_reads_per_frame_files_and_resizes_nearest(tmp_path):
    clip = make_clip()
    # blocky metric depth; UniDepth in MegaSaM saves it with the long side at 640 px
    blocks = np.random.default_rng(3).uniform(1.0, 9.0, (3, 9, 17)).astype(np.float32)
    depth = np.repeat(np.repeat(blocks, 10, axis=1), 10, axis=2)
    unidepth_size = (round(640 * SIZE[0] / SIZE[1]), 640)
    saved = torch.nn.functional.interpolate(torch.from_numpy(depth)[:, None], size=unidepth_size, mode="nearest-exact")
    for index, frame in enumerate(saved[:, 0].numpy()):
        (tmp_path / clip.key).mkdir(exist_ok=True)
        np.savez(tmp_path / clip.key / f"{index:05d}.npz", depth=frame, fov=60.0)
    estimate = MetricDepthReference(tmp_path).estimate(clip)
    assert (estimate.space, estimate.metric, estimate.source) == ("depth", True, "unidepth")
    np.testing.assert_array_equal(estimate.values, depth)

    (tmp_path / clip.key / "00002.npz").unlink()
    with pytest.raises(InputError, match="found 2 files"):
        MetricDepthReference(tmp_path).estimate(clip)
    with pytest.raises(InputError, match="no metric depth files") as error:
        MetricDepthReference(tmp_path / "elsewhere").estimate(clip)
    assert error.value.path == str(tmp_path / "elsewhere" / clip.key / "*.npz")


# ---------------------------------------------------------------- DIS optical flow


def textured_image(height: int = 160, width: int = 224, seed: int = 0) -> np.ndarray:
    """Smooth multi-scale random texture, ``[H, W, 3]`` uint8 RGB."""
    rng = np.random.default_rng(seed)
    gray = sum(
        s * cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), s) for s in (1.5, 3, 6)
    )
    gray = (gray - gray.min()) / (gray.max() - gray.min())
    return np.stack([255 * gray, 200 * (1 - gray) + 30, 100 * gray + 80], axis=-1).astype(np.uint8)


def affine_flow(M: np.ndarray, height: int, width: int) -> np.ndarray:
    """Flow ``[H, W, 2]`` of the warp ``dst(M p) = src(p)`` (what cv2.warpAffine does with ``M``)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    points = np.stack([xs, ys], axis=-1)
    return points @ M[:, :2].T + M[:, 2] - points


INTERIOR = (slice(20, -20), slice(20, -20))


@pytest.mark.parametrize(
    "M, tolerance",
    [
        (np.array([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]]), 0.1),  # integer translation
        (np.array([[1.0, 0.0, 2.3], [0.0, 1.0, -1.6]]), 0.1),  # sub-pixel translation
        (cv2.getRotationMatrix2D((112.0, 80.0), 2.0, 1.02), 0.2),  # rotation and zoom
    ],
)
def test_dis_flow_recovers_known_warps_both_ways(M, tolerance):
    src = textured_image()
    height, width = src.shape[:2]
    dst = cv2.warpAffine(src, M, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    forward, backward = forward_backward_flow(np.stack([src, dst]))
    assert forward.shape == backward.shape == (1, height, width, 2) and forward.dtype == np.float32
    forward_error = np.linalg.norm(forward[0] - affine_flow(M, height, width), axis=-1)[INTERIOR]
    inverse = cv2.invertAffineTransform(M)
    backward_error = np.linalg.norm(backward[0] - affine_flow(inverse, height, width), axis=-1)[INTERIOR]
    assert np.median(forward_error) < tolerance and np.median(backward_error) < tolerance
    # forward then backward returns to the start
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    back = cv2.remap(backward[0], xs + forward[0, ..., 0], ys + forward[0, ..., 1], cv2.INTER_LINEAR)
    assert np.median(np.linalg.norm(forward[0] + back, axis=-1)[INTERIOR]) < tolerance


def shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` moved by ``(dx, dy)`` pixels (bilinear, reflected border)."""
    M = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
    return cv2.warpAffine(image, M, image.shape[1::-1], borderMode=cv2.BORDER_REFLECT)


def test_dis_flow_pairs_presets_and_checks():
    src = textured_image()
    height, width = src.shape[:2]
    frames = np.stack([src, shifted(src, 1.5, 0.5), shifted(src, 3.0, 1.0)])
    flows = optical_flow(frames, [(0, 2), (2, 0)], preset="fast")
    assert flows.shape == (2, height, width, 2)
    np.testing.assert_allclose(np.median(flows[0][INTERIOR], axis=(0, 1)), [3.0, 1.0], atol=0.15)
    np.testing.assert_allclose(np.median(flows[1][INTERIOR], axis=(0, 1)), [-3.0, -1.0], atol=0.15)
    assert pickle.loads(pickle.dumps(DISFlow("ultrafast"))).preset == "ultrafast"
    with pytest.raises(ValueError, match="preset"):
        DISFlow("slow")
    with pytest.raises(ValueError, match="out of range"):
        DISFlow().pairs(frames, [(0, 3)])
    with pytest.raises(ValueError, match="uint8 RGB"):
        DISFlow().forward_backward(frames[:1])
    with pytest.raises(ValueError, match="uint8 RGB"):
        DISFlow().forward_backward(frames.astype(np.float32))
