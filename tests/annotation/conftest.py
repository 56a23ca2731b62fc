"""Small toy4d settings shared by the annotation pipeline tests."""

from __future__ import annotations

import json

import pytest

SMALL_TOY4D = {
    "reader.num_scenes": 4,
    "reader.num_frames": 12,
    "reader.size": 48,
    "clips.frames_per_clip": 6,
    "clips.stride": 6,
    "shard_max_samples": 3,
}


def cli_overrides(overrides: dict) -> list[str]:
    """``--set key=value`` arguments for the annotation CLI."""

    def text(value) -> str:
        return value if isinstance(value, str) else json.dumps(value)  # None -> null, True -> true (YAML)

    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={text(value)}")]


@pytest.fixture
def small_toy4d() -> dict:
    return dict(SMALL_TOY4D)
