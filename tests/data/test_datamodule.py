"""ClipDataModule: YAML configs, the Lightning hooks, and a real two-process DDP epoch."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from d4s.data.batch import Batch
from d4s.data.clips import ClipConfig
from d4s.data.datamodule import ClipDataModule, SplitConfig
from tests.data.conftest import toy4d_source

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "path",
    sorted((REPO / "configs").glob("**/data*.yaml")) + sorted((REPO / "configs" / "data").glob("*.yaml")),
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_every_data_config_parses(path):
    data = ClipDataModule.from_yaml(path)
    assert (data.clip.num_frames - 1) % data.clip.temporal_compression == 0
    assert "train" in data.splits and all(source.weight > 0 for source in data.splits["train"].sources)


def test_paper_stages_select_static_then_dynamic_data():
    stages = {n: ClipDataModule.from_yaml(REPO / "configs" / "data" / f"stage{n}.yaml") for n in (1, 2, 3)}
    assert [stages[n].clip.height for n in (1, 2, 3)] == [256, 512, 512]  # paper Sec. 3.4
    assert [stages[n].splits["train"].motion for n in (1, 2, 3)] == ["static", "static", "dynamic"]
    assert {s.name for s in stages[3].splits["train"].sources} == {
        "pointodyssey",
        "dynamic_replica",
        "spring",
        "vkitti2",
        "stereo4d",
    }


ANNOTATED = {yaml.safe_load(p.read_text())["dataset"] for p in (REPO / "configs" / "annotate").glob("*.yaml")}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_paper_stage_data_reads_the_folders_make_annotate_writes(stage, toy4d_shards, tmp_path, monkeypatch):
    """Every source of a stage reads ``data/<dataset>/index.json``, the folder ``make annotate DATASET=<dataset>``
    writes (the Makefile's ``OUT``); on fixtures laid out that way (toy4d's shards in each dataset's folder) every
    split of the stage yields clips."""
    assert "OUT ?= data/$(DATASET)" in (REPO / "Makefile").read_text()
    path = REPO / "configs" / "data" / f"stage{stage}.yaml"
    config = yaml.safe_load(path.read_text())
    for split in ("train", "val"):
        for source in config[split]["sources"]:
            assert source["name"] in ANNOTATED, source  # a dataset annotation knows
            assert source["index"] == f"data/{source['name']}/index.json", source
            folder = tmp_path / "data" / source["name"]
            if not folder.exists():  # toy4d's shards as this dataset's, its train shards also as val (which has no
                shutil.copytree(toy4d_shards, folder)  # dynamic clip in this fixture, and stage 3 reads dynamic ones)
                index = json.loads((folder / "index.json").read_text())
                index["dataset"], index["splits"]["val"] = source["name"], index["splits"]["train"]
                (folder / "index.json").write_text(json.dumps(index))
    monkeypatch.chdir(tmp_path)
    small = {"num_frames": 5, "frame_step": 1, "max_frame_step": 2, "height": 32, "width": 32, "num_tracks": 8}
    data = ClipDataModule.from_yaml(path, clip=small, num_workers=0)
    for split in ("train", "val"):
        sample = next(iter(data.build_dataset(split, rank=0, world_size=1)))
        assert sample.video.shape[0] == 5


def test_yaml_overrides_and_bad_values_are_reported():
    tiny = REPO / "configs" / "tiny" / "data.yaml"
    assert ClipDataModule.from_yaml(tiny, batch_size=5).batch_size == 5
    with pytest.raises(Exception, match="divisible by the VAE"):
        ClipDataModule.from_yaml(tiny, clip={"num_frames": 10})
    with pytest.raises(Exception, match="batch_sizes"):
        ClipDataModule.from_yaml(tiny, batch_sizes=5)
    with pytest.raises(ValueError, match="motion"):
        SplitConfig(sources=[], motion="moving")


def tiny_datamodule(shards: Path, **kwargs) -> ClipDataModule:
    return ClipDataModule(
        clip=ClipConfig(num_frames=5, max_frame_step=2, height=32, width=40, num_tracks=16),
        train=SplitConfig(sources=[toy4d_source(shards)]),
        val=SplitConfig(sources=[toy4d_source(shards, split="val")]),
        **{"batch_size": 2, "num_workers": 2} | kwargs,
    )


class RecordingModule(L.LightningModule):
    """Checks what reaches ``training_step`` and writes the keys it saw, per rank, to ``out``."""

    def __init__(self, out: str):
        super().__init__()
        self.out = out
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[dict] = []

    def training_step(self, batch: Batch, batch_idx: int):
        assert isinstance(batch, Batch) and batch.video.dtype == torch.float32
        assert batch.plucker is not None and batch.plucker.shape[2] == 6
        self.seen.append({"keys": batch.keys, "padding": batch.is_padding.tolist(), "epoch": self.current_epoch})
        return (self.weight * batch.video.mean()) ** 2

    def validation_step(self, batch: Batch, batch_idx: int):
        assert batch.plucker is not None

    def on_train_end(self) -> None:
        Path(self.out, f"rank{self.global_rank}.json").write_text(json.dumps(self.seen))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(**kwargs) -> L.Trainer:
    defaults = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return L.Trainer(**(defaults | kwargs))


def test_trainer_gets_prepared_batches_and_new_orders_each_epoch(toy4d_shards, tmp_path):
    data = tiny_datamodule(toy4d_shards)
    trainer(max_epochs=2, num_sanity_val_steps=1).fit(RecordingModule(str(tmp_path)), datamodule=data)
    seen = json.loads((tmp_path / "rank0.json").read_text())
    epochs = [[key for step in seen if step["epoch"] == e for key in step["keys"]] for e in (0, 1)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(epochs[0]) == 16 and epochs[0] != epochs[1]
    assert data.skipped == Counter()


def test_ddp_two_ranks_two_workers_see_every_sample_once(toy4d_shards, tmp_path):
    """A real DDP run (2 CPU processes, gloo), 2 workers per rank: one epoch sees each clip once, in equal steps."""
    data = tiny_datamodule(toy4d_shards, batch_size=3)
    trainer(max_epochs=1, devices=2, strategy="ddp_spawn", num_sanity_val_steps=0, limit_val_batches=0).fit(
        RecordingModule(str(tmp_path)), datamodule=data
    )
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    keys = Counter(k for rank in ranks for step in rank for k, pad in zip(step["keys"], step["padding"]) if not pad)
    assert len(keys) == 16 and set(keys.values()) == {1}
