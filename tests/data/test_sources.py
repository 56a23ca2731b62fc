"""Shard sources: annotation indexes, brace patterns, lists, shard-list files, pipe: and fsspec URLs."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import fsspec
import pytest

from d4s.data.shards import ClipDataset
from d4s.data.sources import ShardSource, resolve_source
from tests.data.conftest import small_clip, toy4d_source


def keys_of(shards) -> list[str]:
    dataset = ClipDataset([shards], [1.0], small_clip(), shuffle=False, random_clips=False)
    return sorted(clip.key for clip in dataset)


def test_index_gives_urls_and_counts(toy4d_shards, toy4d_index):
    shards = resolve_source(toy4d_source(toy4d_shards))
    split = toy4d_index["splits"]["train"]
    assert [s.samples for s in shards] == [s["samples"] for s in split["shards"]]
    assert [s.dynamic for s in shards] == [s["dynamic"] for s in split["shards"]]
    assert sum(s.samples for s in shards) == split["samples"] == 16
    assert all(s.url.startswith(str(toy4d_shards)) for s in shards)


def test_patterns_lists_and_shard_list_files_name_the_same_shards(toy4d_shards, tmp_path):
    from_index = [s.url for s in resolve_source(toy4d_source(toy4d_shards))]
    pattern = str(toy4d_shards / "train" / "toy4d-r000-{000000..000005}.tar")
    assert [s.url for s in resolve_source(ShardSource(shards=pattern))] == from_index
    assert [s.url for s in resolve_source(ShardSource(shards=from_index))] == from_index
    listing = toy4d_shards / "train" / "shards.txt"
    listing.write_text("# train shards\n" + "\n".join(url.rsplit("/", 1)[1] for url in from_index) + "\n\n")
    resolved = resolve_source(ShardSource(shards=str(listing), samples_per_shard=3))
    assert [s.url for s in resolved] == from_index and {s.samples for s in resolved} == {3}


def test_a_shard_the_index_lists_but_the_disk_lacks_stops_the_run_before_it_starts(toy4d_shards, tmp_path):
    copy = tmp_path / "toy4d"
    shutil.copytree(toy4d_shards, copy)
    gone = Path(resolve_source(toy4d_source(copy))[1].url)
    gone.unlink()
    with pytest.raises(FileNotFoundError, match=rf"missing shards \['{gone}'\]; restore them, or annotate into a new"):
        resolve_source(toy4d_source(copy))


def test_bad_sources_are_named(toy4d_shards):
    with pytest.raises(FileNotFoundError, match="missing shards .*nope-000001.tar"):
        resolve_source(ShardSource(name="x", shards=str(toy4d_shards / "nope-{000000..000001}.tar")))
    with pytest.raises(ValueError, match="no split 'dev'.*'test', 'train', 'val'"):
        resolve_source(toy4d_source(toy4d_shards, split="dev"))
    with pytest.raises(ValueError, match="cannot read the index"):
        resolve_source(ShardSource(name="x", index=str(toy4d_shards / "missing.json")))
    with pytest.raises(ValueError, match="exactly one of 'index' and 'shards'"):
        ShardSource(name="x")
    with pytest.raises(ValueError, match="weight must be positive"):
        ShardSource(name="x", shards="a.tar", weight=0)


def test_pipe_urls_stream_through_a_command(toy4d_shards):
    local = resolve_source(toy4d_source(toy4d_shards, split="val"))
    piped = [replace(s, url=f"pipe:cat {s.url}") for s in local]
    assert keys_of(piped) == keys_of(local) and len(keys_of(local)) == 2


def test_object_storage_through_fsspec(toy4d_shards, toy4d_index):
    """An index and its shards in an fsspec filesystem (memory:// here, s3:// or gs:// in a cluster)."""
    memory = fsspec.filesystem("memory")
    for shard in toy4d_index["splits"]["val"]["shards"]:
        memory.pipe(f"/bucket/toy4d/{shard['path']}", (toy4d_shards / shard["path"]).read_bytes())
    memory.pipe("/bucket/toy4d/index.json", json.dumps(toy4d_index).encode())
    try:
        remote = resolve_source(ShardSource(index="memory://bucket/toy4d/index.json", split="val"))
        assert all(s.url.startswith("memory://bucket/toy4d/val/") for s in remote)
        assert keys_of(remote) == keys_of(resolve_source(toy4d_source(toy4d_shards, split="val")))
    finally:
        memory.rm("/bucket", recursive=True)
