"""The evaluation protocol end to end on the tiny model and toy4d shards: report files, skipped metrics, finite
weight-free metrics, resuming without generating again, no network, and one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import socket
from pathlib import Path

import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from d4s.eval.config import PAPER_TRAJECTORIES, load_config
from d4s.eval.run import run_protocol
from d4s.eval.samples import Sample, completed, plan_samples, sample_seed, sample_settings
from d4s.eval.scenes import load_scenes
from d4s.eval.scoring import FEATURE_METRICS
from d4s.pipeline import Diff4SplatPipeline
from tests.data.conftest import toy4d_shards  # noqa: F401  (session fixture: small annotated shards)
from tests.helpers import save_tiny_checkpoint

TINY = "configs/tiny/eval.yaml"


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, toy4d_shards):  # noqa: F811
    """The tiny evaluation config on the test shards with a lively tiny checkpoint whose caption cache knows the
    scenes' captions."""
    folder = tmp_path_factory.mktemp("eval")
    ckpt = save_tiny_checkpoint(folder / "tiny.ckpt")
    config = load_config(
        TINY,
        {
            "ckpt": str(ckpt),
            "out": str(folder / "run"),
            "scenes.index": str(toy4d_shards / "index.json"),
            "scenes.max_scenes": 2,
            "generation.steps": 2,
            "generation.frame_step": 1,  # the fixture's clips hold 12 frames
        },
    )
    cache_path = ckpt.with_suffix(".captions.pt")
    cache = torch.load(cache_path, weights_only=True)
    for scene in load_scenes(config.scenes, config.generation):
        cache.setdefault(scene.caption, torch.randn(8, 32))
    torch.save(cache, cache_path)
    return config


@pytest.fixture(scope="module")
def tiny_run(tiny_config):
    """One in-process evaluation run with every socket connection refused (and recorded)."""
    return run_offline(tiny_config)


def run_offline(config) -> tuple[dict, list]:
    """``run_protocol(config)`` with every socket connection refused; returns the report and the attempts."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access during evaluation")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket.socket, "connect_ex", refuse)
        patch.setattr(socket, "create_connection", refuse)
        report = run_protocol(config)
    return report, attempts


def own_copy(config, folder: Path):
    """``config`` writing to a copy of the shared run's folder: a test that adds metrics leaves the shared run as it
    was, whatever order the tests run in."""
    shutil.copytree(config.out, folder)
    return dataclasses.replace(config, out=str(folder))


def test_report_files_and_finite_weight_free_metrics(tiny_config, tiny_run):
    report, _ = tiny_run
    out = Path(tiny_config.out)
    for name in ("report.json", "report.md", "metrics_by_trajectory.png"):  # no RPE curve without registered poses
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text())["run"] == report["run"]
    assert (
        report["run"]["scenes"] == 2 and report["run"]["samples"] == 2 * 8
    )  # 5 trajectories, orbit, real cameras, latents
    assert report["run"]["generated"] == report["run"]["samples"]
    finite = [report["orbit"]["cycle_psnr"]["mean"]]
    finite += [report["reconstruction"][m]["mean"] for m in ("psnr", "ssim", "depth_abs_rel", "depth_delta1")]
    assert all(math.isfinite(v) for v in finite), finite
    # the tiny random model renders too little texture to register any frame: RPE is reported as not computed
    # (with the reason), never as the error of an empty estimate
    assert report["overall"]["pose_unregistered"]["mean"] == 1.0
    rpe_failures = [f for f in report["failures"] if f["metric"] == "rpe"]
    assert len(rpe_failures) == 2 * len(PAPER_TRAJECTORIES)
    assert all("could be registered" in f["reason"] for f in rpe_failures)
    assert (out / "samples" / report["samples"][0]["scene"] / "spiral" / "rgb.mp4").is_file()


def test_the_generator_is_scored_apart_from_the_ldrm(tiny_config, tiny_run):
    samples = Path(tiny_config.out) / "samples"
    pipeline = Diff4SplatPipeline.from_checkpoint(tiny_config.ckpt)
    for scene in load_scenes(tiny_config.scenes, tiny_config.generation):
        metrics = json.loads((samples / scene.name / "scene" / "metrics.json").read_text())["metrics"]
        real = pipeline.encode_video(scene.video.float() / 255.0)[0].double().numpy()
        peak = pipeline.latent_range
        assert peak is not None and real.shape[0] == 3  # space-to-depth latents, 3 latent frames
        for k in range(1, real.shape[0]):  # frame 0 held still, against skimage
            expected = peak_signal_noise_ratio(real[k], real[0], data_range=peak)
            assert metrics[f"still_latent_psnr_{k}"] == pytest.approx(expected, rel=1e-6)
        assert all(math.isfinite(metrics[f"latent_psnr_{k}"]) for k in range(real.shape[0]))
        assert math.isfinite(metrics["psnr_t0"])
        reconstructed = json.loads((samples / scene.name / "latents" / "metrics.json").read_text())["metrics"]
        assert "latent_psnr_0" not in reconstructed  # the LDRM on the real latents samples nothing
    report_md = (Path(tiny_config.out) / "report.md").read_text()
    assert "The generator alone" in report_md and "PSNR at t = 0" in report_md


def test_weight_needing_metrics_are_listed_as_skipped_with_the_missing_file(tiny_config, tiny_run):
    report, _ = tiny_run
    skipped = {entry["metric"]: entry["skipped"] for entry in report["skipped"]}
    assert set(FEATURE_METRICS) | {"lpips"} == set(skipped)
    assert "weights.i3d" in skipped["fvd"] and "no path configured" in skipped["fvd"]
    assert "lpips_backbone" in skipped["lpips"]
    markdown = (Path(tiny_config.out) / "report.md").read_text()
    assert "## Skipped metrics" in markdown and "210.153" in markdown  # the paper's FVD beside ours
    for metric in FEATURE_METRICS:
        assert f"**{metric}**" in markdown
        assert metric not in report["overall"]  # never faked


def test_no_socket_is_opened(tiny_run):
    _, attempts = tiny_run
    assert attempts == []


def test_rerun_resumes_without_generating(tiny_config, tiny_run, monkeypatch, tmp_path):
    first, _ = tiny_run

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run loaded the model again")

    monkeypatch.setattr("d4s.pipeline.Diff4SplatPipeline.from_checkpoint", no_model)
    again = run_protocol(own_copy(tiny_config, tmp_path / "run"))
    assert again["run"]["generated"] == 0 and again["run"]["reused"] == first["run"]["samples"]
    assert again["overall"] == first["overall"] and again["reconstruction"] == first["reconstruction"]


def test_changed_settings_invalidate_a_cached_sample(tiny_config, tiny_run):
    report, _ = tiny_run
    entry = report["samples"][0]
    sample = Sample(entry["scene"], entry["trajectory"], entry["seed"])
    out = Path(tiny_config.out)
    stored = json.loads((sample.folder(out) / "metrics.json").read_text())["settings"]
    assert completed(sample, stored, out) is not None
    assert completed(sample, {**stored, "seed": sample.seed + 1}, out) is None


def test_seeds_are_fixed_per_scene_and_trajectory(tiny_config):
    assert sample_seed(0, "a", "spiral") == sample_seed(0, "a", "spiral")
    seeds = {sample_seed(0, "a", name) for name in PAPER_TRAJECTORIES} | {sample_seed(1, "a", "spiral")}
    assert len(seeds) == 6 and all(0 <= s < 2**31 for s in seeds)
    scenes = load_scenes(tiny_config.scenes, tiny_config.generation)
    samples = plan_samples(scenes, tiny_config)
    assert [s.trajectory for s in samples[:7]] == [*PAPER_TRAJECTORIES, "orbit", "scene"]
    settings = sample_settings(samples[0], 2.0, tiny_config, scenes[0])
    assert settings["seed"] == samples[0].seed and settings["trajectory"] == "spiral"
    recaptioned = dataclasses.replace(scenes[0], caption=scenes[0].caption + " at night")
    assert sample_settings(samples[0], 2.0, tiny_config, recaptioned) != settings  # another input: a stale sample


def _cli(argv, capsys) -> tuple[int, str]:
    from d4s.eval.__main__ import main
    from d4s.utils.cli import run_cli

    code = run_cli(main, argv)
    return code, capsys.readouterr().err


def test_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    code, err = _cli(["--config", TINY, "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.count("\n") == 1 and "checkpoint not found" in err and "none.ckpt" in err


def test_missing_scene_source_is_one_line_error(tiny_config, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(f"scenes: {{index: {tmp_path / 'nowhere' / 'index.json'}}}\n")
    code, err = _cli(["--config", str(config), "--ckpt", tiny_config.ckpt, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.count("\n") == 1 and "nowhere" in err


def test_bad_config_is_one_line_error(tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text("generation: {frames: 10}\nmetrics: {typo: 1}\n")
    code, err = _cli(["--config", str(config)], capsys)
    assert code == 2 and err.count("\n") == 1 and "typo" in err
    code, err = _cli(["--config", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "missing.yaml" in err


def test_random_init_consistency_only_on_request_and_marked(tiny_config, tiny_run, monkeypatch, tmp_path):
    """A metric added to a finished run is computed from the cached videos, no generation."""
    assert "random_init_consistency" not in tiny_run[0]["overall"]
    monkeypatch.setattr("d4s.pipeline.Diff4SplatPipeline.from_checkpoint", None)
    config = own_copy(tiny_config, tmp_path / "run")
    config = dataclasses.replace(config, weights=dataclasses.replace(config.weights, random_init_consistency=True))
    report = run_protocol(config)
    value = report["overall"]["random_init_consistency"]
    assert math.isfinite(value["mean"]) and value["n"] == 10
    assert report["not_comparable"] == ["random_init_consistency"]
    assert "NOT comparable" in (Path(config.out) / "report.md").read_text()


class _StandInCLIP:
    """Test stand-in for a CLIP extractor: mean colour as the 'embedding'."""

    def image_features(self, frames):
        return torch.nn.functional.normalize(frames.mean((2, 3)) + 0.1, dim=-1)

    def text_features(self, texts):
        return torch.nn.functional.normalize(torch.ones(len(texts), 3), dim=-1)


class _StandInI3D:
    """Test stand-in for I3D: per-channel means and standard deviations of a video."""

    def features(self, videos):
        return torch.cat([videos.mean((1, 3, 4)), videos.std((1, 3, 4))], dim=-1)


def test_weight_needing_metrics_are_wired_when_their_extractors_load(tiny_config, tiny_run, monkeypatch, tmp_path):
    """Configured extractors (stand-ins here) give values, the others stay skipped; a copy of the run is scored."""
    from d4s.eval.extractors.errors import MissingWeights

    def load_extractor(name, paths, device):
        stand_ins = {"clip_b32": _StandInCLIP, "i3d": _StandInI3D}
        if name in stand_ins and paths.get(name):
            return stand_ins[name]()
        raise MissingWeights(name, paths.get(name))

    monkeypatch.setattr("d4s.eval.extractors.load_extractor", load_extractor)
    monkeypatch.setattr("d4s.pipeline.Diff4SplatPipeline.from_checkpoint", None)
    i3d_file = tmp_path / "i3d_torchscript.pt"  # the feature caches record the weights file they came from
    i3d_file.write_bytes(b"stand-in")
    tiny_config = own_copy(tiny_config, tmp_path / "run")
    weights = dataclasses.replace(tiny_config.weights, clip_b32="stand-in", i3d=str(i3d_file))
    report = run_protocol(dataclasses.replace(tiny_config, weights=weights))
    for metric in ("clip_score", "background_consistency"):
        assert report["overall"][metric]["n"] == 10 and math.isfinite(report["overall"][metric]["mean"])
    assert math.isfinite(report["overall"]["fvd"]["mean"]) and report["overall"]["kvd"]["n_real"] == 2
    assert report["trajectories"]["spiral"]["fvd"]["n"] == 2
    skipped = {entry["metric"] for entry in report["skipped"]}
    assert skipped == {"clip_aesthetic", "qalign", "mast3r_matches", "subject_consistency", "lpips"}
    # cached I3D features are reused for the same weights file and recomputed for another one
    calls = []
    monkeypatch.setattr(_StandInI3D, "features", lambda self, videos: calls.append(1) or torch.ones(1, 6))
    run_protocol(dataclasses.replace(tiny_config, weights=weights))
    assert calls == []
    i3d_file.write_bytes(b"another I3D port")
    again = run_protocol(dataclasses.replace(tiny_config, weights=weights))
    assert len(calls) == 2 + 10  # every real and generated video again
    assert again["overall"]["fvd"]["mean"] != report["overall"]["fvd"]["mean"]


class _RemoteCodeDINO:
    """Stand-in for a network whose own code fails mid-way (as one-align's remote code does under transformers 5)."""

    def features(self, videos):
        raise NameError("name 'Cache' is not defined")


def test_one_metrics_failure_stops_no_other(tiny_config, tiny_run, monkeypatch, tmp_path):
    """Q-Align configured without its own environment is refused before it loads anything, and a network that raises
    inside its own code is skipped with the error; CLIP-Score and background consistency are computed all the same."""
    from d4s.eval import extractors

    real_load = extractors.load_extractor
    stand_ins = {"clip_b32": _StandInCLIP, "dino": _RemoteCodeDINO}

    def load_extractor(name, paths, device):
        return stand_ins[name]() if name in stand_ins else real_load(name, paths, device)

    monkeypatch.setattr("d4s.eval.extractors.load_extractor", load_extractor)
    monkeypatch.setattr("d4s.pipeline.Diff4SplatPipeline.from_checkpoint", None)
    one_align = tmp_path / "one-align"
    one_align.mkdir()
    (one_align / "config.json").write_text("{}")
    config = own_copy(tiny_config, tmp_path / "run")
    weights = dataclasses.replace(config.weights, clip_b32="stand-in", dino="stand-in", qalign=str(one_align))
    report = run_protocol(dataclasses.replace(config, weights=weights))
    skipped = {entry["metric"]: entry["skipped"] for entry in report["skipped"]}
    assert "transformers 4.3x" in skipped["qalign"] and "weights.qalign_python" in skipped["qalign"]
    assert skipped["subject_consistency"] == "NameError: name 'Cache' is not defined"
    for metric in ("clip_score", "background_consistency"):
        assert report["overall"][metric]["n"] == 10 and math.isfinite(report["overall"][metric]["mean"])


def test_rpe_of_a_render_follows_its_cameras(tiny_config):
    """A textured room rendered along `forward`: measured against its own cameras the RPE is small, against another
    trajectory it is not (the wiring from render to pose estimate to RPE)."""
    from d4s.eval.scenes import Scene
    from d4s.eval.scoring import weight_free_metrics
    from d4s.geometry import intrinsics_from_fov, make_trajectory
    from d4s.render import render
    from tests.helpers import textured_room_field

    room, frames, size = textured_room_field(), 7, (96, 128)
    c2w = make_trajectory("forward", frames, 3.0)
    K = intrinsics_from_fov(size[1], size[0], 60.0).expand(frames, 3, 3)
    out = render(room, c2w, K, size[1], size[0], "torch", torch.tensor([0.5, 0.5, 0.5]))
    scene = Scene("room", "", out.rgb[0].permute(2, 0, 1), K[0])
    sample = Sample("room", "forward", 0)
    own, _, failures = weight_free_metrics(sample, scene, out.rgb, out.depth, c2w, K, tiny_config)
    assert not failures and own["pose_unregistered"] < 0.5
    other, _, _ = weight_free_metrics(
        sample, scene, out.rgb, out.depth, make_trajectory("upward", frames, 3.0), K, tiny_config
    )
    assert own["rpe_rot_deg"] < 3.0 and own["rpe_trans"] < 0.5 * other["rpe_trans"]


def test_no_socket_is_opened_while_networks_load_from_local_folders(tiny_config, clip_dir, dino_dir, tmp_path):
    """The feature networks load through transformers from local folders (here tiny stand-ins) with every socket
    connection refused; the Hugging Face libraries are set offline."""
    import os

    config = dataclasses.replace(
        tiny_config,
        out=str(tmp_path / "run"),
        weights=dataclasses.replace(tiny_config.weights, clip_b32=str(clip_dir), dino=str(dino_dir)),
    )
    report, attempts = run_offline(config)
    assert attempts == []
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    for metric in ("clip_score", "subject_consistency", "background_consistency"):
        assert math.isfinite(report["overall"][metric]["mean"]), metric
    assert "clip_score" not in {entry["metric"] for entry in report["skipped"]}


def _moving_tracks_scene(T: int = 3, size: int = 8, stride: int = 2):
    """A static camera and one track per Gaussian cell, at the cell's corner pixel, sliding along its own viewing ray
    (so it stays on that pixel) by ``0.1 * k(col) * t`` ray lengths, ``k(col) = (-1)^col (col + 1)``."""
    from d4s.eval.scenes import Scene
    from d4s.geometry.cameras import intrinsics_from_fov

    h = w = size // stride
    K = intrinsics_from_fov(size, size, 60.0)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    uv = torch.stack([stride * cols + 1.0, stride * rows + 1.0], dim=-1).reshape(-1, 2)
    rays = torch.cat([uv, torch.ones(len(uv), 1)], dim=-1) @ torch.linalg.inv(K).T  # [N, 3], z = 1
    k = ((-1.0) ** cols * (cols + 1)).reshape(-1).float()
    times = torch.arange(T).float()
    track_xyz = rays[:, None] * (2.0 + 0.1 * k[:, None, None] * times[None, :, None])
    scene = Scene(
        name="moving",
        caption="",
        image=torch.zeros(3, size, size),
        K=K,
        video=torch.zeros(T, 3, size, size, dtype=torch.uint8),
        c2w=torch.eye(4).expand(T, 4, 4).clone(),
        K_video=K.expand(T, 3, 3).clone(),
        track_xyz=track_xyz,
        track_visible=torch.ones(len(uv), T, dtype=torch.bool),
    )
    return scene, rays, k, (T, h, w)


def test_motion_metrics_follow_each_tracks_own_gaussian():
    from d4s.eval.scoring import motion_metrics
    from d4s.gaussians.field import DeformableGaussianField
    from d4s.gaussians.procedural import random_field

    scene, rays, k, grid = _moving_tracks_scene()
    T, h, w = grid
    per_cell = 0.1 * k[:, None] * rays  # [h * w, 3]: one time step of each cell's motion
    source = torch.arange(T).repeat_interleave(h * w)  # the frame each Gaussian belongs to
    dmu = (torch.arange(T)[:, None] - source[None])[..., None].float() * per_cell.repeat(T, 1)[None]
    canonical = random_field(T * h * w, seed=0)
    field = DeformableGaussianField(canonical, dmu, torch.tensor([1.0, 0, 0, 0]).expand(T, T * h * w, 4), dmu * 0)
    exact = motion_metrics(field, grid, scene, min_displacement=0.01)
    assert exact["motion_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert exact["motion_epe"] == pytest.approx(0.0, abs=1e-5)
    assert exact["motion_predicted"] == pytest.approx(exact["motion_true"], rel=1e-5) and exact["motion_true"] > 0
    still = motion_metrics(dataclasses.replace(field, dmu=dmu * 0), grid, scene, min_displacement=0.01)
    assert still["motion_cosine"] == 0.0 and still["motion_epe"] == pytest.approx(still["motion_true"])
    flipped = dmu.reshape(T, T, h, w, 3).flip(3).reshape(T, -1, 3)  # each cell given its mirror column's motion
    wrong = motion_metrics(dataclasses.replace(field, dmu=flipped), grid, scene, min_displacement=0.01)
    assert wrong["motion_cosine"] < 0.0 and wrong["motion_epe"] > 0.05
    no_tracks = dataclasses.replace(scene, track_xyz=None, track_visible=None)
    assert motion_metrics(field, grid, no_tracks, min_displacement=0.01) == {}
