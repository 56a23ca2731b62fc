"""Annotation settings and manifests: every shipped config loads; typos and mismatches are named errors."""

from __future__ import annotations

import pytest

from annotation.config import CONFIG_DIR, load_config
from annotation.manifest import build_manifest, read_manifest, write_manifest
from annotation.readers import READERS, make_reader


@pytest.mark.parametrize("dataset", sorted(READERS))
def test_shipped_configs_load(dataset):
    config = load_config(dataset)
    assert config.dataset == dataset and (CONFIG_DIR / f"{dataset}.yaml").exists()
    assert len(config.digest()) == 16


def test_typos_and_wrong_types_are_named():
    with pytest.raises(ValueError, match=r"unknown keys \['frames_per_clips'\]"):
        load_config("toy4d", overrides={"clips.frames_per_clips": 3})
    with pytest.raises(ValueError, match=r"clips.stride: expected int, got .x."):
        load_config("toy4d", overrides={"clips.stride": "x"})
    with pytest.raises(ValueError, match=r"alignment.robust: 'lsq' is not one of"):
        load_config("toy4d", overrides={"alignment.robust": "lsq"})
    with pytest.raises(FileNotFoundError, match="no annotation config"):
        load_config("toy4d", "/nonexistent.yaml")


def test_overrides_change_the_digest():
    assert load_config("toy4d").digest() != load_config("toy4d", overrides={"clips.stride": 7}).digest()


def test_manifest_round_trip_and_option_mismatch(tmp_path):
    options = {"num_scenes": 5, "num_frames": 4, "size": 16}
    reader = make_reader("toy4d", None, **options)
    manifest = build_manifest(reader, options)
    assert sum(manifest["counts"].values()) == 5
    write_manifest(manifest, tmp_path / "toy4d.json")
    scenes = read_manifest(tmp_path / "toy4d.json", "toy4d", options)
    assert scenes == [(name, reader.split_of(name)) for name in reader.scene_names()]
    with pytest.raises(ValueError, match="reader options"):
        read_manifest(tmp_path / "toy4d.json", "toy4d", {**options, "num_scenes": 6})
    with pytest.raises(ValueError, match="is for dataset 'toy4d'"):
        read_manifest(tmp_path / "toy4d.json", "pointodyssey", options)


def test_nested_overrides_and_range_checks():
    config = load_config("realestate10k", overrides={"depth.options.outputs_dir": "/x", "clips.stride": 5})
    assert config.depth.options["outputs_dir"] == "/x" and config.depth.options["encoder"] == "vitl"
    assert config.clips.stride == 5
    for key, value, needle in [
        ("clips.stride", 0, "stride: must be >= 1"),
        ("clips.max_short_side", 0, "max_short_side: must be >= 16"),
        ("query_stride", 0, "query_stride: must be >= 1"),
        ("alignment.min_oracle_fraction", 1.5, r"must be in \[0, 1\]"),
        ("clips.frames_per_clip", 1, "at least 2 frames"),
    ]:
        with pytest.raises(ValueError, match=needle):
            load_config("realestate10k", overrides={key: value})
