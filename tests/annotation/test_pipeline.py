"""End to end on toy4d: shards that webdataset reads back with every field intact, resumable after a kill."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from annotation.__main__ import main, rank_and_world
from annotation.config import load_config
from annotation.estimators.flow import DISFlow
from annotation.pipeline import clip_windows, run
from annotation.readers import make_reader
from annotation.tracks import flow_tracks
from annotation.writer import ShardWriter
from d4s.data.schema import decode_record
from tests.annotation.conftest import cli_overrides

REPO = Path(__file__).resolve().parents[2]


def read_shards(out: Path) -> dict:
    urls = sorted(glob.glob(str(out / "*" / "*.tar")))
    return {sample["__key__"]: decode_record(sample) for sample in wds.WebDataset(urls, shardshuffle=False)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma of uint8 RGB frames (what the codec stores at full resolution)."""
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def test_annotate_toy4d_round_trips_every_field(tmp_path, small_toy4d):
    out = tmp_path / "shards"
    assert main(["--out", str(out), "--manifest", "none", "--no-progress", *cli_overrides(small_toy4d)]) == 0
    records = read_shards(out)
    config = load_config("toy4d", overrides=small_toy4d)
    reader = make_reader("toy4d", None, **config.reader)
    expected_keys = set()
    for name in reader.scene_names():
        scene = reader.open_scene(name)
        for indices in clip_windows(scene.num_frames, config.clips):
            record = records[f"toy4d__{name}__{indices[0]:06d}"]
            expected_keys.add(record.key)
            # Codec tolerance. toy4d's hard-edged saturated textures at 48 px lose more to yuv420p's half-resolution
            # chroma than natural video does (tests/data/test_schema.py checks > 35 dB RGB on natural-like content)
            assert psnr(luma(record.frames), luma(scene.frames(indices))) > 35.0
            assert psnr(record.frames, scene.frames(indices)) > 29.0
            truth = scene.depth(indices)
            kept = record.depth > 0  # the reprojection filter may drop a few edge pixels
            assert kept.mean() > 0.9  # QC drops pixels at depth edges and where moving objects cover them 2 frames away
            np.testing.assert_allclose(record.depth[kept], truth[kept], rtol=2**-11)
            np.testing.assert_array_equal(record.c2w, scene.c2w[indices].astype(np.float32))
            np.testing.assert_array_equal(record.K, scene.K[indices].astype(np.float32))
            np.testing.assert_array_equal(record.timestamps, scene.timestamps[indices])
            np.testing.assert_array_equal(record.dynamic_mask, scene.dynamic_mask(indices))
            xyz, visible = scene.tracks(indices)
            np.testing.assert_array_equal(record.track_xyz, xyz)
            np.testing.assert_array_equal(record.track_visible, visible)
            assert record.meta.frame_indices == indices and record.meta.metric
            assert record.meta.caption == scene.caption and record.meta.licence == reader.licence
            points, valid = record.pointmaps()
            assert valid.sum() == kept.sum() and np.isfinite(points).all()
    assert set(records) == expected_keys
    index = json.loads((out / "index.json").read_text())
    assert sum(split["samples"] for split in index["splits"].values()) == len(records)
    for split, info in index["splits"].items():
        for shard in info["shards"]:
            assert shard["path"].startswith(f"{split}/") and (out / shard["path"]).stat().st_size == shard["bytes"]


def test_flow_tracks_agree_with_exact_toy4d_tracks():
    reader = make_reader("toy4d", None, num_scenes=2, num_frames=49, size=96, seed=3, dynamic_fraction=1.0)
    errors, moving_errors = [], []
    for name in reader.scene_names():
        scene = reader.open_scene(name)
        indices = list(range(12))  # 12 consecutive frames of a 49-frame scene: a few pixels of motion per frame
        frames, depth, mask = scene.frames(indices), scene.depth(indices), scene.dynamic_mask(indices)
        K, c2w = scene.K[indices], scene.c2w[indices]
        forward, backward = DISFlow("medium").forward_backward(frames)
        uv = np.stack(np.meshgrid(np.arange(4, 96, 8), np.arange(4, 96, 8)), -1).reshape(-1, 2) + 0.5
        xyz, visible = flow_tracks(forward, backward, depth, K, c2w, mask, query_uv=uv)
        exact, exact_visible = scene.tracks_from_pixels(uv, indices)
        both = visible & exact_visible
        assert both.sum() > 0.5 * exact_visible.sum()
        error = np.linalg.norm(xyz - exact, axis=-1)
        errors.append(error[both])
        on_objects = mask[0][np.floor(uv[:, 1]).astype(int), np.floor(uv[:, 0]).astype(int)]
        moving_errors.append(error[on_objects][both[on_objects]])
    errors, moving_errors = np.concatenate(errors), np.concatenate(moving_errors)
    print(
        f"flow tracks vs exact: median 3D error {np.median(errors) * 100:.2f} cm over {errors.size} points, "
        f"moving points {np.median(moving_errors) * 100:.2f} cm over {moving_errors.size}"
    )
    assert moving_errors.size > 20
    assert np.median(errors) < 0.02  # metres, in a 6 x 3 x 8 m room
    assert np.median(moving_errors) < 0.05


def test_interrupted_run_resumes_to_identical_shards(tmp_path, small_toy4d, monkeypatch):
    config = load_config("toy4d", overrides=small_toy4d)
    reader = make_reader("toy4d", None, **config.reader)
    scenes = [(name, reader.split_of(name)) for name in reader.scene_names()]
    clean = tmp_path / "clean"
    run(config, reader, scenes, clean, progress=False)

    resumed = tmp_path / "resumed"
    original_write = ShardWriter.write
    calls = {"n": 0}

    def write_then_die(self, split, sample):
        calls["n"] += 1
        if calls["n"] == 5:  # mid-shard: shard 0 (3 samples) is done, shard 1 holds one sample
            raise KeyboardInterrupt
        return original_write(self, split, sample)

    monkeypatch.setattr(ShardWriter, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(config, reader, scenes, resumed, progress=False)
    monkeypatch.setattr(ShardWriter, "write", original_write)
    journal = run(config, reader, scenes, resumed, progress=False)
    assert journal.done and journal.written == 8

    def tree(root: Path) -> dict:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("*/*.tar"))}

    assert tree(resumed) == tree(clean)  # byte-identical shards: nothing lost, nothing duplicated
    assert not list(resumed.glob("*/.*.tmp"))
    assert (
        json.loads((resumed / "index.json").read_text())["splits"]
        == json.loads((clean / "index.json").read_text())["splits"]
    )


def test_killed_process_resumes(tmp_path, small_toy4d):
    small_toy4d.update({"reader.num_scenes": 8, "shard_max_samples": 1})
    command = [
        sys.executable,
        "-m",
        "annotation",
        "--out",
        str(tmp_path / "out"),
        "--manifest",
        "none",
        "--no-progress",
        *cli_overrides(small_toy4d),
    ]
    journal = tmp_path / "out" / "_progress" / "toy4d-r000-of-001.json"
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if journal.exists() and len(json.loads(journal.read_text())["shards"]) >= 2:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert subprocess.run(command, check=False, cwd=REPO, capture_output=True).returncode == 0
    records = read_shards(tmp_path / "out")
    assert len(records) == 16  # 8 scenes x 2 clips, each exactly once
    state = json.loads(journal.read_text())
    assert state["done"] and state["written"] == 16 and len(state["shards"]) == 16


def test_ranks_split_the_work_without_overlap(tmp_path, small_toy4d):
    keys = []
    for rank in range(3):
        out = tmp_path / "out"
        args = ["--out", str(out), "--manifest", "none", "--no-progress", "--rank", str(rank), "--world-size", "3"]
        assert main(args + cli_overrides(small_toy4d)) == 0
    keys = list(read_shards(tmp_path / "out"))
    assert len(keys) == len(set(keys)) == 8
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert sum(split["samples"] for split in index["splits"].values()) == 8


def test_rank_and_world_from_the_environment(monkeypatch):
    for name in (
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_COUNT",
        "RANK",
        "WORLD_SIZE",
        "SLURM_PROCID",
        "SLURM_NTASKS",
    ):
        monkeypatch.delenv(name, raising=False)
    assert rank_and_world(None, None) == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_and_world(None, None) == (2, 4)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "8")
    assert rank_and_world(None, None) == (4, 8)
    assert rank_and_world(1, 2) == (1, 2)
    with pytest.raises(ValueError, match="rank 3"):
        rank_and_world(3, 2)


def test_resume_with_another_configuration_or_world_size_is_refused(tmp_path, small_toy4d, capsys):
    out = tmp_path / "out"
    args = ["--out", str(out), "--manifest", "none", "--no-progress"]
    assert main(args + cli_overrides(small_toy4d)) == 0
    assert main(args + ["--world-size", "2", "--rank", "1"] + cli_overrides(small_toy4d)) == 2
    assert "another world size" in capsys.readouterr().err
    small_toy4d["clips.stride"] = 3
    assert main(args + cli_overrides(small_toy4d)) == 2
    assert "different configuration" in capsys.readouterr().err


def test_unexpected_errors_skip_the_clip_and_a_broken_setup_stops_the_run(tmp_path, small_toy4d, monkeypatch, capsys):
    from annotation.pipeline import Annotator

    original = Annotator.process

    def fail_on_scene_1(self, clip):
        if clip.scene == "scene_0001":
            raise RuntimeError("estimator crashed")
        return original(self, clip)

    monkeypatch.setattr(Annotator, "process", fail_on_scene_1)
    out = tmp_path / "out"
    args = ["--out", str(out), "--manifest", "none", "--no-progress"]
    assert main(args + cli_overrides(small_toy4d)) == 0
    state = json.loads(next((out / "_progress").glob("*.json")).read_text())
    assert state["written"] == 6 and state["failed"] == {"RuntimeError: estimator crashed": 2}

    monkeypatch.setattr(Annotator, "process", lambda self, clip: (_ for _ in ()).throw(RuntimeError("no GPU")))
    assert (
        main(
            ["--out", str(tmp_path / "broken"), *args[2:]] + cli_overrides({**small_toy4d, "max_consecutive_errors": 3})
        )
        == 1
    )
    assert "3 unexpected errors in a row" in capsys.readouterr().err


def test_index_command_finds_the_dataset_and_ranks_without_scenes_succeed(tmp_path, small_toy4d):
    out = tmp_path / "out"
    args = ["--out", str(out), "--manifest", "none", "--no-progress", "--world-size", "6"]
    for rank in range(6):  # 4 scenes over 6 ranks: ranks 4 and 5 have nothing to do
        assert main(args + ["--rank", str(rank)] + cli_overrides(small_toy4d)) == 0
    (out / "index.json").unlink()
    assert main(["index", "--out", str(out)]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["dataset"] == "toy4d" and sum(s["samples"] for s in index["splits"].values()) == 8
    with pytest.raises(ValueError, match="both --rank and --world-size"):
        rank_and_world(None, 4)


def test_summary_table_lists_frequent_reasons_first_and_sums_the_rest():
    from annotation.pipeline import summary_table
    from annotation.writer import Journal

    journal = Journal("x", written=5, failed={f"reason {i}": i + 1 for i in range(6)}, rejected={"valid depth": 3})
    lines = summary_table(journal, max_reasons=2).splitlines()[2:]
    assert [line.split()[0] for line in lines] == ["written", "rejected", "failed", "failed", "failed"]
    assert "reason 5" in lines[2] and "reason 4" in lines[3]
    assert "(4 other reasons)" in lines[4] and lines[4].split()[-1] == str(1 + 2 + 3 + 4)
