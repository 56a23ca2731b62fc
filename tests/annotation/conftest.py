"""Small toy4d settings shared by the annotation pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


def saved_real_video_outputs(work: Path, key: str, depth: np.ndarray) -> tuple[dict, Path]:
    """Saved estimator outputs for the real-video path of clip ``key`` whose true z-depth is ``depth [T, H, W]``:
    Video Depth Anything's relative disparity (an affine map of the true one) and UniDepth's metric depth, under
    ``work``. Returns the config overrides that point the estimators at them (grid alignment masks, for small
    frames) and the folder where the test writes MegaSaM's output (it needs the loaded clip)."""
    vda, megasam, unidepth = work / "vda", work / "megasam", work / "unidepth"
    vda.mkdir()
    np.savez(vda / f"{key}_depths.npz", depths=(2.0 / depth + 0.3).astype(np.float32))
    (unidepth / key).mkdir(parents=True)
    for t, frame_depth in enumerate(depth):
        np.savez(unidepth / key / f"{t:05d}.npz", depth=frame_depth)
    overrides = {
        "depth.options": {"outputs_dir": str(vda), "metric": False},
        "megasam.options": {"outputs_dir": str(megasam)},
        "metric_reference": {"name": "unidepth", "options": {"outputs_dir": str(unidepth)}},
        "alignment.masks": "grid",
        "alignment.cell": 8,
        "query_stride": 8,
    }
    return overrides, megasam
