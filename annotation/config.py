"""Annotation settings: one YAML file per dataset in ``configs/annotate/``, read into checked dataclasses by the
shared loader (:mod:`d4s.utils.config`): unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from annotation.quality import QualityThresholds
from d4s.utils.config import apply_overrides, from_dict, read_yaml_mapping

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs" / "annotate"


def _at_least(section: Any, names: tuple[str, ...], low: int) -> None:
    for name in names:
        value = getattr(section, name)
        if isinstance(value, (int, float)) and value < low:
            raise ValueError(f"{name}: must be >= {low}, got {value}")


@dataclass
class EstimatorSpec:
    """An estimator by registry name (``gt``, ``vda``, ``megasam``, ``unidepth``) and its options."""

    name: str = "gt"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AlignmentConfig:
    """Algorithm 1 settings (see ``annotation/align.py``).

    ``oracle``: the metric reference: ``gt`` (the dataset's depth), ``megasam`` (MegaSaM depth made metric by
    ``metric_reference``) or ``tracks`` (sparse depth from the dataset's 3D tracks). ``space``: ``auto`` uses
    the depth estimator's own space (disparity for relative Video Depth Anything).
    """

    oracle: Literal["gt", "megasam", "tracks"] = "gt"
    space: Literal["auto", "depth", "disparity"] = "auto"
    robust: Literal["none", "ransac", "irls"] = "none"
    masks: Literal["superpixels", "grid"] = "superpixels"
    num_segments: int = 256
    cell: int = 16
    min_oracle_pixels: int = 1
    min_oracle_fraction: float | None = None  # None: 0.5 for dense oracles, 0 for sparse track depth
    per_frame: bool = False
    seed: int = 0

    def __post_init__(self):
        _at_least(self, ("num_segments", "cell", "min_oracle_pixels"), 1)
        if self.min_oracle_fraction is not None and not 0 <= self.min_oracle_fraction <= 1:
            raise ValueError(f"alignment.min_oracle_fraction: must be in [0, 1], got {self.min_oracle_fraction}")


@dataclass
class ClipWindow:
    """How scenes are cut into clips: ``frames_per_clip`` frames ``frame_step`` apart, a new clip every
    ``stride`` source frames; ``max_short_side`` downsizes frames (and K, depth, masks) when set."""

    frames_per_clip: int = 49
    frame_step: int = 1
    stride: int = 49
    max_short_side: int | None = None

    def __post_init__(self):
        _at_least(self, ("frames_per_clip", "frame_step", "stride"), 1)
        if self.max_short_side is not None:
            _at_least(self, ("max_short_side",), 16)


@dataclass
class AnnotateConfig:
    """Everything one annotation run needs besides the input root and output directory."""

    dataset: str
    reader: dict[str, Any] = field(default_factory=dict)
    clips: ClipWindow = field(default_factory=ClipWindow)
    depth: EstimatorSpec = field(default_factory=EstimatorSpec)
    poses: EstimatorSpec = field(default_factory=EstimatorSpec)
    megasam: EstimatorSpec | None = None
    metric_reference: EstimatorSpec | None = None
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    masks: Literal["gt", "flow", "none"] = "gt"
    tracks: Literal["gt", "flow", "none"] = "gt"
    query_stride: int = 8
    flow_preset: Literal["ultrafast", "fast", "medium"] = "medium"
    reprojection_filter: bool = True
    quality: QualityThresholds = field(default_factory=QualityThresholds)
    shard_max_samples: int = 64
    shard_max_bytes: int = 256 * 2**20
    max_consecutive_errors: int = 20  # unexpected (non-input, non-QC) errors in a row that stop the run

    def __post_init__(self):
        _at_least(self, ("query_stride", "shard_max_samples", "shard_max_bytes", "max_consecutive_errors"), 1)
        if "flow" in (self.masks, self.tracks) and self.clips.frames_per_clip < 2:
            raise ValueError("clips.frames_per_clip: flow-based masks or tracks need at least 2 frames per clip")

    def digest(self) -> str:
        """A short hash of the settings that shape the output (a resumed run must use the same)."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def load_config(
    dataset: str, path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> AnnotateConfig:
    """Read ``path`` (default ``configs/annotate/<dataset>.yaml``), apply top-level ``overrides``, check it."""
    path = Path(path) if path is not None else CONFIG_DIR / f"{dataset}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no annotation config; write one like those in {CONFIG_DIR}")
    values = read_yaml_mapping(path)
    values.setdefault("dataset", dataset)
    if values["dataset"] != dataset:
        raise ValueError(f"{path}: is for dataset {values['dataset']!r}, not {dataset!r}")
    return from_dict(AnnotateConfig, apply_overrides(values, overrides), str(path))
