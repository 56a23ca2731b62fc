"""Depth and pose estimators, by name. Each ingests saved outputs or runs its model (see base.py)."""

from __future__ import annotations

import importlib
from typing import Any

from annotation.estimators.base import DepthEstimate, DepthEstimator, PoseEstimate, PoseEstimator

DEPTH_ESTIMATORS = {
    "gt": "annotation.estimators.gt:GroundTruthDepth",
    "vda": "annotation.estimators.depth:VideoDepthAnything",
    "unidepth": "annotation.estimators.depth:MetricDepthReference",
}
POSE_ESTIMATORS = {
    "gt": "annotation.estimators.gt:GroundTruthPoses",
    "megasam": "annotation.estimators.poses:MegaSaM",
}


def _load(registry: dict[str, str], kind: str, name: str) -> type:
    if name not in registry:
        raise ValueError(f"{kind} estimator: unknown {name!r}; choose one of {sorted(registry)}")
    module, cls = registry[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_depth_estimator(name: str, **options: Any) -> DepthEstimator:
    """Build the depth estimator registered as ``name`` with its ``options`` (its ``__init__`` arguments)."""
    return _load(DEPTH_ESTIMATORS, "depth", name)(**options)


def make_pose_estimator(name: str, **options: Any) -> PoseEstimator:
    """Build the pose estimator registered as ``name`` with its ``options`` (its ``__init__`` arguments)."""
    return _load(POSE_ESTIMATORS, "pose", name)(**options)


__all__ = [
    "DEPTH_ESTIMATORS",
    "POSE_ESTIMATORS",
    "DepthEstimate",
    "DepthEstimator",
    "PoseEstimate",
    "PoseEstimator",
    "make_depth_estimator",
    "make_pose_estimator",
]
