"""Annotation settings: one YAML file per dataset in ``configs/annotate/``, read into checked dataclasses.

Unknown keys and wrong types are errors that name the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from annotation.quality import QualityThresholds

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


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, where)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {value!r}")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and not (
        isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
    ):
        raise TypeError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type, values: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if not isinstance(values, dict):
        raise TypeError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
    return cls(**{key: _convert(value, hints[key], f"{where}.{key}") for key, value in values.items()})


def load_config(
    dataset: str, path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> AnnotateConfig:
    """Read ``path`` (default ``configs/annotate/<dataset>.yaml``), apply top-level ``overrides``, check it."""
    path = Path(path) if path is not None else CONFIG_DIR / f"{dataset}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no annotation config; write one like those in {CONFIG_DIR}")
    values = yaml.safe_load(path.read_text()) or {}
    values.setdefault("dataset", dataset)
    if values["dataset"] != dataset:
        raise ValueError(f"{path}: is for dataset {values['dataset']!r}, not {dataset!r}")
    for key, value in (overrides or {}).items():
        *sections, name = key.split(".")
        target = values
        for section in sections:
            target = target.setdefault(section, {})
            if not isinstance(target, dict):
                raise TypeError(f"--set {key}: {section!r} is not a section")
        target[name] = value
    return from_dict(AnnotateConfig, values, str(path))
