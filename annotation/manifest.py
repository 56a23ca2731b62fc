"""Per-dataset scene lists and splits: ``data_manifests/<dataset>.json``.

A manifest fixes which scenes exist and which split each belongs to, so every machine of a distributed run, and
every later run, agrees on the work list. It is written by ``python -m annotation manifest`` (committed for toy4d).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from annotation.config import REPO_ROOT
from annotation.readers import SPLITS, Reader
from d4s.utils.fileio import write_json

MANIFEST_DIR = REPO_ROOT / "data_manifests"
MANIFEST_VERSION = 1


def default_manifest_path(dataset: str) -> Path:
    return MANIFEST_DIR / f"{dataset}.json"


def build_manifest(reader: Reader, options: dict[str, Any]) -> dict[str, Any]:
    """The manifest of everything ``reader`` lists: scenes with their splits, and per-split counts."""
    scenes = [{"name": name, "split": reader.split_of(name)} for name in reader.scene_names()]
    counts = {split: sum(scene["split"] == split for scene in scenes) for split in SPLITS}
    return {
        "dataset": reader.name,
        "version": MANIFEST_VERSION,
        "reader_options": options,
        "counts": counts,
        "scenes": scenes,
    }


def write_manifest(manifest: dict[str, Any], path: Path) -> None:
    write_json(path, manifest, sort_keys=True)


def read_manifest(path: Path, dataset: str, reader_options: dict[str, Any]) -> list[tuple[str, str]]:
    """``(scene name, split)`` pairs from a manifest, checked to belong to ``dataset`` and to a reader built
    with the same ``reader_options`` (toy4d's options decide which scenes exist)."""
    try:
        manifest = json.loads(Path(path).read_text())
        if manifest["dataset"] != dataset:
            raise ValueError(f"is for dataset {manifest['dataset']!r}, not {dataset!r}")
        if manifest["reader_options"] != reader_options:
            raise ValueError(
                f"was built with reader options {manifest['reader_options']}, but the configuration has "
                f"{reader_options}; rebuild it with `python -m annotation manifest` or pass --manifest none"
            )
        scenes = [(scene["name"], scene["split"]) for scene in manifest["scenes"]]
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a usable manifest ({error})") from error
    unknown = sorted({split for _, split in scenes} - set(SPLITS))
    if unknown:
        raise ValueError(f"{path}: unknown splits {unknown}")
    return scenes
