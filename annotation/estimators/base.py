"""The small interfaces between the pipeline and whatever estimates depth or poses for a clip."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np

from annotation.clip import Clip


@dataclass
class DepthEstimate:
    """A per-frame map ``values [T, H, W]`` float32 at the clip's resolution (0 or non-finite = invalid).

    ``space`` is ``"depth"`` (z-depth) or ``"disparity"`` (inverse depth); ``metric`` says whether it is in
    metres (or 1/metres) already or only up to an unknown affine transform (relative models) or scale.
    """

    values: np.ndarray
    space: Literal["depth", "disparity"]
    metric: bool
    source: str


@dataclass
class PoseEstimate:
    """Cameras for a clip: ``c2w [T,4,4]`` OpenCV camera-to-world, ``K [T,3,3]`` pixels at the clip's resolution.

    ``metric`` says whether translations are in metres; ``depth`` is the estimator's own depth in the same
    scale as the translations (MegaSaM provides one), or ``None``.
    """

    c2w: np.ndarray
    K: np.ndarray
    metric: bool
    source: str
    depth: DepthEstimate | None = None


class DepthEstimator(ABC):
    """Estimates (or ingests) a depth or disparity map for every frame of a clip."""

    name: str

    @abstractmethod
    def estimate(self, clip: Clip) -> DepthEstimate:
        """Raise :class:`annotation.errors.InputError` when its input or saved output is missing or corrupt."""


class PoseEstimator(ABC):
    """Estimates (or ingests) cameras for every frame of a clip."""

    name: str

    @abstractmethod
    def estimate(self, clip: Clip) -> PoseEstimate:
        """Raise :class:`annotation.errors.InputError` when its input or saved output is missing or corrupt."""
