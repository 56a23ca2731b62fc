"""``ClipDataModule``: the LightningDataModule that streams annotated clips as :class:`~d4s.data.batch.Batch` es.

Configured from YAML (the ``data:`` section of a stage config, or a file of its own, see ``configs/data/``)::

    clip: {num_frames: 49, height: 256, width: 256, num_tracks: 1024}
    train:
      sources:
        - {name: re10k, index: data/realestate10k/index.json, weight: 3.0}
        - {name: tartanair, shards: "s3://bucket/tartanair/train-{000000..000399}.tar", samples_per_shard: 64}
      motion: static          # stage 1 and 2: static clips only; stage 3: dynamic
      resample: true
      samples_per_epoch: 100000
    val:
      sources: [{name: re10k, index: data/realestate10k/index.json, split: val}]
    batch_size: 1
    num_workers: 8
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader

from d4s.data.batch import Batch, collate_clips
from d4s.data.clips import ClipConfig
from d4s.data.shards import ClipDataset
from d4s.data.sources import Motion, ShardSource, resolve_source
from d4s.utils.checks import check_choice

SPLITS = ("train", "val", "test")


@dataclass
class SplitConfig:
    """The data of one split.

    ``sources``: the datasets (:class:`~d4s.data.sources.ShardSource`). ``motion``: ``any``, ``static`` or
    ``dynamic``. ``resample`` / ``samples_per_epoch``: resampled epochs of a fixed length (all ranks together),
    mixing sources by weight. ``shuffle`` and ``random_clips`` default to true for training and false otherwise
    (fixed clips: first frames, centre crop). ``shuffle_buffer``: raw samples held per worker for shuffling.
    """

    sources: list[ShardSource] = field(default_factory=list)
    motion: Motion = "any"
    resample: bool = False
    samples_per_epoch: int | None = None
    shuffle: bool | None = None
    random_clips: bool | None = None
    shuffle_buffer: int = 32

    def __post_init__(self) -> None:
        check_choice(self.motion, "motion", Motion)
        if self.resample and not self.samples_per_epoch:
            raise ValueError("samples_per_epoch: resampled epochs need a length (clips per epoch, all ranks together)")
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer: must be >= 0, got {self.shuffle_buffer}")


class ClipLoader(DataLoader):
    """A DataLoader that tells its :class:`ClipDataset` the epoch before each pass.

    ``epoch_fn`` gives the epoch (the DataModule passes the trainer's); without it the loader counts its passes.
    ``skip_fn`` gives the number of batches to drop at the start of the coming pass: a run resumed mid-epoch has
    already trained on them (the epoch's stream is deterministic, so dropping them continues it exactly).
    """

    def __init__(
        self,
        dataset: ClipDataset,
        epoch_fn: Callable[[], int] | None = None,
        skip_fn: Callable[[], int] | None = None,
        **kwargs: Any,
    ):
        if kwargs.get("num_workers", 0) != dataset.num_workers:  # each worker is a stream the dataset planned for
            raise ValueError(
                f"ClipLoader: num_workers {kwargs.get('num_workers', 0)} differs from the dataset's {dataset.num_workers}"
            )
        super().__init__(dataset, **kwargs)
        self.epoch_fn, self.skip_fn = epoch_fn, skip_fn
        self._passes = 0

    def _epoch(self) -> int:
        return self.epoch_fn() if self.epoch_fn is not None else self._passes

    def __iter__(self):
        self.dataset.set_epoch(self._epoch())
        self._passes += 1
        batches = super().__iter__()
        for _ in range(self.skip_fn() if self.skip_fn is not None else 0):
            next(batches, None)
        return batches

    def __len__(self) -> int:
        """Batches in the coming pass (fewer when samples are skipped on a single rank; ``TypeError`` when the
        shards' sample counts are unknown)."""
        self.dataset.set_epoch(self._epoch())
        return self.dataset.num_batches()


class ClipDataModule(L.LightningDataModule):
    """Streams annotated clips for training, validation and testing (see the module docstring for the YAML).

    Args:
        clip: the clip geometry (frames, step, resolution, tracks), shared by every split.
        train, val, test: the splits (``None``: no such split).
        batch_size: clips per batch and rank.
        num_workers: DataLoader workers per rank (each one a stream of its own).
        seed: base seed of every random choice (shard order, shuffling, clip sampling).
        pin_memory: pin batches in host memory (default: when CUDA is available).
        prefetch_factor, persistent_workers: passed to the DataLoader.
        cache_mb: MiB of decoded samples each worker keeps for the training split
            (:class:`~d4s.data.shards.DecodedCache`; 0: none). For small datasets read many times over (the tiny CPU
            stages); with persistent workers the cache outlives the epochs.
    """

    def __init__(
        self,
        clip: ClipConfig = ClipConfig(),  # noqa: B008 - frozen, so one shared default is safe
        train: SplitConfig | None = None,
        val: SplitConfig | None = None,
        test: SplitConfig | None = None,
        batch_size: int = 1,
        num_workers: int = 4,
        seed: int = 0,
        pin_memory: bool | None = None,
        prefetch_factor: int = 2,
        persistent_workers: bool = False,
        cache_mb: float = 0.0,
    ):
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        self.clip = clip
        self.splits = {name: config for name, config in zip(SPLITS, (train, val, test)) if config is not None}
        for name, config in self.splits.items():
            if not config.sources:
                raise ValueError(f"{name}.sources: give at least one source")
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.pin_memory, self.prefetch_factor, self.persistent_workers = pin_memory, prefetch_factor, persistent_workers
        self.cache_mb = cache_mb
        self.datasets: dict[str, ClipDataset] = {}
        self.skipped: Counter = Counter()

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> ClipDataModule:
        """Build from a YAML file of this class's arguments (as in ``configs/data/``), checked against their types;
        ``overrides`` replace top-level arguments (``batch_size=2``)."""
        from jsonargparse import ArgumentParser

        values = yaml.safe_load(Path(path).read_text()) or {}
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "data")
        config = parser.parse_object({"data": values | overrides})
        return parser.instantiate(config).data

    def build_dataset(self, split: str, rank: int | None = None, world_size: int | None = None) -> ClipDataset:
        """The :class:`ClipDataset` of ``split`` (on ``rank`` of ``world_size``: default the trainer's, or the env)."""
        if split not in self.splits:
            raise ValueError(f"split {split!r} is not configured (configured: {sorted(self.splits)})")
        config = self.splits[split]
        training = split == "train"
        dataset = ClipDataset(  # a source without a split reads the one it is listed under
            sources=[resolve_source(dataclasses.replace(s, split=s.split or split)) for s in config.sources],
            weights=[source.weight for source in config.sources],
            clip=self.clip,
            motion=config.motion,
            resample=config.resample,
            samples_per_epoch=config.samples_per_epoch,
            shuffle=training if config.shuffle is None else config.shuffle,
            shuffle_buffer=config.shuffle_buffer,
            random_clips=training if config.random_clips is None else config.random_clips,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            seed=self.seed,
            cache_mb=self.cache_mb if training else 0.0,
        )
        if rank is None and self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        if rank is not None:
            dataset.set_distributed(rank, world_size)
        return dataset

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of the splits ``stage`` needs (all when ``None``), on the trainer's rank."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, SPLITS)
        for split in self.splits.keys() & set(needed):
            if split not in self.datasets:
                self.datasets[split] = self.build_dataset(split)
            elif self.trainer is not None:  # built before the trainer came: take its rank now
                self.datasets[split].set_distributed(self.trainer.global_rank, self.trainer.world_size)

    def build_loader(self, split: str) -> ClipLoader:
        """The DataLoader of ``split`` (what ``train_dataloader`` and friends return)."""
        if split not in self.datasets:
            self.datasets[split] = self.build_dataset(split)
        training = split == "train"
        return ClipLoader(
            self.datasets[split],
            epoch_fn=(lambda: self.trainer.current_epoch) if training and self.trainer is not None else None,
            skip_fn=self._batches_already_trained if training and self.trainer is not None else None,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=functools.partial(collate_clips, num_tracks=self.clip.num_tracks),
            pin_memory=torch.cuda.is_available() if self.pin_memory is None else self.pin_memory,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> ClipLoader:
        return self.build_loader("train")

    def val_dataloader(self) -> ClipLoader:
        return self.build_loader("val")

    def test_dataloader(self) -> ClipLoader:
        return self.build_loader("test")

    def _batches_already_trained(self) -> int:
        """Batches of the current epoch that a run resumed mid-epoch (``--ckpt_path``) trained on before it stopped:
        Lightning restores that count and continues its batch index from there, but restarts the loader."""
        loop = self.trainer.fit_loop.epoch_loop  # Lightning 2.6 internals (pinned)
        return loop.batch_progress.current.ready if loop.restarting else 0

    def on_before_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Count the samples the workers skipped (``self.skipped``, by reason)."""
        self.skipped.update(batch.skipped)
        return batch

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Float video and Plücker maps, computed on the training device."""
        return batch.prepare()

    def describe(self) -> str:
        """One line per split: sources, shard and clip counts, epoch mode."""
        lines = []
        for split, config in self.splits.items():
            dataset = self.datasets.get(split) or self.build_dataset(split)
            try:
                length = f"{dataset.num_clips()} clips per rank"
            except TypeError:
                length = "length unknown"
            mode = f"resampled to {config.samples_per_epoch}" if config.resample else "finite"
            names = ", ".join(f"{s.name or '?'} x{s.weight:g}" for s in config.sources)
            lines.append(f"{split}: {names}; {len(dataset.shards)} shards; {mode}; {length}; motion {config.motion}")
        return "\n".join(lines)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": dict(self.skipped)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = Counter(state_dict.get("skipped", {}))
