"""The progressive scheme learns (Sec. 3.4): tiny stage 1 reconstructs held-out clips, stage 3 learns motion, and
the frozen deformation head of stages 1-2 does not change by a bit."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch

from d4s.data import ClipDataModule
from d4s.data.batch import Batch
from d4s.stages import DynamicFinetune, HiResRefine, StaticPretrain
from tests.stages.conftest import evaluate, tiny_data, tiny_module, tiny_trainer

#: as in configs/tiny: the LDRM learns on the codec's latents; the DiT (stage 0's business) stays frozen
LDRM_ONLY = {"dit": "frozen", "ldrm_input": "clean"}


class RecordTerms(L.Callback):
    """The logged training terms of every step."""

    def __init__(self, *terms: str):
        self.history = {term: [] for term in terms}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        for term, values in self.history.items():
            values.append(float(trainer.callback_metrics[f"train/{term}"]))


def head_state(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.ldrm.deformation_head.state_dict().items()}


def assert_bit_identical(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


@dataclass
class Stage1Run:
    checkpoint: Path
    psnr_before: float
    psnr_after: float
    mse: list[float]
    head_unchanged: bool


@pytest.fixture(scope="module")
def stage1(toy4d_shards, tmp_path_factory) -> Stage1Run:
    root = tmp_path_factory.mktemp("stage1")
    module, data = tiny_module(StaticPretrain, recipe=LDRM_ONLY), tiny_data(toy4d_shards, "static")
    data.setup("validate")
    held_out = list(data.val_dataloader())
    before, psnr_before = head_state(module), evaluate(module, held_out, "psnr")
    record = RecordTerms("mse")
    trainer = tiny_trainer(root, max_steps=240, callbacks=[record])
    trainer.fit(module, data)
    after = head_state(module)
    checkpoint = root / "stage1.ckpt"
    trainer.save_checkpoint(checkpoint)
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    return Stage1Run(checkpoint, psnr_before, evaluate(module, held_out, "psnr"), record.history["mse"], unchanged)


def test_stage1_photometric_loss_falls_and_held_out_psnr_rises(stage1):
    first, last = sum(stage1.mse[:20]) / 20, sum(stage1.mse[-20:]) / 20
    assert last < 0.5 * first, (first, last)
    assert stage1.psnr_after > stage1.psnr_before + 4.0, (stage1.psnr_before, stage1.psnr_after)


def test_stage1_leaves_the_deformation_head_bit_identical(stage1):
    assert stage1.head_unchanged


def only_moving_tracks(batch: Batch) -> Batch:
    """Keep the tracks that move more than 1 cm. toy4d's objects cover a few percent of the image, so most tracks
    sit on the static room and a tiny model needs thousands of steps to tell them apart; on the moving ones the
    motion signal shows within a CPU test's budget."""
    moved = (batch.track_xyz - batch.track_xyz[:, :, :1]).norm(dim=-1).amax(-1) > 0.01
    return dataclasses.replace(batch, track_valid=batch.track_valid & moved)


@pytest.mark.slow  # about a minute on 2 cores: the slow tier (make test-slow)
def test_stage3_after_stage2_learns_motion(stage1, toy4d_shards, tmp_path):
    # stage 2: higher resolution from the stage-1 weights, head still frozen
    refine = tiny_module(HiResRefine, recipe=LDRM_ONLY, init_from=str(stage1.checkpoint))
    before = head_state(refine)
    trainer = tiny_trainer(tmp_path, max_steps=6)
    trainer.fit(refine, tiny_data(toy4d_shards, "static", size=48))
    assert_bit_identical(before, head_state(refine))
    stage2 = tmp_path / "stage2.ckpt"
    trainer.save_checkpoint(stage2)

    # stage 3: dynamic clips, everything trains, motion loss on the tracks
    finetune = tiny_module(DynamicFinetune, lr=1e-2, recipe=LDRM_ONLY, init_from=str(stage2))
    # loaded in-process: with overfit_batches=1 every step is an epoch, and each epoch would start a new worker
    data = tiny_data(toy4d_shards, "dynamic", samples_per_epoch=None, frame_step=2, num_workers=0)
    data.on_after_batch_transfer = lambda batch, index: only_moving_tracks(
        ClipDataModule.on_after_batch_transfer(data, batch, index)
    )
    data.setup("fit")
    fixed = [only_moving_tracks(next(iter(data.train_dataloader())).prepare())]
    finetune.load_init(stage2)
    assert finetune.ldrm.deformation_head.is_identity()
    motion_before = evaluate(finetune, fixed, "motion")
    record = RecordTerms("motion")
    tiny_trainer(tmp_path, max_steps=300, overfit_batches=1, callbacks=[record]).fit(finetune, data)
    motion_after = evaluate(finetune, fixed, "motion")
    assert motion_after < 0.8 * motion_before, (motion_before, motion_after)
    first, last = sum(record.history["motion"][:10]) / 10, sum(record.history["motion"][-10:]) / 10
    assert last < 0.8 * first, (first, last)
    assert not finetune.ldrm.deformation_head.is_identity()
    with torch.no_grad():
        batch = fixed[0]
        frames = finetune.target_frames(len(batch), batch.video.shape[1], None)
        output, _ = finetune.reconstruct(batch, frames, None, train=False)
    assert output.dmu.abs().mean() > 1e-3  # the field moves on dynamic clips
