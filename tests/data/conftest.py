"""Small toy4d shards, annotated once per test session, for the data pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotation.__main__ import main
from d4s.data.clips import ClipConfig
from d4s.data.sources import ShardSource
from tests.annotation.conftest import cli_overrides

# 10 scenes of 24 frames at 48 px, clips of 12 frames: 16 train clips in shards of at most 3 (uneven counts), 2 val
TOY4D = {
    "reader.num_scenes": 10,
    "reader.num_frames": 24,
    "reader.size": 48,
    "clips.frames_per_clip": 12,
    "clips.stride": 12,
    "shard_max_samples": 3,
}


@pytest.fixture(scope="session")
def toy4d_shards(tmp_path_factory) -> Path:
    """The output directory of ``python -m annotation`` (``index.json``, ``train/``, ``val/``, ``test/``)."""
    out = tmp_path_factory.mktemp("toy4d_shards")
    assert main(["--out", str(out), "--manifest", "none", "--no-progress", *cli_overrides(TOY4D)]) == 0
    return out


@pytest.fixture(scope="session")
def toy4d_index(toy4d_shards) -> dict:
    return json.loads((toy4d_shards / "index.json").read_text())


def toy4d_source(shards: Path, split: str = "train", **kwargs) -> ShardSource:
    return ShardSource(name="toy4d", index=str(shards / "index.json"), split=split, **kwargs)


def small_clip(**kwargs) -> ClipConfig:
    """5 frames cropped to a non-square 32 x 40: every test resizes and crops."""
    return ClipConfig(**{"num_frames": 5, "frame_step": 1, "max_frame_step": 2, "height": 32, "width": 40} | kwargs)
