"""Nothing else changes when the backbone changes: the tiny Wan2.2-TI2V twin (``configs/tiny/model_wan.yaml``) trains
the video DiT alone (stage 0) and everything jointly (stage 3, the DiT's one-step estimate feeding the LDRM), hands
off through a checkpoint, and ``python -m d4s.generate`` makes a scene from it, on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from d4s import generate
from d4s.stages import DynamicFinetune, VideoPretrain
from d4s.utils.cli import run_cli
from tests.stages.conftest import RANDOM_LPIPS, tiny_data, tiny_trainer
from tests.test_generate import write_photo

ROOT = Path(__file__).resolve().parents[2]
WAN_TINY = str(ROOT / "configs/tiny/model_wan.yaml")


def trained_copy(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_the_tiny_wan_twin_trains_and_generates(shards, tmp_path):
    torch.manual_seed(0)
    stage0 = VideoPretrain(WAN_TINY, lpips=RANDOM_LPIPS, optimizer={"lr": 1e-3, "warmup_steps": 1})
    before = trained_copy(stage0)
    trainer = tiny_trainer(tmp_path / "stage0", max_steps=2)
    trainer.fit(stage0, tiny_data(shards, "any", size=32))
    assert trainer.global_step == 2
    changed = [k for k, v in trained_copy(stage0).items() if k.startswith("video_dit.transformer.blocks.")]
    assert any(not torch.equal(before[k], stage0.state_dict()[k]) for k in changed)
    trainer.save_checkpoint(tmp_path / "stage0.ckpt")

    recipe = {"dit": "full", "ldrm_input": "one_step", "num_target_views": 2}
    stage3 = DynamicFinetune(
        WAN_TINY,
        lpips=RANDOM_LPIPS,
        recipe=recipe,
        optimizer={"lr": 1e-3, "warmup_steps": 1},
        init_from=str(tmp_path / "stage0.ckpt"),
    )
    trainer = tiny_trainer(tmp_path / "stage3", max_steps=2)
    trainer.fit(stage3, tiny_data(shards, "dynamic", size=32))
    assert trainer.global_step == 2 and stage3.nonfinite_total == 0
    checkpoint = tmp_path / "stage3.ckpt"
    trainer.save_checkpoint(checkpoint)

    image = write_photo(tmp_path / "photo.jpg")
    out = tmp_path / "scene"
    args = ["--ckpt", str(checkpoint), "--image", str(image), "--trajectory", "orbit", "--out", str(out)]
    fast = ["--frames", "5", "--resolution", "32", "--steps", "3", "--device", "cpu", "--fps", "4", "--no-ply"]
    assert run_cli(generate.main, args + fast) == 0
    assert (out / "rgb.mp4").is_file()
    with np.load(out / "scene.npz") as scene:
        means = scene["means"]
    assert means.shape == (5 * 16 * 16, 3) and np.isfinite(means).all()  # one Gaussian per 2 x 2 pixels per frame
