"""Bad input through the whole run: each broken file is logged with its reason, skipped, and reported."""

from __future__ import annotations

import json

import numpy as np

from annotation.__main__ import main
from annotation.estimators.poses import MEGASAM_REPO
from d4s.utils.video import write_video
from tests.annotation.conftest import cli_overrides
from tests.annotation.test_pointodyssey import T, rewrite_anno, write_sequence
from tests.annotation.test_realestate10k import camera_lines, frame_colours, native_w2c, write_camera_file

POINTODYSSEY = {
    "clips.frames_per_clip": T,
    "clips.stride": T,
    "clips.frame_step": 1,
    "clips.max_short_side": None,
    "reprojection_filter": False,
    "tracks": "gt",
}


def run_cli(dataset: str, root, out, overrides: dict) -> int:
    args = ["--dataset", dataset, "--root", str(root), "--out", str(out), "--manifest", "none", "--no-progress"]
    return main(args + cli_overrides(overrides))


def skipped(out) -> list[dict]:
    (journal,) = (out / "_progress").glob("*.json")
    return json.loads(journal.read_text())["skipped"]


def test_pointodyssey_run_skips_broken_sequences_and_carries_on(tmp_path, capsys):
    root, out = tmp_path / "po", tmp_path / "out"
    write_sequence(root, seq="a_good")
    corrupt = write_sequence(root, seq="b_corrupt_rgb").folder / "rgbs" / "rgb_00002.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:40])
    missing = write_sequence(root, seq="c_missing_depth").folder / "depths" / "depth_00001.png"
    missing.unlink()
    nan_folder = write_sequence(root, seq="d_nan_poses").folder
    rewrite_anno(nan_folder, extrinsics=np.full((T, 4, 4), np.nan, np.float16))

    assert run_cli("pointodyssey", root, out, POINTODYSSEY) == 0
    files = {entry["file"]: entry["reason"] for entry in skipped(out)}
    assert set(files) == {str(corrupt), str(missing), str(nan_folder / "anno.npz")}
    assert all(files.values())
    index = json.loads((out / "index.json").read_text())
    assert index["splits"]["train"]["samples"] == 1
    table = capsys.readouterr().out
    assert "written" in table and "failed" in table
    log = next((out / "_progress").glob("*.log")).read_text()
    assert str(corrupt) in log and str(missing) in log


def test_run_where_nothing_can_be_written_exits_non_zero(tmp_path):
    root, out = tmp_path / "re10k", tmp_path / "out"
    lines = camera_lines(native_w2c())
    write_camera_file(root / "train" / "wrong_fields.txt", [lines[0] + " 1.0", *lines[1:]])
    nan_lines = list(lines)
    nan_lines[2] = " ".join(nan_lines[2].split()[:10] + ["nan"] + nan_lines[2].split()[11:])
    write_camera_file(root / "train" / "nan_pose.txt", nan_lines)
    write_camera_file(root / "train" / "truncated.txt", lines)
    video = write_video(root / "frames" / "truncated.mp4", frame_colours(), fps=30)
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    overrides = {"depth": {"name": "gt"}, "alignment.oracle": "gt", "megasam": None, "metric_reference": None}

    assert run_cli("realestate10k", root, out, overrides) == 1
    reasons = {entry["file"]: entry["reason"] for entry in skipped(out)}
    assert set(reasons) == {str(root / "train" / "wrong_fields.txt"), str(root / "train" / "nan_pose.txt"), str(video)}
    assert "line 2" in reasons[str(root / "train" / "wrong_fields.txt")]
    assert "line 4" in reasons[str(root / "train" / "nan_pose.txt")]


def test_missing_root_is_a_usage_error(tmp_path, capsys):
    assert main(["--dataset", "pointodyssey", "--out", str(tmp_path / "out")]) == 2
    assert "--root" in capsys.readouterr().err


def test_an_estimator_that_cannot_run_stops_the_run_before_the_first_clip(tmp_path, capsys):
    """A MegaSaM checkout that is not one: one line naming it and how to get it, exit status 2, nothing written."""
    args = ["--dataset", "toy4d", "--out", str(tmp_path / "out"), "--no-progress", "--manifest", "none"]
    args += ["--set", "poses.name=megasam", "--set", f"poses.options.checkout={tmp_path / 'mega-sam'}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'mega-sam'}: not a MegaSaM checkout; git clone --recursive {MEGASAM_REPO}"]
    assert not list((tmp_path / "out").glob("**/*.tar"))
