"""Dataset readers, by name. Each module converts its dataset to the project conventions once (see base.py)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from annotation.readers.base import SPLITS, Reader, Scene

READERS = {
    "toy4d": "annotation.readers.toy4d:Toy4DReader",
    "realestate10k": "annotation.readers.realestate10k:RealEstate10KReader",
    "pointodyssey": "annotation.readers.pointodyssey:PointOdysseyReader",
    "tartanair": "annotation.readers.tartanair:TartanAirReader",
    "matrixcity": "annotation.readers.matrixcity:MatrixCityReader",
    "dynamic_replica": "annotation.readers.dynamic_replica:DynamicReplicaReader",
    "spring": "annotation.readers.spring:SpringReader",
    "vkitti2": "annotation.readers.vkitti2:VKITTI2Reader",
    "multicamvideo": "annotation.readers.multicamvideo:MultiCamVideoReader",
    "stereo4d": "annotation.readers.stereo4d:Stereo4DReader",
}


def reader_class(name: str) -> type[Reader]:
    """The reader class registered as ``name``."""
    if name not in READERS:
        raise ValueError(f"dataset: unknown {name!r}; choose one of {sorted(READERS)}")
    module, cls = READERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_reader(name: str, root: str | Path | None, **options: Any) -> Reader:
    """Build the reader for dataset ``name`` on ``root`` with reader-specific ``options``."""
    return reader_class(name)(root, **options)


__all__ = ["READERS", "SPLITS", "Reader", "Scene", "make_reader", "reader_class"]
