"""Model configs from YAML (``configs/model/paper.yaml``, ``configs/tiny/model.yaml``): video DiT, LDRM, text."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from d4s.models.ldrm import LDRMConfig
from d4s.models.video_dit import VideoDiTConfig
from d4s.utils.config import from_dict, read_yaml_mapping


@dataclass
class ModelConfig:
    """The three model sections of a config file; ``text`` holds ``TextEncoder`` arguments."""

    video_dit: VideoDiTConfig = field(default_factory=VideoDiTConfig)
    ldrm: LDRMConfig = field(default_factory=LDRMConfig)
    text: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelConfig:
        """Read a model YAML; ``ValueError`` names the file and the key for unknown sections, keys or bad values."""
        return cls.from_dict(read_yaml_mapping(path), str(path))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "model config") -> ModelConfig:
        """Build from plain values (a YAML file's, or ``asdict`` of a config as checkpoints store it)."""
        return from_dict(cls, values, source)
