"""The streaming pipeline: shards -> raw samples -> motion filter -> shuffle buffer -> clips, per rank and worker.

Every (rank, DataLoader worker) pair is one *stream*. Two epoch modes:

- **Finite** (``resample=False``, validation and small runs): each sample is read once per epoch. The shard list
  is shuffled with a seed shared by all ranks, then split explicitly into streams: by :func:`balanced_split`
  (count-balanced, from the index's sample counts) when the counts are known, else (one rank only) by
  :func:`split_by_node` and :func:`split_by_worker`. With several ranks every stream then yields the same number
  of samples, topping up with blank clips flagged ``is_padding``, so ranks run the same number of steps and DDP
  never hangs. With fewer shards than streams a shard is read in parts, each by its own stream (each part reads
  the whole tar: give validation splits enough shards, or fewer workers).
- **Resampled** (``resample=True``, multi-node training): each stream draws shards at random (in proportion to
  their matching clips when the index counts them), picks each sample's dataset by the sources' weights, and yields exactly ``samples_per_epoch / (ranks x workers)`` clips (rounded up
  to whole batches).

Seeds: shard order from ``(seed, epoch)``; a stream's shuffle buffer and shard draws from
``(seed, epoch, rank, worker)``; a clip's frames, crop and tracks from ``(seed, epoch, key)`` (``(seed, key)`` for
fixed clips), so the same sample gives the same clip whatever the number of ranks or workers. Corrupt or unusable
samples are skipped with a warning and counted by reason in the next clip's ``skipped``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import zlib
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from d4s.data.clips import ClipConfig, ClipSample, ClipTooShort, DecodedSample, blank_sample, decode_sample, sample_clip
from d4s.data.schema import is_dynamic
from d4s.data.sources import Motion, ShardInfo, open_url
from d4s.utils.checks import check_choice

log = logging.getLogger(__name__)

# a resampled source that yields no sample passing the motion filter in this many shard draws in a row is an error
MAX_EMPTY_DRAWS = 64
# a resampled stream that cannot use this many clips in a row (all too short, or corrupt) is an error, not a hang
MAX_UNUSABLE_IN_A_ROW = 256


@dataclass(frozen=True)
class ShardPart:
    """Part ``part`` of ``parts`` of a shard: the samples at positions ``part, part + parts, ...``.

    Splitting shards into parts lets a split with fewer shards than streams still give every stream work.
    """

    url: str
    part: int = 0
    parts: int = 1
    samples: int | None = None  # the whole shard's, when the index gives it (what a skipped shard counts)


def split_by_node(items: Sequence, rank: int, world_size: int) -> list:
    """The items of rank ``rank``: every ``world_size``-th, starting at ``rank``."""
    return list(items[rank::world_size])


def split_by_worker(items: Sequence, worker: int, num_workers: int) -> list:
    """The items of DataLoader worker ``worker``: every ``num_workers``-th, starting at ``worker``."""
    return list(items[worker::num_workers])


def balanced_split(counts: Sequence[int], num_streams: int) -> tuple[list[list[ShardPart]], list[int]]:
    """Assign shards (given by their sample ``counts``, in the order to read them) to ``num_streams`` streams.

    Largest first to the least-loaded stream (ties: the lower stream), which keeps the largest load within one shard
    of the mean. With fewer shards than streams each shard is read as ``ceil(streams / shards)`` parts.
    Returns each stream's parts (as ``ShardPart(url=str(shard number))``) and its sample load.
    """
    parts_per_shard = math.ceil(num_streams / len(counts)) if len(counts) < num_streams else 1
    parts = [
        (ShardPart(str(shard), part, parts_per_shard), count // parts_per_shard + (part < count % parts_per_shard))
        for shard, count in enumerate(counts)
        for part in range(parts_per_shard)
    ]
    parts.sort(key=lambda item: -item[1])  # stable: equal counts keep the shuffled order
    streams: list[list[ShardPart]] = [[] for _ in range(num_streams)]
    loads = [0] * num_streams
    for part, count in parts:
        stream = loads.index(min(loads))
        streams[stream].append(part)
        loads[stream] += count
    return streams, loads


def distributed_topology() -> tuple[int, int]:
    """``(rank, world_size)`` from ``torch.distributed`` when initialised, else ``RANK`` / ``WORLD_SIZE``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def read_shard(url: str, skipped: Counter, samples: int | None = None) -> Iterator[dict]:
    """Raw samples (``__key__``, ``__url__``, member name -> bytes) of one tar shard of ``samples`` clips (when the
    index says how many).

    Skips are counted in clips. A shard that cannot be opened counts its ``samples`` as ``unreadable shard``. Broken
    tar data, or a ``pipe:`` command that exits with a failure status, keeps the complete samples before the damage;
    the sample being read when it struck is dropped as ``truncated sample``, and the clips the shard held after it
    (``samples`` minus those read) count as ``broken tar``. A pipe's status is known only once its output has ended,
    and a command that dies between two tar members leaves a sample with members missing, so the last sample is held
    back until the stream has closed cleanly: which samples come through does not depend on when the failure was
    noticed. Where the index does not give ``samples``, a failed shard counts one clip (at least that was lost).
    """
    try:
        stream = open_url(url)
    except Exception as error:  # noqa: BLE001 - any opener failure skips the shard, never the run
        skipped["unreadable shard"] += 1 if samples is None else samples
        log.warning("skipped shard %s (%s clips): cannot open (%s)", url, "?" if samples is None else samples, error)
        return

    breaks = 0
    read = 0  # samples read whole: yielded, or held back and then yielded or dropped

    def handler(error: Exception) -> bool:
        nonlocal breaks
        if not breaks:  # webdataset reports one break at each level of its reader: log the shard once
            log.warning("shard %s: broken tar data skipped (%s)", url, error)
        breaks += 1
        return True

    def drop(sample: dict | None) -> None:
        if sample is not None:
            skipped["truncated sample"] += 1
            log.warning("skipped %s from %s: cut short by the broken tar", sample.get("__key__"), url)

    def count_lost() -> None:
        lost = 1 if samples is None else samples - read
        if lost > 0:
            skipped["broken tar"] += lost

    held = None  # the newest complete sample, yielded once the next one arrives or the stream closes cleanly
    try:
        seen_breaks = 0
        for sample in group_by_keys(
            tar_file_expander([{"url": url, "stream": stream}], handler=handler), handler=handler
        ):
            if breaks != seen_breaks:  # the sample being assembled when the tar broke: some members may be missing
                seen_breaks = breaks
                read += 1
                drop(sample)
                continue
            if held is not None:
                yield held
            held = sample
            read += 1
        try:
            stream.close()
        except Exception as error:  # noqa: BLE001 - e.g. a pipe: command's non-zero exit status
            if not breaks:  # the data ended cleanly, then the status said the command failed: the last sample is
                handler(error)  # the one it may have left incomplete
                drop(held)
                count_lost()
                return
        if breaks:
            count_lost()
        if held is not None:
            yield held
    finally:
        with contextlib.suppress(Exception):  # a consumer that stopped early: nothing read is in question now
            stream.close()  # a no-op after the close above


class DecodedCache:
    """Decoded samples (:class:`~d4s.data.clips.DecodedSample`, every video frame included) by shard and key, least
    recently used first out once they hold more than ``max_bytes``: a stream that cuts many clips from a small
    dataset (resampled epochs) decodes each sample once instead of once per clip. One per worker."""

    def __init__(self, max_bytes: int, backend: str):
        self.max_bytes, self.backend = max_bytes, backend
        self.entries: OrderedDict[tuple[str, str], DecodedSample] = OrderedDict()
        self.bytes = 0

    def get(self, sample: dict) -> DecodedSample:
        """The decoded ``sample`` (raises as :func:`~d4s.data.clips.decode_sample` and the video decoder do)."""
        name = (str(sample.get("__url__")), str(sample.get("__key__")))
        if name in self.entries:
            self.entries.move_to_end(name)
            return self.entries[name]
        decoded = decode_sample(sample).decode_frames(self.backend)
        self.entries[name] = decoded
        self.bytes += decoded.nbytes
        while self.bytes > self.max_bytes and len(self.entries) > 1:
            self.bytes -= self.entries.popitem(last=False)[1].nbytes
        return decoded


class ClipDataset(IterableDataset):
    """Streams :class:`ClipSample` s from shards (see the module docstring for epochs, splitting and seeds).

    Args:
        sources: per source, its shards (``d4s.data.sources.resolve_source``).
        weights: per source, its mixing weight (resampled epochs only).
        clip: the clip geometry.
        motion: ``"any"``, ``"static"`` or ``"dynamic"``: which clips to keep (``d4s.data.schema.is_dynamic``).
        resample: resampled epochs of ``samples_per_epoch`` clips (all ranks together) instead of finite ones.
        shuffle: shuffle shard order and samples (shuffle buffer of ``shuffle_buffer`` raw samples).
        random_clips: random frame step, start and crop; else the first frames and a centre crop.
        batch_size: per-rank batch size; padded and resampled stream lengths are whole batches.
        num_workers: the DataLoader's worker count (0 = in the main process).
        seed: base seed.
        cache_mb: keep up to this many MiB of decoded samples per worker (:class:`DecodedCache`; 0: decode every
            clip's frames afresh). For small datasets read many times over, such as the tiny CPU stages.
    """

    def __init__(
        self,
        sources: Sequence[Sequence[ShardInfo]],
        weights: Sequence[float],
        clip: ClipConfig,
        motion: Motion = "any",
        resample: bool = False,
        samples_per_epoch: int | None = None,
        shuffle: bool = True,
        shuffle_buffer: int = 32,
        random_clips: bool = True,
        batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        cache_mb: float = 0.0,
    ):
        check_choice(motion, "motion", Motion)
        if len(sources) != len(weights) or not sources:
            raise ValueError("sources and weights: one weight per source, at least one source")
        if resample and not samples_per_epoch:
            raise ValueError("samples_per_epoch: resampled epochs need a length (clips per epoch, all ranks)")
        self.sources = [list(shards) for shards in sources]
        self.weights = np.asarray(weights, np.float64) / np.sum(weights)
        self.clip, self.motion, self.resample = clip, motion, resample
        self.samples_per_epoch, self.shuffle, self.shuffle_buffer = samples_per_epoch, shuffle, shuffle_buffer
        self.random_clips, self.batch_size, self.num_workers, self.seed = random_clips, batch_size, num_workers, seed
        if cache_mb < 0:
            raise ValueError(f"cache_mb: must be >= 0, got {cache_mb}")
        self.cache_mb = cache_mb
        self._cache: DecodedCache | None = None  # built in the worker that uses it
        self.epoch, self._iterations = 0, 0
        self.shards = [shard for shards in self.sources for shard in shards]
        self.set_distributed(*distributed_topology())

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Use this rank and world size (the DataModule passes the trainer's; the default is the environment's)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if not self.resample and world_size > 1 and any(s.count(self.motion) is None for s in self.shards):
            raise ValueError(
                "finite epochs on several ranks need per-shard sample counts to balance the ranks: read the shards "
                "through an annotation index.json, give samples_per_shard, or set resample: true"
            )
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """Seed the next iteration with ``epoch`` (persistent workers count on from it by themselves)."""
        self.epoch, self._iterations = epoch, 0

    @property
    def streams_per_rank(self) -> int:
        return max(1, self.num_workers)

    def _whole_batches(self, samples: int) -> int:
        return math.ceil(samples / self.batch_size) * self.batch_size

    def stream_quota(self, epoch: int) -> int | None:
        """Clips each stream yields in ``epoch``, or ``None`` when a stream yields whatever its shards hold."""
        streams = self.world_size * self.streams_per_rank
        if self.resample:
            return self._whole_batches(math.ceil(self.samples_per_epoch / streams))
        if self.world_size == 1:
            return None
        return self._whole_batches(max(self._plan(epoch)[1]))

    def _rank_loads(self) -> list[int]:
        """Clips each of this rank's streams yields this epoch; ``TypeError`` when that is unknown."""
        quota = self.stream_quota(self.epoch)
        if quota is not None:
            return [quota] * self.streams_per_rank
        loads = self._plan(self.epoch)[1]
        if loads is None:
            raise TypeError("the epoch length is unknown: the shards' sample counts are not known")
        return loads[self.rank * self.streams_per_rank : (self.rank + 1) * self.streams_per_rank]

    def num_clips(self) -> int:
        """Clips per rank and epoch (fewer when samples are skipped); ``TypeError`` when the counts are unknown."""
        return sum(self._rank_loads())

    def num_batches(self) -> int:
        """Batches per rank and epoch: each worker batches its own stream, so it ends with its own partial batch."""
        return sum(math.ceil(load / self.batch_size) for load in self._rank_loads())

    def _plan(self, epoch: int) -> tuple[list[list[ShardPart]], list[int] | None]:
        """Every stream's shard parts (stream ``rank * workers + worker``) and sample loads in a finite epoch.

        With sample counts the split is :func:`balanced_split` (the same on every rank, from a shard order shared
        by all ranks); without them (one rank only) :func:`split_by_node` and :func:`split_by_worker`, loads unknown.
        """
        order = np.arange(len(self.shards))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        shards = [self.shards[i] for i in order]
        counts = [shard.count(self.motion) for shard in shards]
        workers = self.streams_per_rank
        if any(count is None for count in counts):  # a single rank: set_distributed refuses several
            mine = split_by_node(shards, self.rank, self.world_size)
            streams = [
                [ShardPart(s.url, samples=s.samples) for s in split_by_worker(mine, w, workers)] for w in range(workers)
            ]
            return streams, None
        numbered, loads = balanced_split(counts, self.world_size * workers)
        streams = [
            [ShardPart(shards[int(p.url)].url, p.part, p.parts, shards[int(p.url)].samples) for p in parts]
            for parts in numbered
        ]
        return streams, loads

    def _keep(self, sample: dict, skipped: Counter) -> bool:
        if self.motion == "any":
            return True
        try:
            return is_dynamic(sample) == (self.motion == "dynamic")
        except Exception as error:  # noqa: BLE001 - a corrupt masks.npz skips the sample, never the run
            skipped["corrupt"] += 1
            log.warning("skipped %s from %s: %s", sample.get("__key__"), sample.get("__url__"), error)
            return False

    def _finite_samples(self, parts: list[ShardPart], skipped: Counter) -> Iterator[dict]:
        for part in parts:
            # parts split the samples that pass the filter (the loads count those); only part 0 counts the skips
            counts = skipped if part.part == 0 else Counter()
            kept = (sample for sample in read_shard(part.url, counts, part.samples) if self._keep(sample, counts))
            for position, sample in enumerate(kept):
                if position % part.parts == part.part:
                    yield sample

    def _resampled_samples(self, rng: np.random.Generator, skipped: Counter) -> Iterator[dict]:
        iterators = [self._draw_shards(shards, rng, skipped) for shards in self.sources]
        while True:
            yield next(iterators[rng.choice(len(iterators), p=self.weights)])

    def _draw_shards(self, shards: list[ShardInfo], rng: np.random.Generator, skipped: Counter) -> Iterator[dict]:
        """Samples of shards drawn at random: in proportion to their matching clips when the index counts them (so
        every clip is equally likely and shards without one are never read), else uniformly."""
        counts = [shard.count(self.motion) for shard in shards]
        probabilities = None
        if all(count is not None for count in counts):
            if sum(counts) == 0:
                raise RuntimeError(f"no {self.motion} clip in {len(shards)} shards (from {shards[0].url})")
            probabilities = np.asarray(counts, np.float64) / sum(counts)
        empty_draws = 0
        while True:
            shard = shards[rng.choice(len(shards), p=probabilities)]
            found = False
            for sample in read_shard(shard.url, skipped, shard.samples):
                if self._keep(sample, skipped):
                    found = True
                    yield sample
            empty_draws = 0 if found else empty_draws + 1
            if empty_draws >= MAX_EMPTY_DRAWS:
                raise RuntimeError(
                    f"{MAX_EMPTY_DRAWS} shard draws in a row (last: {shard.url}) gave no readable {self.motion} clip; "
                    "check the source's shards and the split's motion filter"
                )

    def _decoded(self, sample: dict) -> DecodedSample:
        if self._cache is None:
            self._cache = DecodedCache(int(self.cache_mb * 2**20), self.clip.video_backend)
        return self._cache.get(sample)

    def _clip_rng(self, key: str, epoch: int) -> np.random.Generator:
        words = [self.seed, zlib.crc32(key.encode())]
        return np.random.default_rng(words + [epoch] if self.random_clips else words)

    def __iter__(self) -> Iterator[ClipSample]:
        epoch = self.epoch + self._iterations
        self._iterations += 1
        info = get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None and info.num_workers != self.streams_per_rank:
            raise RuntimeError(f"ClipDataset: built for {self.num_workers} workers, runs in {info.num_workers}")
        stream = self.rank * self.streams_per_rank + worker
        stream_seed = [self.seed, epoch, self.rank, worker]
        skipped: Counter = Counter()
        if self.resample:
            raw = self._resampled_samples(np.random.default_rng(stream_seed), skipped)
        else:
            raw = self._finite_samples(self._plan(epoch)[0][stream], skipped)
        if self.shuffle and self.shuffle_buffer > 1:
            raw = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=random.Random(str(stream_seed)))(
                raw
            )
        quota = self.stream_quota(epoch)
        produced = unusable = 0
        reported: Counter = Counter()
        for sample in raw:
            if quota is not None and produced >= quota:
                if not self.resample:
                    log.warning("stream %d: more clips than the index counts, the rest is dropped", stream)
                break
            key = sample.get("__key__", "<unknown>")
            try:
                source = self._decoded(sample) if self.cache_mb else sample
                clip = sample_clip(source, self.clip, self._clip_rng(key, epoch), self.random_clips)
            except Exception as error:  # a corrupt sample of any kind is skipped, never the run
                reason = "too short" if isinstance(error, ClipTooShort) else "corrupt"
                skipped[reason] += 1
                log.warning("skipped %s from %s: %s: %s", key, sample.get("__url__"), reason, error)
                unusable += 1
                if self.resample and unusable >= MAX_UNUSABLE_IN_A_ROW:  # resampling would retry forever
                    raise RuntimeError(
                        f"{unusable} clips in a row could not be used (skipped so far: {dict(skipped)}); check the "
                        "shards and the clip settings (num_frames, frame_step) against the annotated clips"
                    ) from error
                continue
            unusable = 0
            clip.skipped, reported = dict(skipped - reported), skipped.copy()
            produced += 1
            yield clip
        while quota is not None and produced < quota:
            clip = blank_sample(self.clip)
            clip.skipped, reported = dict(skipped - reported), skipped.copy()
            produced += 1
            yield clip
