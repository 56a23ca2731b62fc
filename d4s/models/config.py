"""Model configs from YAML (``configs/model/paper.yaml``, ``configs/tiny/model.yaml``): video DiT, LDRM, text."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from d4s.models.ldrm import LDRMConfig
from d4s.models.video_dit import VideoDiTConfig


@dataclass
class ModelConfig:
    """The three model sections of a config file; ``text`` holds ``TextEncoder`` arguments."""

    video_dit: VideoDiTConfig
    ldrm: LDRMConfig
    text: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelConfig:
        """Read a model YAML; ``ValueError`` names the file for unknown sections or arguments."""
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from error
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected sections video_dit, ldrm and text, got a {type(values).__name__}")
        return cls.from_dict(values, str(path))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "model config") -> ModelConfig:
        """Build from plain values (a YAML file's, or ``asdict`` of a config as checkpoints store it)."""
        unknown = set(values) - {"video_dit", "ldrm", "text"}
        if unknown:
            raise ValueError(f"{source}: unknown sections {sorted(unknown)} (expected video_dit, ldrm, text)")
        ldrm = dict(values.get("ldrm", {}))
        if "feature_layers" in ldrm:
            ldrm["feature_layers"] = tuple(ldrm["feature_layers"])
        try:
            return cls(VideoDiTConfig(**values.get("video_dit", {})), LDRMConfig(**ldrm), dict(values.get("text", {})))
        except TypeError as error:
            raise ValueError(f"{source}: {error}") from error
