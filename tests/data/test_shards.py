"""The streaming pipeline: splitting across ranks and workers, resampling, motion selection, corrupt data, seeds."""

from __future__ import annotations

import io
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from d4s.data import shards as shards_module
from d4s.data.batch import collate_clips
from d4s.data.datamodule import ClipLoader
from d4s.data.schema import DYNAMIC_MIN_FRACTION, decode_dynamic_mask
from d4s.data.shards import ClipDataset, balanced_split
from d4s.data.sources import ShardInfo, resolve_source
from tests.data.conftest import small_clip, toy4d_source
from tests.data.test_clips import raw_samples


def make_dataset(sources, rank=0, world_size=1, num_workers=0, batch_size=3, **kwargs) -> ClipDataset:
    kwargs = {"shuffle": True, "random_clips": True, "seed": 7} | kwargs
    dataset = ClipDataset(
        sources, [1.0] * len(sources), small_clip(), batch_size=batch_size, num_workers=num_workers, **kwargs
    )
    dataset.set_distributed(rank, world_size)
    return dataset


def run_epoch(dataset: ClipDataset, batch_size: int = 3, epoch: int = 0) -> list:
    loader = ClipLoader(
        dataset,
        epoch_fn=lambda: epoch,
        batch_size=batch_size,
        num_workers=dataset.num_workers,
        collate_fn=collate_clips,
    )
    batches = list(loader)
    assert len(batches) == len(loader), "the loader's length is exact"
    return batches


@pytest.mark.parametrize("counts", [[3, 3, 3, 3, 3, 1], [16], [5, 1], [7, 0, 2, 9, 9, 1, 4]])
@pytest.mark.parametrize("streams", [1, 4, 6])
def test_balanced_split_reads_every_sample_once_and_balances(counts, streams):
    assignment, loads = balanced_split(counts, streams)
    read = Counter()
    for parts in assignment:
        for part in parts:
            positions = range(part.part, counts[int(part.url)], part.parts)
            read.update((int(part.url), p) for p in positions)
    assert read == Counter((shard, p) for shard, count in enumerate(counts) for p in range(count))
    assert loads == [sum(len(range(p.part, counts[int(p.url)], p.parts)) for p in parts) for parts in assignment]
    largest_part = max(
        max(len(range(p.part, counts[int(p.url)], p.parts)) for p in parts) for parts in assignment if parts
    )
    assert max(loads) - min(loads) <= largest_part


@pytest.mark.parametrize("split", ["train", "val"])
def test_two_ranks_of_two_workers_see_every_sample_once_in_equal_steps(toy4d_shards, toy4d_index, split):
    """WORLD_SIZE=2, 2 workers each, finite epoch: no sample lost or repeated, and no DDP hang."""
    shards = resolve_source(toy4d_source(toy4d_shards, split=split))
    seen, steps = Counter(), []
    for rank in range(2):
        batches = run_epoch(make_dataset([shards], rank=rank, world_size=2, num_workers=2))
        steps.append(len(batches))
        for batch in batches:
            assert all(len(batch) == 3 for batch in batches), "padding fills whole batches"
            seen.update(key for key, padding in zip(batch.keys, batch.is_padding.tolist()) if not padding)
    assert steps[0] == steps[1]
    assert set(seen.values()) == {1} and len(seen) == toy4d_index["splits"][split]["samples"]


def test_rank_and_world_come_from_the_environment(toy4d_shards, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    dataset = ClipDataset([resolve_source(toy4d_source(toy4d_shards))], [1.0], small_clip())
    assert (dataset.rank, dataset.world_size) == (1, 3)


def test_single_rank_reads_each_sample_once_without_padding(toy4d_shards):
    shards = resolve_source(toy4d_source(toy4d_shards))
    batches = run_epoch(make_dataset([shards], num_workers=2))
    keys = [key for batch in batches for key in batch.keys]
    assert len(keys) == len(set(keys)) == 16 and not any(b.is_padding.any() for b in batches)


def test_resampled_epochs_mix_sources_by_weight(toy4d_shards):
    train, test = (resolve_source(toy4d_source(toy4d_shards, split=split)) for split in ("train", "test"))
    test_keys = {clip.key for clip in make_dataset([test], shuffle=False)}
    per_rank = []
    for rank in range(2):
        dataset = ClipDataset(
            [train, test], [3.0, 1.0], small_clip(), resample=True, samples_per_epoch=160, batch_size=4, num_workers=2
        )
        dataset.set_distributed(rank, 2)
        batches = run_epoch(dataset, batch_size=4)
        per_rank.append([key for batch in batches for key in batch.keys])
    assert len(per_rank[0]) == len(per_rank[1]) == 80
    share = np.mean([key not in test_keys for key in per_rank[0] + per_rank[1]])
    assert 0.65 < share < 0.85  # 3:1 -> 0.75 (binomial sd 0.034 at 160 draws)


@pytest.mark.parametrize("motion", ["static", "dynamic"])
def test_motion_selection_matches_the_masks_and_the_index(toy4d_shards, toy4d_index, motion):
    expected = {
        sample["__key__"]
        for sample in raw_samples(toy4d_shards)
        if (decode_dynamic_mask(sample).mean() >= DYNAMIC_MIN_FRACTION) == (motion == "dynamic")
    }
    assert 0 < len(expected) < 16
    dynamic = toy4d_index["splits"]["train"]["dynamic"]
    assert len(expected) == (dynamic if motion == "dynamic" else 16 - dynamic)
    shards = resolve_source(toy4d_source(toy4d_shards))
    clips = list(make_dataset([shards], motion=motion))
    assert {clip.key for clip in clips} == expected and len(clips) == len(expected)
    assert all(clip.is_dynamic == (motion == "dynamic") for clip in clips)
    seen = Counter()
    for rank in range(2):  # the index's dynamic counts balance the ranks exactly
        for batch in run_epoch(make_dataset([shards], rank=rank, world_size=2, num_workers=2, motion=motion)):
            seen.update(k for k, p in zip(batch.keys, batch.is_padding.tolist()) if not p)
    assert set(seen) == expected and set(seen.values()) == {1}


def corrupted_copy(source, target, corrupt: dict[int, tuple[str, bytes]]) -> None:
    """Copy a tar shard, replacing member ``name`` of sample number ``i`` with ``data`` for ``corrupt[i]``."""
    with tarfile.open(source) as original, tarfile.open(target, "w") as copy:
        keys = []
        for member in original.getmembers():
            data = original.extractfile(member).read()
            key, name = member.name.split(".", 1)
            keys.append(key) if key not in keys else None
            number = keys.index(key)
            if number in corrupt and corrupt[number][0] == name:
                data = corrupt[number][1]
            member.size = len(data)
            copy.addfile(member, io.BytesIO(data))


def test_corrupt_samples_are_skipped_counted_and_logged(toy4d_shards, tmp_path, caplog):
    shards = resolve_source(toy4d_source(toy4d_shards))
    broken = tmp_path / "broken.tar"
    corrupted_copy(shards[0].url, broken, {0: ("rgb.mp4", b"not a video"), 2: ("cameras.npz", b"PK\x03\x04 cut")})
    patched = [ShardInfo(str(broken), shards[0].samples, shards[0].dynamic), *shards[1:]]
    seen, skipped, steps = Counter(), Counter(), []
    for rank in range(2):
        batches = run_epoch(make_dataset([patched], rank=rank, world_size=2, num_workers=2))
        steps.append(len(batches))
        for batch in batches:
            skipped.update(batch.skipped)
            seen.update(k for k, p in zip(batch.keys, batch.is_padding.tolist()) if not p)
    assert skipped == {"corrupt": 2} and steps[0] == steps[1]
    assert len(seen) == 14 and set(seen.values()) == {1}
    with caplog.at_level(logging.WARNING, logger="d4s.data.shards"):
        assert len(list(make_dataset([patched[:1]]))) == 1
    assert sum("skipped toy4d__" in record.message for record in caplog.records) == 2
    assert "cannot decode video" in caplog.text and "cameras.npz" in caplog.text


def epoch_totals(dataset_for_rank, world_size: int = 2) -> tuple[Counter, int]:
    """Skip counts and real clips over all ranks of one epoch (padding carries the counts after the last clip)."""
    totals, real = Counter(), 0
    for rank in range(world_size):
        for clip in dataset_for_rank(rank):
            totals.update(clip.skipped)
            real += not clip.is_padding
    return totals, real


def test_a_truncated_shard_keeps_the_samples_before_the_damage(toy4d_shards, tmp_path):
    shards = resolve_source(toy4d_source(toy4d_shards))
    with tarfile.open(shards[0].url) as tar:
        last = tar.getmembers()[-1]  # tracks.npz of the third sample: members go in sorted order
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(Path(shards[0].url).read_bytes()[: last.offset_data + last.size // 2])
    damaged = [ShardInfo(str(truncated), 3), ShardInfo(str(tmp_path / "gone.tar"), 3)]
    totals, real = epoch_totals(lambda rank: make_dataset([damaged], rank=rank, world_size=2))
    assert real == 2  # the sample cut short is dropped, not passed on without its tracks
    assert totals == {"truncated sample": 1, "unreadable shard": 3}  # in clips: every one of the 6 is accounted for


def test_a_failing_pipe_command_skips_the_shard(toy4d_shards):
    shards = resolve_source(toy4d_source(toy4d_shards, split="val"))
    failing = [ShardInfo(f"pipe:cat {shards[0].url}; exit 3", 2), ShardInfo("pipe:cat /nonexistent.tar", 2)]
    totals, real = epoch_totals(lambda rank: make_dataset([failing], rank=rank, world_size=2))
    # the failure may be noticed at any read once the command has exited (how much of the first shard comes through
    # depends on when), but never before the last sample is out of the first shard's tar: that one is held back and
    # dropped; the second shard's 2 clips never come. The run goes on, and each of the 4 clips is delivered or counted
    assert real <= 1 and real + sum(totals.values()) == 4
    assert totals["broken tar"] >= 2 and set(totals) <= {"broken tar", "truncated sample"}


@pytest.mark.parametrize(
    "ending",
    [
        "exit 0",
        "exit 3",  # the failure is seen by the read that meets the end of the data
        "exec 1>&-; sleep 1; exit 3",  # the data ends while the command runs on: the failure is seen at close
    ],
)
def test_the_last_sample_of_a_pipe_waits_for_the_command_status(toy4d_shards, tmp_path, ending):
    samples = raw_samples(toy4d_shards)[:3]
    with wds.TarWriter(str(tmp_path / "three.tar")) as writer:
        for sample in samples:
            writer.write({k: v for k, v in sample.items() if k != "__url__"})
    release = tmp_path / "release"  # the command cannot exit (so its status cannot be seen) before the test says so
    command = f"pipe:cat {tmp_path / 'three.tar'}; while [ ! -e {release} ]; do sleep 0.01; done; {ending}"
    skipped = Counter()
    stream = shards_module.read_shard(command, skipped)
    # a sample is out once the next one is complete, which the third sample's first member shows: the command runs on
    first = next(stream)["__key__"]
    release.touch()
    rest = [sample["__key__"] for sample in stream]
    assert first == samples[0]["__key__"]
    if ending == "exit 0":
        assert rest == [sample["__key__"] for sample in samples[1:]] and not skipped
    else:  # the last sample could be missing members the dead command never wrote: not trusted
        assert rest == [samples[1]["__key__"]] and skipped == {"broken tar": 1, "truncated sample": 1}


def test_corrupt_masks_under_a_motion_filter_are_skipped(toy4d_shards, tmp_path):
    shards = resolve_source(toy4d_source(toy4d_shards))
    masks = raw_samples(toy4d_shards)[0]["masks.npz"]
    flipped = masks[:200] + bytes(b ^ 0xFF for b in masks[200:240]) + masks[240:]
    broken = tmp_path / "broken.tar"
    corrupted_copy(shards[0].url, broken, {0: ("masks.npz", flipped)})
    totals, _ = epoch_totals(
        lambda rank: make_dataset([[ShardInfo(str(broken), 3)]], rank=rank, world_size=2, motion="static")
    )
    assert totals["corrupt"] == 1


def test_parts_split_the_clips_that_pass_the_motion_filter(toy4d_shards, tmp_path):
    """One shard read by several streams: the parts divide the matching clips, so each is seen once."""
    samples = raw_samples(toy4d_shards)
    dynamic = [s for s in samples if decode_dynamic_mask(s).mean() >= DYNAMIC_MIN_FRACTION][:2]
    static = [s for s in samples if not decode_dynamic_mask(s).any()][:2]
    with wds.TarWriter(str(tmp_path / "mixed.tar")) as writer:
        for sample in (dynamic[0], static[0], dynamic[1], static[1]):  # dynamic clips at positions 0 and 2
            writer.write({k: v for k, v in sample.items() if k != "__url__"})
    seen = Counter()
    for rank in range(2):
        for clip in make_dataset(
            [[ShardInfo(str(tmp_path / "mixed.tar"), 4, 2)]], rank=rank, world_size=2, motion="dynamic"
        ):
            seen.update([clip.key] if not clip.is_padding else [])
    assert seen == Counter(s["__key__"] for s in dynamic)


def test_loader_and_dataset_must_agree_on_workers(toy4d_shards):
    dataset = make_dataset([resolve_source(toy4d_source(toy4d_shards))], num_workers=2)
    with pytest.raises(ValueError, match="num_workers 0 differs from the dataset's 2"):
        ClipLoader(dataset, batch_size=2, collate_fn=collate_clips)


def test_resampling_skips_shards_without_matching_clips(toy4d_shards):
    shards = resolve_source(toy4d_source(toy4d_shards))
    static_only = {
        s["__key__"] for s in raw_samples(toy4d_shards) if s["__url__"] in {x.url for x in shards if x.dynamic == 0}
    }
    dataset = make_dataset([shards], motion="dynamic", resample=True, samples_per_epoch=24)
    assert not static_only & {clip.key for clip in dataset}


def test_resampled_clips_that_never_fit_are_an_error(toy4d_shards, monkeypatch):
    monkeypatch.setattr(shards_module, "MAX_UNUSABLE_IN_A_ROW", 5)
    dataset = ClipDataset(
        [resolve_source(toy4d_source(toy4d_shards))],
        [1.0],
        small_clip(num_frames=49),
        resample=True,
        samples_per_epoch=2,
    )
    with pytest.raises(RuntimeError, match="5 clips in a row could not be used.*too short"):
        list(dataset)


def test_too_short_clips_are_skipped_and_counted(toy4d_shards):
    shards = resolve_source(toy4d_source(toy4d_shards, split="val"))

    def dataset(rank):
        too_long = ClipDataset([shards], [1.0], small_clip(num_frames=13, frame_step=1, max_frame_step=None))
        too_long.set_distributed(rank, 2)
        return too_long

    totals, real = epoch_totals(dataset)
    assert real == 0 and totals == {"too short": 2}


def test_same_seed_and_epoch_give_the_same_clips(toy4d_shards):
    shards = resolve_source(toy4d_source(toy4d_shards))

    def epoch_clips(epoch, num_workers):
        return {
            key: (batch.frame_indices[i].tolist(), batch.K[i, 0].tolist())
            for batch in run_epoch(make_dataset([shards], num_workers=num_workers), epoch=epoch)
            for i, key in enumerate(batch.keys)
        }

    first = epoch_clips(0, num_workers=2)
    assert first == epoch_clips(0, num_workers=0)  # a clip's frames and crop do not depend on the worker layout
    assert first != epoch_clips(1, num_workers=2)
    order = [[clip.key for clip in make_dataset([shards])] for _ in range(2)]
    assert order[0] == order[1]


def test_persistent_workers_move_on_to_the_next_epoch(toy4d_shards):
    dataset = make_dataset([resolve_source(toy4d_source(toy4d_shards))], num_workers=2)
    loader = ClipLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_clips, persistent_workers=True)
    epochs = [[key for batch in loader for key in batch.keys] for _ in range(3)]
    assert epochs[0] != epochs[1] != epochs[2] and sorted(epochs[0]) == sorted(epochs[2])
    fresh = make_dataset([resolve_source(toy4d_source(toy4d_shards))], num_workers=2)
    assert [key for batch in run_epoch(fresh, epoch=1) for key in batch.keys] == epochs[1]


def test_a_resampled_source_without_matching_clips_is_an_error(toy4d_shards, tmp_path, monkeypatch):
    monkeypatch.setattr(shards_module, "MAX_EMPTY_DRAWS", 3)
    static = [sample for sample in raw_samples(toy4d_shards) if not decode_dynamic_mask(sample).any()][:2]
    with wds.TarWriter(str(tmp_path / "static.tar")) as writer:
        for sample in static:
            writer.write({k: v for k, v in sample.items() if k != "__url__"})
    dataset = make_dataset(
        [[ShardInfo(str(tmp_path / "static.tar"))]], motion="dynamic", resample=True, samples_per_epoch=4
    )
    with pytest.raises(RuntimeError, match="no readable dynamic clip"):
        list(dataset)


def test_finite_multi_rank_epochs_need_counts(toy4d_shards):
    dataset = ClipDataset([[ShardInfo(s.url) for s in resolve_source(toy4d_source(toy4d_shards))]], [1.0], small_clip())
    with pytest.raises(ValueError, match="need per-shard sample counts"):
        dataset.set_distributed(0, 2)


def test_a_resumed_pass_drops_the_batches_already_trained(toy4d_shards):
    source = resolve_source(toy4d_source(toy4d_shards))
    full = [batch.keys for batch in run_epoch(make_dataset([source], num_workers=2), epoch=1)]
    dataset = make_dataset([source], num_workers=2)
    resumed = ClipLoader(
        dataset, epoch_fn=lambda: 1, skip_fn=lambda: 2, batch_size=3, num_workers=2, collate_fn=collate_clips
    )
    assert [batch.keys for batch in resumed] == full[2:]
    assert len(resumed) == len(full)  # Lightning counts the epoch's batches from its restored index


def test_cached_decoding_gives_the_same_clips_and_stays_within_its_budget(toy4d_shards):
    """A stream with a decoded-sample cache cuts exactly the clips a stream decoding afresh cuts (same seeds), over
    resampled epochs that revisit samples; the cache evicts the least recently used samples past its budget."""
    shards = resolve_source(toy4d_source(toy4d_shards))

    def clips(cache_mb: float) -> tuple[list, ClipDataset]:
        dataset = make_dataset([shards], resample=True, samples_per_epoch=24, cache_mb=cache_mb)
        streamed = []
        for epoch in range(2):
            dataset.set_epoch(epoch)
            streamed += list(dataset)
        return streamed, dataset

    fresh, _ = clips(0.0)
    cached, dataset = clips(1.0)
    assert [c.key for c in cached] == [c.key for c in fresh] and len({c.key for c in fresh}) < len(fresh)
    for a, b in zip(cached, fresh):
        assert np.array_equal(a.video.numpy(), b.video.numpy()) and np.array_equal(a.c2w.numpy(), b.c2w.numpy())
        assert np.array_equal(a.depth.numpy(), b.depth.numpy()) and np.array_equal(a.K.numpy(), b.K.numpy())
    cache = dataset._cache
    assert cache.bytes == sum(entry.nbytes for entry in cache.entries.values()) <= 2**20
    assert 1 <= len(cache.entries) < len({c.key for c in fresh})  # a 1 MiB budget holds only a few 48 px samples


def test_a_negative_cache_budget_is_refused(toy4d_shards):
    with pytest.raises(ValueError, match="cache_mb"):
        make_dataset([resolve_source(toy4d_source(toy4d_shards))], cache_mb=-1)
