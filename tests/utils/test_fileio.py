"""Atomic writes and reusable records."""

import os
from pathlib import Path

import pytest

from d4s.utils.fileio import atomic_output, reusable_record, write_json


def test_success_replaces_and_keeps_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt"
        tmp.write_text("new")
    assert target.read_text() == "new"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failure_keeps_old_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_record_is_reusable_only_with_the_same_settings_and_every_output(tmp_path):
    record, output = tmp_path / "run.json", tmp_path / "rgb.mp4"
    settings = {"steps": 30, "size": (64, 64), "ckpt": Path("a.ckpt")}
    assert reusable_record(record, settings) is None  # nothing there
    record.write_text("{not json")
    assert reusable_record(record, settings) is None  # a record cut short
    write_json(record, {"settings": {"steps": 30, "size": [64, 64], "ckpt": "a.ckpt"}, "psnr": 20.0})
    assert reusable_record(record, settings)["psnr"] == 20.0  # compared as JSON values: tuples, paths
    assert reusable_record(record, {**settings, "steps": 31}) is None  # other settings
    assert reusable_record(record, settings, output) is None  # unfinished: its output is missing
    output.write_bytes(b"video")
    assert reusable_record(record, settings, output) is not None
    write_json(record, {"weights": {"i3d": "x.pt"}, "values": {}})
    assert reusable_record(record, {"i3d": "x.pt"}, key="weights") == {"weights": {"i3d": "x.pt"}, "values": {}}
    assert reusable_record(record, {"i3d": "x.pt"}) is None  # under another key
