"""The demo end to end, in two tiers.

- ``smoke`` (``make test``): the fast demo's data at a third of its scenes and a few steps per stage, run through
  every phase: annotate, train the generator (stage 0) and the three stages with hand-off, generate, evaluate,
  summarise. Every promised file is there and a second run resumes without redoing a phase. Nothing learns at this
  size, so the learning checks are not asserted.
- ``slow`` (``make test-slow``, which CI also runs): the fast demo itself (``python -m d4s.demo --fast --check``,
  about 7 minutes), whose learning checks must hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from d4s.demo.plan import FAST, STAGES
from d4s.demo.run import JOURNAL, run_demo

REPO = Path(__file__).resolve().parents[2]
PHASES = ("data", "stage0", "stage1", "stage2", "stage3", "baseline", "generate", "eval_trained", "eval_untrained")
#: 20 scenes (16 train, 2 val, 2 test, one of each dynamic), a few steps per stage: every phase runs (about 2 minutes)
SMOKE_STEPS = (8, 4, 2, 4)


def smoke_plan(out: Path):
    annotate = tuple("reader.num_scenes=20" if o.startswith("reader.num_scenes=") else o for o in FAST.annotate)
    return dataclasses.replace(
        FAST, name="smoke", out=out, annotate=annotate, steps=SMOKE_STEPS, checkpoint_every=SMOKE_STEPS
    )


def run_in_repo(plan) -> str:
    """``run_demo(plan)`` from the repository root (where it reads ``configs/``); returns what it printed. The global
    RNG state is restored afterwards so later tests do not depend on this one."""
    printed = io.BytesIO()  # with a byte buffer underneath: the demo streams its subprocesses' output as bytes
    text = io.TextIOWrapper(printed, encoding="utf-8", write_through=True)
    with torch.random.fork_rng(), contextlib.chdir(REPO), contextlib.redirect_stdout(text):
        run_demo(plan)
    text.flush()
    return printed.getvalue().decode()


@pytest.fixture(scope="module")
def smoke_demo(tmp_path_factory):
    plan = smoke_plan(tmp_path_factory.mktemp("demo") / "run")
    return plan, run_in_repo(plan)


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    command = [sys.executable, "-m", "d4s.demo", "--fast", "--out", str(out), "--check"]
    result = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


@pytest.mark.slow
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


def test_demo_writes_everything_it_lists(smoke_demo):
    plan, printed = smoke_demo
    out = plan.out
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["checks"]) == 6  # computed (nothing is learned at this size, so not asserted)
    assert summary["dynamic_scenes"] == 1  # the smoke data's two held-out clips: one static, one dynamic
    for path in summary["files"].values():
        assert Path(path).exists(), path
    assert str(out / "SUMMARY.md") in printed
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
        assert report["latents"] and report["reconstruction"] and report["orbit"]
        assert not report["trajectories"]  # at 64 px no pose registers: the demo leaves the five trajectories out
    for stage in STAGES:
        config = (out / "configs" / f"stage{stage}.yaml").read_text()
        assert f"max_steps: {SMOKE_STEPS[stage]}" in config
    assert set(json.loads((out / JOURNAL).read_text())["phases"]) == set(PHASES)


def test_demo_resumes_without_redoing_a_phase(smoke_demo):
    plan, _ = smoke_demo
    checkpoint = plan.last_checkpoint(3)
    stamp = checkpoint.stat().st_mtime_ns
    printed = run_in_repo(plan)
    for phase in PHASES:
        assert f"[demo] {phase}: done earlier" in printed
    assert checkpoint.stat().st_mtime_ns == stamp  # only the summary is written again


def test_demo_refuses_a_run_folder_of_the_other_size(smoke_demo):
    plan, _ = smoke_demo
    result = subprocess.run(
        [sys.executable, "-m", "d4s.demo", "--fast", "--out", str(plan.out)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "'smoke' demo" in result.stderr and "--restart" in result.stderr
