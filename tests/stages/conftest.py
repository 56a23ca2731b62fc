"""Tiny stages on the session's toy4d shards: 5 frames at 32 x 32, random tiny models, CPU, float32."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from d4s.data import ClipDataModule
from d4s.data.clips import ClipConfig
from d4s.data.datamodule import SplitConfig
from d4s.stages import LPIPSConfig, OptimizerConfig, Recipe
from tests.data.conftest import toy4d_shards, toy4d_source  # noqa: F401  (the session's shards)

TINY_MODEL = "configs/tiny/model.yaml"
RANDOM_LPIPS = LPIPSConfig(net="alex", backbone_path=None, random_backbone=True)


def tiny_module(stage, seed: int = 0, lr: float = 3e-3, recipe: dict | None = None, **kwargs):
    """A stage module with the tiny random models (seeded) and a random LPIPS backbone."""
    torch.manual_seed(seed)
    recipe = Recipe(**({"num_target_views": 3, "images_every_n_steps": 0} | (recipe or {})))
    optimizer = OptimizerConfig(lr=lr, warmup_steps=10)
    return stage(TINY_MODEL, lpips=RANDOM_LPIPS, optimizer=optimizer, recipe=recipe, **kwargs)


def tiny_data(
    shards: Path, motion: str, size: int = 32, samples_per_epoch: int | None = 64, frame_step: int = 1, **kwargs
) -> ClipDataModule:
    """Training clips resampled at random frames and crops, or, with ``samples_per_epoch=None``, every matching
    clip once per epoch at fixed frames (a small training set to fit)."""
    clip = ClipConfig(
        num_frames=5, frame_step=frame_step, max_frame_step=max(2, frame_step), height=size, width=size, num_tracks=32
    )
    if samples_per_epoch is None:
        train = SplitConfig(sources=[toy4d_source(shards)], motion=motion, shuffle=False, random_clips=False)
    else:
        train = SplitConfig(
            sources=[toy4d_source(shards)], motion=motion, resample=True, samples_per_epoch=samples_per_epoch
        )
    val = SplitConfig(sources=[toy4d_source(shards, split="val")], motion="any")
    return ClipDataModule(clip=clip, train=train, val=val, **({"batch_size": 2, "num_workers": 1} | kwargs))


def tiny_trainer(root: Path, max_steps: int, **kwargs) -> L.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "precision": "32-true",
        "max_steps": max_steps,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "default_root_dir": str(root),
    }
    return L.Trainer(**(options | kwargs))


@torch.no_grad()
def evaluate(module, loader, term: str) -> float:
    """Mean of a loss term (or ``psnr``) over a loader's batches, in validation mode (clean latents, fixed views)."""
    module.eval()
    values = [module.compute_losses(batch, train=False)[0][term].item() for batch in loader]
    module.train()
    return sum(values) / len(values)


@pytest.fixture
def shards(toy4d_shards):  # noqa: F811
    return toy4d_shards
