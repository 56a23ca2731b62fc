"""The clip the annotation stages pass along: loaded arrays of one window of a scene, filled in stage by stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from d4s.data.schema import sample_key


@dataclass
class Clip:
    """One window of ``T`` frames of a scene, numpy arrays in the project conventions.

    ``frames [T,H,W,3]`` uint8; ``K [T,3,3]`` pixels; ``c2w [T,4,4]`` OpenCV camera-to-world (``None`` until a
    pose source provides it); ``timestamps [T]`` seconds; ``depth [T,H,W]`` z-depth (0 = invalid);
    ``dynamic_mask [T,H,W]`` bool; ``track_xyz [N,T,3]`` world points with ``track_visible [N,T]``.
    ``metric`` says whether ``c2w`` translations and ``depth`` are in metres. ``provenance`` collects what each
    stage did (sources, alignment, QC scores) for ``meta.json``.
    """

    dataset: str
    scene: str
    frame_indices: list[int]
    fps: float
    frames: np.ndarray
    K: np.ndarray
    timestamps: np.ndarray
    metric: bool
    c2w: np.ndarray | None = None
    depth: np.ndarray | None = None
    dynamic_mask: np.ndarray | None = None
    track_xyz: np.ndarray | None = None
    track_visible: np.ndarray | None = None
    caption: str = ""
    licence: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The clip's webdataset key; estimator outputs for the clip are stored under this name."""
        return sample_key(self.dataset, self.scene, self.frame_indices[0])

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the frames."""
        return self.frames.shape[1], self.frames.shape[2]
