"""The fast demo end to end (CI's integration test of everything together): annotate a small toy4d, train the
generator (stage 0) and the three tiny stages with hand-off, generate, evaluate, summarise; then the learning checks
hold at this scale, every promised file is there, and a second run resumes without redoing any phase."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from d4s.demo.plan import FAST, STAGES
from d4s.demo.run import JOURNAL

REPO = Path(__file__).resolve().parents[2]
PHASES = ("data", "stage0", "stage1", "stage2", "stage3", "baseline", "generate", "eval_trained", "eval_untrained")


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    command = [sys.executable, "-m", "d4s.demo", "--fast", "--out", str(out), "--check"]
    result = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


def test_fast_demo_learns_at_its_scale(fast_demo):
    out, stdout = fast_demo
    summary = json.loads((out / "summary.json").read_text())
    checks = summary["checks"]
    assert len(checks) == 6 and all(check["passed"] for check in checks), checks
    trained, untrained = summary["metrics"]["trained/generated"], summary["metrics"]["untrained/generated"]
    limits = FAST.checks
    for k in (1, 2):  # the generator predicts change: every later latent frame beats frame 0 held still
        assert trained[f"latent_psnr_{k}"] - trained[f"still_latent_psnr_{k}"] >= limits.latent_margin
        assert trained[f"latent_psnr_{k}"] > untrained[f"latent_psnr_{k}"] + 5.0  # and an untrained DiT samples noise
    assert trained["latent_psnr_0"] > trained["latent_psnr_1"]  # the condition frame comes back best
    assert trained["psnr"] >= limits.psnr and trained["depth_corr"] >= limits.depth_corr
    assert trained["motion_predicted"] > 0.005  # the deformation head moves the dynamic clips' Gaussians (metres)
    assert trained["motion_cosine"] >= limits.motion_cosine  # in the true directions, from the first frame alone
    video = summary["metrics"]["trained/video"]
    assert trained["psnr_t0"] >= video["psnr_t0"] - limits.first_frame_gap
    assert summary["metrics"]["untrained/video"]["motion_predicted"] == 0.0  # an untrained head does not move
    assert summary["dynamic_scenes"] >= 1
    assert "The demo's summary:" in stdout


def test_fast_demo_writes_everything_it_lists(fast_demo):
    out, _ = fast_demo
    summary = json.loads((out / "summary.json").read_text())
    for path in summary["files"].values():
        assert Path(path).exists(), path
    for picture in ("contact_sheet.png", "loss_curves.png"):
        with Image.open(out / picture) as image:
            assert image.size[0] > 300 and image.size[1] > 300
    text = (out / "SUMMARY.md").read_text()
    assert "| **trained, generated from frame 0** |" in text and "![contact sheet](contact_sheet.png)" in text
    assert "## The generator alone (before the LDRM)" in text
    scene = next((out / "generated").glob("*/scene.npz")).parent
    for name in ("rgb.mp4", "depth.npy", "novel_spiral.mp4", "novel_bullet_time.mp4", "cameras.json"):
        assert (scene / name).is_file(), name
    assert len(list((scene / "ply").glob("*.ply"))) == 9
    for name in ("trained", "untrained"):
        report = json.loads((out / "eval" / name / "report.json").read_text())
        assert report["latents"] and report["reconstruction"] and report["overall"]
    for stage in STAGES:
        config = (out / "configs" / f"stage{stage}.yaml").read_text()
        assert f"max_steps: {FAST.steps[stage]}" in config
    assert set(json.loads((out / JOURNAL).read_text())["phases"]) == set(PHASES)


def test_fast_demo_resumes_without_redoing_a_phase(fast_demo):
    out, _ = fast_demo
    checkpoint = out / "stage3" / "checkpoints" / "last.ckpt"
    stamp = checkpoint.stat().st_mtime_ns
    result = subprocess.run(
        [sys.executable, "-m", "d4s.demo", "--fast", "--out", str(out)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for phase in PHASES:
        assert f"[demo] {phase}: done earlier" in result.stdout
    assert checkpoint.stat().st_mtime_ns == stamp  # only the summary is written again


def test_demo_refuses_a_run_folder_of_the_other_size(fast_demo):
    out, _ = fast_demo
    result = subprocess.run(
        [sys.executable, "-m", "d4s.demo", "--out", str(out)], check=False, cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "'fast' demo" in result.stderr and "--restart" in result.stderr
