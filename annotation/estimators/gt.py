"""Oracle estimators: the dataset's own depth and cameras, for datasets that have them."""

from __future__ import annotations

import numpy as np

from annotation.clip import Clip
from annotation.estimators.base import DepthEstimate, DepthEstimator, PoseEstimate, PoseEstimator


class GroundTruthDepth(DepthEstimator):
    """The clip's ground-truth z-depth ``[T, H, W]`` (metres when the dataset is metric, 0 = invalid)."""

    name = "gt"

    def estimate(self, clip: Clip) -> DepthEstimate:
        """``clip.depth`` as a depth estimate; ``ValueError`` if the dataset gave the clip no depth."""
        if clip.depth is None:
            raise ValueError(f"gt depth: clip {clip.key} of {clip.dataset} has no depth; choose a depth estimator")
        values = np.asarray(clip.depth, dtype=np.float32)
        values = np.where(np.isfinite(values), values, 0.0)
        return DepthEstimate(values=values, space="depth", metric=clip.metric, source="gt")


class GroundTruthPoses(PoseEstimator):
    """The clip's ground-truth cameras: ``c2w [T, 4, 4]`` OpenCV camera-to-world and ``K [T, 3, 3]`` pixels."""

    name = "gt"

    def estimate(self, clip: Clip) -> PoseEstimate:
        """``clip.c2w`` and ``clip.K`` as a pose estimate; ``ValueError`` if the dataset gave the clip no poses."""
        if clip.c2w is None:
            raise ValueError(f"gt poses: clip {clip.key} of {clip.dataset} has no poses; choose a pose estimator")
        return PoseEstimate(
            c2w=np.asarray(clip.c2w, dtype=np.float32),
            K=np.asarray(clip.K, dtype=np.float32),
            metric=clip.metric,
            source="gt",
        )
