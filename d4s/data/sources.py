"""Where shards come from: brace patterns, lists, shard-list files, annotation indexes; local, ``pipe:`` or fsspec URLs.

A :class:`ShardSource` names one dataset's shards for one split. :func:`resolve_source` turns it into
:class:`ShardInfo` s (URL, and the sample counts when an index gives them); :func:`open_url` opens any URL:
local paths and ``file://`` directly, ``pipe:<command>`` through webdataset (the command's stdout is the tar),
everything else (``s3://``, ``gs://``, ``https://``, ``memory://``, ...) through fsspec, so object storage works
without code changes once the protocol's fsspec package (``s3fs``, ``gcsfs``, ...) is installed.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import urlparse
from urllib.request import url2pathname

import fsspec
from webdataset.gopen import gopen_pipe
from webdataset.shardlists import expand_urls

Motion = Literal["any", "static", "dynamic"]  # which clips a split keeps


@dataclass
class ShardSource:
    """One dataset's shards for one split.

    Give exactly one of:

    - ``index``: an ``index.json`` written by ``python -m annotation`` (path or URL); its ``split`` is used and shard
      paths are relative to it. The index holds sample counts, so epochs can be balanced across ranks.
    - ``shards``: a brace pattern (``"re10k/train-{000000..000099}.tar"``), a list of them, or a ``.txt`` file
      listing one shard per line (relative lines are relative to the file). Counts are unknown unless
      ``samples_per_shard`` gives an upper bound.

    ``split`` is the index's split to read; by default the one the source is listed under in a
    :class:`~d4s.data.datamodule.SplitConfig` (so a validation source reads ``val``), ``train`` elsewhere.
    ``weight`` is the source's share of samples when epochs are resampled (the paper mixes 9 datasets).
    """

    name: str = ""
    index: str | None = None
    shards: str | list[str] | None = None
    split: str | None = None
    weight: float = 1.0
    samples_per_shard: int | None = None

    def __post_init__(self) -> None:
        if (self.index is None) == (self.shards is None):
            raise ValueError(f"source {self.name!r}: give exactly one of 'index' and 'shards'")
        if not self.weight > 0:
            raise ValueError(f"source {self.name!r}: weight must be positive, got {self.weight}")
        if self.samples_per_shard is not None and self.samples_per_shard < 1:
            raise ValueError(f"source {self.name!r}: samples_per_shard must be >= 1, got {self.samples_per_shard}")


@dataclass(frozen=True)
class ShardInfo:
    """One shard: its URL and, when known, how many samples it holds and how many of those are dynamic."""

    url: str
    samples: int | None = None
    dynamic: int | None = None

    def count(self, motion: Motion) -> int | None:
        """Samples that pass the ``motion`` filter: exact when the index counted them, else an upper bound."""
        if self.samples is None or motion == "any" or self.dynamic is None:
            return self.samples
        return self.dynamic if motion == "dynamic" else self.samples - self.dynamic


def is_local(url: str) -> bool:
    return urlparse(url).scheme in ("", "file")


def _local_path(url: str) -> Path:
    parsed = urlparse(url)
    return Path(url2pathname(parsed.path)) if parsed.scheme == "file" else Path(url)


def open_url(url: str) -> BinaryIO:
    """Open a shard or index for binary reading (see the module docstring for the supported URLs)."""
    if url.startswith("pipe:"):
        return gopen_pipe(url)
    if is_local(url):
        return open(_local_path(url), "rb")  # the caller closes it
    filesystem, path = fsspec.core.url_to_fs(url)
    return filesystem.open(path, "rb")


def _join(base: str, relative: str) -> str:
    """``relative`` resolved against the directory of ``base`` (a local path or a URL)."""
    if urlparse(relative).scheme or relative.startswith("/"):
        return relative
    if is_local(base):
        return str(_local_path(base).parent / relative)
    return posixpath.join(posixpath.dirname(base), relative)


def _read_text(url: str) -> str:
    with open_url(url) as handle:
        return handle.read().decode()


def _from_index(source: ShardSource) -> list[ShardInfo]:
    try:
        index = json.loads(_read_text(source.index))
    except (OSError, ValueError) as error:
        hint = ""
        if isinstance(error, FileNotFoundError):
            hint = "; annotation writes it: python -m annotation --dataset <name> --out <dir> (or make annotate)"
        raise ValueError(f"source {source.name!r}: cannot read the index {source.index} ({error}){hint}") from error
    splits, split = index.get("splits", {}), source.split or "train"
    if split not in splits:
        raise ValueError(
            f"source {source.name!r}: the index {source.index} has no split {split!r} (it has {sorted(splits)})"
        )
    return [
        ShardInfo(_join(source.index, shard["path"]), int(shard["samples"]), shard.get("dynamic"))
        for shard in splits[split]["shards"]
    ]


def _from_patterns(source: ShardSource) -> list[str]:
    patterns = [source.shards] if isinstance(source.shards, str) else list(source.shards)
    urls = []
    for pattern in patterns:
        if pattern.endswith(".txt"):
            lines = (line.strip() for line in _read_text(pattern).splitlines())
            urls.extend(_join(pattern, line) for line in lines if line and not line.startswith("#"))
        else:
            urls.extend(expand_urls(pattern))
    return urls


def resolve_source(source: ShardSource) -> list[ShardInfo]:
    """The shards of ``source``.

    Raises ``ValueError`` naming the source when it has no shards, ``FileNotFoundError`` when local ones are missing.
    """
    if source.index is not None:
        shards = _from_index(source)
    else:
        shards = [ShardInfo(url, source.samples_per_shard) for url in _from_patterns(source)]
    if not shards:
        raise ValueError(f"source {source.name!r}: no shards")
    missing = [s.url for s in shards if is_local(s.url) and not _local_path(s.url).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(
            f"source {source.name!r}: missing shards {missing[:3]}{more}; restore them, or annotate into a new folder"
        )
    return shards
