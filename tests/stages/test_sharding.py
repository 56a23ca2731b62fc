"""The sharded strategy (``d4s.stages.sharding.ShardedStrategy``, FSDP2) in real ``python -m d4s.fit`` runs of 2 CPU
processes with gloo, on the tiny stage 3 with the whole DiT training (``recipe.dit: full``, rendering losses reaching
it through the one-step estimate, as in ``configs/stage3.yaml``):

- its losses equal DDP's on the same data, step by step, within 1e-5 relative: both start from the same weights and
  average the same gradients, in a different order of float additions (measured: 1.8e-7 at most over the 4 steps of both ranks);
- a checkpoint it writes is one file, the same as DDP's, and resuming from it continues exactly as the run that was
  not interrupted;
- ``init_from`` loads a previous stage's weights into the shards: the gathered weights equal the file's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.data.conftest import toy4d_shards  # noqa: F401  (the session's shards)
from tests.stages.recording import trained_weight_sum

ROOT = Path(__file__).resolve().parents[2]
SHARDED = "d4s.stages.sharding.ShardedStrategy"
TRAINED = ("video_dit.transformer.", "video_dit.plucker.", "ldrm.")  # what recipe.dit: full trains in stage 3


def fit(index: Path, out: Path, strategy: str, steps: int, *extra: str) -> list[dict]:
    """A 2-process tiny stage-3 run into ``out``; returns each rank's record (tests/stages/recording.py)."""
    strategy_flag = f"--trainer.strategy.class_path={strategy}" if "." in strategy else f"--trainer.strategy={strategy}"
    command = [
        sys.executable,
        "-m",
        "d4s.fit",
        "--config",
        "configs/tiny/stage3.yaml",
        "--model.init_args.init_from=null",
        "--model.init_args.recipe.dit=full",
        "--model.init_args.recipe.ldrm_input=one_step",
        "--model.init_args.recipe.images_every_n_steps=0",
        strategy_flag,
        "--trainer.devices=2",
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
        (
            "--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {save_last: "
            "true, every_n_train_steps: 2, save_top_k: -1}}, {class_path: tests.stages.recording.RecordSteps, "
            f"init_args: {{folder: {out / 'record'}}}}}]"
        ),
        f"--data.train.sources=[{{name: toy4d, index: {index}}}]",
        f"--data.val.sources=[{{name: toy4d, index: {index}, split: val}}]",
        "--data.num_workers=0",
        "--data.persistent_workers=false",
        "--data.batch_size=1",
        "--data.clip.height=32",
        "--data.clip.width=32",
        "--data.clip.num_frames=5",
        "--data.clip.num_tracks=64",
        *extra,
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / "record" / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.fixture(scope="module")
def runs(toy4d_shards, tmp_path_factory):  # noqa: F811
    index = toy4d_shards / "index.json"
    root = tmp_path_factory.mktemp("sharding")
    return {
        "ddp": fit(index, root / "ddp", "ddp", 4),
        "sharded": fit(index, root / "sharded", SHARDED, 4),
        "root": root,
        "index": index,
    }


def test_sharded_losses_equal_ddp_losses(runs):
    for ddp, sharded in zip(runs["ddp"], runs["sharded"]):
        assert len(sharded["losses"]) == 4
        assert ddp["weight_sum"] == pytest.approx(sharded["weight_sum"], rel=1e-12)  # the same start
        assert sharded["losses"] == pytest.approx(ddp["losses"], rel=1e-5)
    assert runs["ddp"][0]["losses"] != runs["ddp"][1]["losses"]  # each rank trains on its own clips


def test_a_sharded_checkpoint_is_one_file_and_resumes_exactly(runs):
    root = runs["root"]
    step2 = next((root / "sharded").rglob("*step=2.ckpt"))
    checkpoint = torch.load(step2, map_location="cpu", weights_only=True)
    assert step2.is_file() and checkpoint["global_step"] == 2
    assert checkpoint["optimizer_states"][0]["state"]  # AdamW's moments, gathered whole
    resumed = fit(runs["index"], root / "resumed", SHARDED, 4, f"--ckpt_path={step2}")
    for whole, continued in zip(runs["sharded"], resumed):
        assert continued["step"] == 4
        assert continued["losses"] == pytest.approx(whole["losses"][2:], rel=1e-6)


def test_init_from_loads_a_ddp_checkpoint_into_the_shards(runs):
    root = runs["root"]
    last = next((root / "ddp").rglob("last.ckpt"))
    started = fit(runs["index"], root / "init", SHARDED, 1, f"--model.init_args.init_from={last}")
    expected = trained_weight_sum(last, TRAINED)
    assert [rank["weight_sum"] for rank in started] == pytest.approx([expected, expected], rel=1e-12)
