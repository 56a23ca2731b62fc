"""Shard writing with kill-and-resume, and the shard index.

One annotation process (a *rank*) writes its clips, in a fixed order, into tar shards of bounded size:
``<out>/<split>/<dataset>-r<rank>-<number>.tar``. A shard is written under a temporary name and renamed when it
is complete; then the rank's journal (``<out>/_progress/<dataset>-r<rank>-of-<world>.json``) records the shard and
the position of the next clip. A rerun after a kill deletes any temporary shard and restarts from the journal's
position, so it writes the same shards again, with nothing lost or duplicated.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from d4s.data.schema import SCHEMA_VERSION, is_dynamic
from d4s.utils.fileio import write_json

PROGRESS_DIR = "_progress"
INDEX_NAME = "index.json"


@dataclass
class Journal:
    """A rank's progress: finished shards, the next clip position, and per-reason counts of what was skipped.

    ``run_hash`` identifies the settings and this rank's scene list; a resumed run must match it.
    ``position`` is ``[work item, clip within it]`` of the next clip to process. ``skipped`` lists one entry per
    rejected or failed clip or scene: ``{"what", "file", "reason"}``.
    """

    run_hash: str
    position: list[int] = field(default_factory=lambda: [0, 0])
    shards: list[dict[str, Any]] = field(default_factory=list)
    written: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    done: bool = False

    @classmethod
    def load(cls, path: Path, run_hash: str) -> Journal:
        """The journal at ``path``, or a fresh one; refuses to resume a run made with another configuration."""
        if not path.exists():
            return cls(run_hash=run_hash)
        journal = cls(**json.loads(path.read_text()))
        if journal.run_hash != run_hash:
            raise ValueError(
                f"{path}: this output directory was written with a different configuration or scene list; use a "
                "new --out or delete it to start over"
            )
        return journal

    def save(self, path: Path) -> None:
        write_json(path, asdict(self), sort_keys=True)


class ShardWriter:
    """Appends encoded samples to the current shard of a split; closes it at ``max_samples`` or ``max_bytes``.

    ``on_close(shard_info)`` is called after a shard has been renamed into place, so the caller can journal it.
    """

    def __init__(self, out: Path, dataset: str, rank: int, max_samples: int, max_bytes: int, first_number: int):
        self.out, self.dataset, self.rank = out, dataset, rank
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.number = first_number
        self._tar: tarfile.TarFile | None = None
        self._split: str | None = None
        self._samples = 0
        self._dynamic = 0
        self._path: Path | None = None

    def _final_path(self, split: str) -> Path:
        return self.out / split / f"{self.dataset}-r{self.rank:03d}-{self.number:06d}.tar"

    def _open(self, split: str) -> None:
        final = self._final_path(split)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._path = final.with_name(f".{final.name}.tmp")
        self._tar = tarfile.open(self._path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - open across writes
        self._split, self._samples, self._dynamic = split, 0, 0

    def write(self, split: str, sample: dict[str, Any]) -> dict[str, Any] | None:
        """Add one sample (``__key__`` and member bytes); returns the closed shard's info if this filled one."""
        if self._tar is not None and self._split != split:
            raise RuntimeError("ShardWriter: close the shard of one split before writing another")
        if self._tar is None:
            self._open(split)
        key = sample["__key__"]
        for member in sorted(name for name in sample if not name.startswith("__")):
            data = sample[member]
            info = tarfile.TarInfo(f"{key}.{member}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed mtime: reruns give identical bytes
            self._tar.addfile(info, io.BytesIO(data))
        self._samples += 1
        self._dynamic += is_dynamic(sample)
        if self._samples >= self.max_samples or self._tar.fileobj.tell() >= self.max_bytes:
            return self.close()
        return None

    def close(self) -> dict[str, Any] | None:
        """Finish the open shard (if any): flush, fsync, rename into place; returns its index entry."""
        if self._tar is None:
            return None
        self._tar.close()
        with open(self._path, "rb") as handle:
            os.fsync(handle.fileno())
        final = self._final_path(self._split)
        os.replace(self._path, final)
        entry = {
            "path": str(final.relative_to(self.out)),
            "split": self._split,
            "samples": self._samples,
            "dynamic": self._dynamic,
            "bytes": final.stat().st_size,
        }
        self._tar, self._path, self.number = None, None, self.number + 1
        return entry


def remove_partial_shards(out: Path, dataset: str, rank: int) -> int:
    """Delete temporary shards a killed run of this rank left behind; returns how many."""
    removed = 0
    for path in out.glob(f"*/.{dataset}-r{rank:03d}-*.tar.tmp"):
        path.unlink()
        removed += 1
    return removed


def journal_dataset(out: Path) -> str:
    """The dataset whose rank journals are in ``out`` (there must be exactly one)."""
    names = (re.fullmatch(r"(.+)-r\d+-of-\d+\.json", path.name) for path in (out / PROGRESS_DIR).glob("*.json"))
    datasets = {match.group(1) for match in names if match}
    if len(datasets) != 1:
        raise ValueError(
            f"{out / PROGRESS_DIR}: expected the journals of one dataset, found {sorted(datasets) or 'none'}"
        )
    return datasets.pop()


def write_index(out: Path, dataset: str) -> dict[str, Any]:
    """Rebuild ``<out>/index.json`` from every finished rank's journal: shards and sample counts per split.

    Each shard entry holds ``path`` (relative to ``out``), ``samples``, ``dynamic`` (how many of them are dynamic,
    :func:`d4s.data.schema.is_dynamic`) and ``bytes``; loaders plan balanced epochs from these counts.

    Ranks finishing together serialise on a lock file, so the last writer always sees every finished journal.
    """
    lock_path = out / PROGRESS_DIR / "index.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _write_index_locked(out, dataset)


def _write_index_locked(out: Path, dataset: str) -> dict[str, Any]:
    splits: dict[str, dict[str, Any]] = {}
    ranks = []
    for path in sorted((out / PROGRESS_DIR).glob(f"{dataset}-r*-of-*.json")):
        journal = json.loads(path.read_text())
        ranks.append({"journal": path.name, "done": journal["done"]})
        if not journal["done"]:
            continue
        for shard in journal["shards"]:
            split = splits.setdefault(shard["split"], {"samples": 0, "dynamic": 0, "shards": []})
            split["samples"] += shard["samples"]
            split["dynamic"] += shard["dynamic"]
            split["shards"].append({k: shard[k] for k in ("path", "samples", "dynamic", "bytes")})
    for split in splits.values():
        split["shards"].sort(key=lambda shard: shard["path"])
    index = {"dataset": dataset, "schema_version": SCHEMA_VERSION, "splits": splits, "ranks": ranks}
    write_json(out / INDEX_NAME, index, sort_keys=True)
    return index
