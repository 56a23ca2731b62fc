"""The GPU suite's CPU mode (``bench/gpu_suite.py --small``) runs every section, so the suite cannot rot; its FLOP
count, DiT pass count and goal verdicts agree with independent computations."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # the bench scripts import each other as top-level modules

import gpu_suite
from models import scene_inputs

from d4s.models import ModelConfig, VideoDiT


def test_small_mode_runs_every_section(tmp_path):
    out = tmp_path / "suite.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_suite.py"), "--small", "--out", str(out)],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "small"
    assert report["parity"] == [{"skipped": "needs CUDA and gsplat's compiled kernels"}]
    scene = report["generation"]
    stages = [scene[k] for k in ("text", "encode", "sampling", "ldrm", "rendering", "writing")]
    assert all(s >= 0 for s in stages) and scene["sampling"] > 0 and scene["total"] >= max(stages)
    assert scene["gaussians"] == 9 * (64 // 2) ** 2  # one Gaussian per 2 x 2 pixels (tiny stride) per frame
    assert report["viewer"]["camera_move_ms"] > 0 and report["viewer"]["size"] == 64
    rows = report["training"]
    assert [(r["stage"], r["gradient_checkpointing"]) for r in rows] == [
        ("StaticPretrain", False),
        ("DynamicFinetune", False),
        ("StaticPretrain", True),
        ("DynamicFinetune", True),
    ]
    assert all("error" not in r and r["samples_per_s"] > 0 for r in rows), rows
    # the passes counted while the scene was generated: Eq. 6 by hand, gamma - 1 = 7.5 (1 - cos(pi ((30 - i) / 30)^5)) / 2,
    # has the unconditional pass where it is >= 1e-3 (Guidance.skip_below)
    guided = sum(7.5 * (1 - math.cos(math.pi * ((30 - i) / 30) ** 5)) / 2 >= 1e-3 for i in range(30))
    assert scene["dit_passes"] == report["flops"]["dit_passes"] == 30 + guided == 49
    assert report["goals"] == []
    assert "generation 9x64²" in result.stdout and "training   DynamicFinetune" in result.stdout


def test_meta_device_flops_match_a_real_forward_with_math_attention():
    """The meta-device count equals a real CPU forward's with attention as explicit matrix products (the fused CPU
    kernel is not counted by the FLOP counter)."""
    config = ModelConfig.from_yaml(REPO / "configs" / "tiny" / "model.yaml")
    torch.manual_seed(0)
    dit = VideoDiT.from_config(config.video_dit).eval()
    _, _, plucker, text = scene_inputs(9, 64, 64, 8, 32, "cpu", torch.float32)
    latents = torch.randn(1, 3, dit.latent_channels, 8, 8)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        dit(latents, torch.randn_like(latents), plucker, text, torch.full((1,), 0.5))
    assert gpu_suite.dit_flops(gpu_suite.SMALL)["dit_forward_tflop"] * 1e12 == pytest.approx(counter.get_total_flops())


def test_peak_fraction_arithmetic_and_device_peaks():
    flops = {"dit_forward_tflop": 200.0}
    result = gpu_suite.achieved_fraction(flops, {"device": "NVIDIA H100 80GB HBM3", "sampling": 20.0, "dit_passes": 49})
    assert result["achieved_tflops"] == pytest.approx(200.0 * 49 / 20.0)
    assert result["fraction_of_peak"] == pytest.approx(200.0 * 49 / 20.0 / 989.0)
    assert result["sampling_seconds_at_peak"] == pytest.approx(200.0 * 49 / 989.0)
    pcie = gpu_suite.achieved_fraction(flops, {"device": "NVIDIA H100 PCIe", "sampling": 20.0, "dit_passes": 49})
    assert pcie["peak_tflops"] == 756.0  # not the SXM figure
    assert (
        gpu_suite.achieved_fraction(flops, {"device": "cpu", "sampling": 20.0, "dit_passes": 49})["peak_tflops"] is None
    )


def test_goals_name_the_gap_and_the_largest_stage():
    scene = {"text": 0.1, "encode": 0.5, "sampling": 12.0, "ldrm": 1.0, "rendering": 2.0, "writing": 1.4}
    scene |= {"total": sum(scene.values()), "peak_gib": 20e9 / 2**30}
    verdicts = {g["goal"]: g for g in gpu_suite.goals(scene, {"camera_move_ms": 1.5, "time_change_ms": 1.9})}
    assert not verdicts["seconds_per_scene"]["met"] and verdicts["seconds_per_scene"]["bottleneck"] == "sampling"
    assert verdicts["seconds_per_scene"]["measured"] == pytest.approx(17.0)
    assert not verdicts["peak_gb"]["met"] and verdicts["peak_gb"]["measured"] == pytest.approx(20.0)
    assert verdicts["ms_per_frame"]["met"] and verdicts["ms_per_frame"]["measured"] == 1.9
