"""Stereo4D reader: native npz clips (ragged 3D tracks) plus user-made frames to the project conventions."""

from __future__ import annotations

import glob
import math

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from scipy.spatial.transform import Rotation

from annotation.__main__ import main
from annotation.errors import InputError
from annotation.readers import make_reader
from annotation.readers.stereo4d import Stereo4DReader
from d4s.data.schema import decode_record, sample_key
from d4s.geometry import project_points
from d4s.utils.video import write_video
from tests.annotation.conftest import cli_overrides

T, S = 5, 32  # frames, square frame size in pixels
NAME = "abcDEF-_123_1001000"  # <video_id>_<first frame timestamp>
TIMESTAMPS_US = 1_001_000 + np.array([0, 100_100, 200_200, 300_300, 400_400])  # 9.99 fps
FOCAL = 0.5 * S / math.tan(math.radians(30.0))  # 60 deg horizontal FoV
K_HAND = np.array([[FOCAL, 0.0, S / 2], [0.0, FOCAL, S / 2], [0.0, 0.0, 1.0]])


def native_c2w() -> np.ndarray:
    """``[T, 3, 4]`` camera-to-world ``[R | t]`` (OpenCV axes, metres) with rotations about several axes."""
    R = Rotation.from_rotvec([[0.0, 0.02 * t, 0.0] for t in range(T)]).as_matrix()
    R = Rotation.from_rotvec([0.1, 0.0, 0.05]).as_matrix() @ R
    t = np.array([[0.05 * i, -0.01 * i, 0.02 * i] for i in range(T)])
    return np.concatenate([R, t[:, :, None]], axis=2)


def hand_projection(point: np.ndarray, c2w_3x4: np.ndarray) -> np.ndarray:
    """Native projection: camera point ``R^T (X - t)``, then ``fx x / z + cx``, ``fy y / z + cy``."""
    cam = c2w_3x4[:, :3].T @ (point - c2w_3x4[:, 3])
    return np.array([FOCAL * cam[0] / cam[2] + S / 2, FOCAL * cam[1] / cam[2] + S / 2])


def dense_tracks() -> np.ndarray:
    """Known tracks ``[N, T, 3]`` world metres, NaN where absent: 0 everywhere, 1 only in frames 1-2 (moving),
    2 only in frame 4, 3 in frames 0 and 3."""
    xyz = np.repeat(np.array([[0.2, -0.1, 3.0], [-0.3, 0.2, 4.0], [0.1, 0.3, 2.5], [0.0, 0.0, 5.0]])[:, None], T, 1)
    xyz[1, :, 1] += 0.01 * np.arange(T)
    present = np.zeros((4, T), bool)
    present[0], present[1, 1:3], present[2, 4], present[3, [0, 3]] = True, True, True, True
    return np.where(present[..., None], xyz, np.nan)


def ragged(tracks: np.ndarray) -> dict[str, np.ndarray]:
    """The released ragged layout of dense ``[N, T, 3]`` tracks (present = finite): per track, its frames in order."""
    present = np.isfinite(tracks).all(-1)
    track_ids, frames = np.nonzero(present)  # row-major: grouped by track, frames increasing
    return {
        "track_lengths": present.sum(1).astype(np.int32),
        "track_indices": frames.astype(np.int32),
        "track_coordinates": tracks[track_ids, frames].astype(np.float32),
    }


def native_arrays(name: str = NAME) -> dict[str, np.ndarray]:
    """Every key of a released clip npz, with the dtypes the authors' files are believed to use."""
    return {
        "name": np.array(name),
        "video_id": np.array(name.rsplit("_", 1)[0]),
        "timestamps": TIMESTAMPS_US.astype(np.int64),
        "camera2world": native_c2w().astype(np.float32),
        **ragged(dense_tracks()),
        "rectified2rig": np.stack([np.eye(3), Rotation.from_rotvec([0.0, 0.01, 0.0]).as_matrix()]).astype(np.float32),
        "fov_bounds": np.array([-90.0, 90.0, -90.0, 90.0], np.float32),
    }


def frame_images() -> np.ndarray:
    """``[T, S, S, 3]`` uint8: a distinct colour per frame and a bright top-left quadrant to pin orientation."""
    frames = np.zeros((T, S, S, 3), np.uint8)
    for i in range(T):
        frames[i] = (200, 40 * i, 10)
        frames[i, : S // 2, : S // 2] = (20, 220, 250)
    return frames


def write_clip(root, split: str = "train", name: str = NAME, arrays: dict | None = None, frames: bool = True):
    """``<root>/<split>/<name>.npz`` and, if asked, ``<root>/frames/<name>/00000.png ...``; returns the npz path."""
    path = root / split / f"{name}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **(native_arrays(name) if arrays is None else arrays))
    if frames:
        folder = root / "frames" / name
        folder.mkdir(parents=True, exist_ok=True)
        for t, image in enumerate(frame_images()):
            Image.fromarray(image).save(folder / f"{t:05d}.png")
    return path


def test_listing_splits_and_registry(tmp_path):
    write_clip(tmp_path, "train", "aaa_1")
    write_clip(tmp_path, "test", "bbb_2")
    reader = make_reader("stereo4d", tmp_path)
    assert isinstance(reader, Stereo4DReader)
    assert reader.scene_names() == ["aaa_1", "bbb_2"]
    assert (reader.split_of("aaa_1"), reader.split_of("bbb_2")) == ("train", "test")
    write_clip(tmp_path, "test", "aaa_1")
    with pytest.raises(InputError, match="one split"):
        Stereo4DReader(tmp_path).scene_names()


def test_cameras_intrinsics_and_frames_follow_the_native_clip(tmp_path):
    write_clip(tmp_path)
    scene = Stereo4DReader(tmp_path).open_scene(NAME)
    assert (scene.height, scene.width, scene.num_frames) == (S, S, T)
    np.testing.assert_allclose(scene.K, np.repeat(K_HAND[None], T, 0), rtol=1e-6)
    assert abs(scene.K[0, 0, 0] * 512 / S - 443.405) < 1e-3  # docs/datasets.md: ~443.4 px at 512x512
    c2w = native_c2w()
    np.testing.assert_allclose(scene.c2w[:, :3], c2w, atol=1e-6)
    np.testing.assert_array_equal(scene.c2w[:, 3], np.tile([0.0, 0.0, 0.0, 1.0], (T, 1)))
    np.testing.assert_allclose(np.linalg.det(scene.c2w[:, :3, :3]), 1.0, atol=1e-6)
    np.testing.assert_allclose(scene.timestamps, TIMESTAMPS_US / 1e6)
    assert scene.fps == pytest.approx(1e6 / 100_100)
    assert scene.metric and scene.has_tracks and not scene.has_depth and not scene.has_dynamic_mask
    assert scene.licence.startswith("CC-BY-4.0") and scene.caption == ""

    points = np.array([[0.2, -0.1, 3.0], [-0.4, 0.3, 4.0], [0.6, 0.5, 2.0]])
    uv, z = project_points(
        torch.from_numpy(points)[None], torch.from_numpy(scene.c2w).double(), torch.from_numpy(scene.K).double()
    )
    for t in range(T):
        for n, point in enumerate(points):
            np.testing.assert_allclose(uv[t, n].numpy(), hand_projection(point, c2w[t]), atol=1e-4)
    assert (z > 0).all()

    np.testing.assert_array_equal(scene.frames([3, 0]), frame_images()[[3, 0]])


def test_tracks_expand_the_ragged_layout_and_keep_visibility(tmp_path):
    write_clip(tmp_path)
    scene = Stereo4DReader(tmp_path).open_scene(NAME)
    truth = dense_tracks()
    xyz, visible = scene.tracks(range(T))
    assert xyz.dtype == np.float32 and visible.dtype == bool and xyz.shape == (4, T, 3)
    np.testing.assert_array_equal(visible, np.isfinite(truth).all(-1))
    np.testing.assert_allclose(xyz, truth, atol=1e-6)  # NaN exactly where absent (assert_allclose matches NaNs)

    xyz, visible = scene.tracks([0, 2, 3])  # track 2 (only in frame 4) is absent from all of these: left out
    np.testing.assert_array_equal(visible, np.isfinite(truth[[0, 1, 3]][:, [0, 2, 3]]).all(-1))
    np.testing.assert_allclose(xyz, truth[[0, 1, 3]][:, [0, 2, 3]], atol=1e-6)

    c2w = native_c2w()  # each frame's tracks project where the native hand projection puts them
    for t in range(T):
        xyz, _ = scene.tracks([t])
        uv, _ = project_points(
            torch.from_numpy(xyz[:, 0]).double(),
            torch.from_numpy(scene.c2w[t]).double(),
            torch.from_numpy(scene.K[t]).double(),
        )
        present = truth[np.isfinite(truth[:, t]).all(-1), t]
        np.testing.assert_allclose(uv.numpy(), [hand_projection(p, c2w[t]) for p in present], atol=1e-3)


def test_video_frames_are_read_by_index(tmp_path):
    write_clip(tmp_path, frames=False)
    write_video(tmp_path / "videos" / f"{NAME}.mp4", frame_images(), fps=10)
    scene = Stereo4DReader(tmp_path, frames_root=tmp_path / "videos").open_scene(NAME)
    frames = scene.frames([4, 1])
    assert frames.shape == (2, S, S, 3)
    assert np.abs(frames.astype(int) - frame_images()[[4, 1]].astype(int)).mean() < 4


def edited(**changes) -> dict[str, np.ndarray]:
    """Native arrays with some keys replaced (or removed, for a value of None)."""
    arrays = native_arrays()
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    return arrays


def reflected_c2w() -> np.ndarray:
    c2w = native_c2w().astype(np.float32)
    c2w[2, :, 0] *= -1  # frame 2 gets det -1
    return c2w


RAGGED = ragged(dense_tracks())


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"fov_bounds": None}, "missing array 'fov_bounds"),
        ({"camera2world": native_c2w().astype(np.int32)}, "camera2world: expected floats, got dtype int32"),
        ({"camera2world": np.tile(np.eye(4), (T, 1, 1))}, r"camera2world: expected shape \['T', 3, 4\]"),
        ({"timestamps": TIMESTAMPS_US[:4]}, r"camera2world: expected shape \['T', 3, 4\] where \{'T': 4\}"),
        ({"track_coordinates": RAGGED["track_coordinates"][:, :2]}, r"track_coordinates: expected shape \['M', 3\]"),
        ({"track_indices": RAGGED["track_indices"].astype(np.float32)}, "track_indices: expected integers"),
        ({"rectified2rig": np.eye(3, dtype=np.float32)}, r"rectified2rig: expected shape \[2, 3, 3\]"),
        ({"name": np.array("other_5")}, "name: 'other_5' differs from the file name"),
        ({"name": np.array(7)}, "name: expected a string"),
        ({"timestamps": TIMESTAMPS_US[[0, 2, 1, 3, 4]]}, "strictly increasing"),
        ({"camera2world": reflected_c2w()}, "determinant -1"),
        ({"track_lengths": RAGGED["track_lengths"] + [0, 0, 0, 1]}, "track_lengths sum to 11, but track_indices"),
        ({"track_lengths": np.array([T + 1, 0, 0, 2], np.int32)}, r"track_lengths: expected values in \[0, 5\]"),
        (
            {"track_indices": np.where(np.arange(10) == 9, T, RAGGED["track_indices"])},
            r"track_indices: expected frame indices in \[0, 5\)",
        ),
        (
            {"track_indices": np.where(np.arange(10) == 1, 0, RAGGED["track_indices"])},
            "a track lists the same frame twice",
        ),
    ],
)
def test_format_breaks_raise_naming_the_file_and_the_expectation(tmp_path, changes, needle):
    path = write_clip(tmp_path, arrays=edited(**changes))
    with pytest.raises(InputError, match=needle) as info:
        Stereo4DReader(tmp_path).open_scene(NAME)
    assert info.value.path == str(path)


def test_missing_or_corrupt_npz_raises_naming_it(tmp_path):
    path = write_clip(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="cannot read") as info:
        Stereo4DReader(tmp_path).open_scene(NAME)
    assert info.value.path == str(path)
    reader = Stereo4DReader(tmp_path)
    reader.scene_names()
    path.unlink()
    with pytest.raises(InputError, match="annotation file is missing") as info:
        reader.open_scene(NAME)
    assert info.value.path == str(path)


def test_missing_corrupt_and_odd_frames_raise_naming_the_file(tmp_path):
    write_clip(tmp_path, frames=False)
    with pytest.raises(InputError, match="no frames for clip") as info:
        Stereo4DReader(tmp_path).open_scene(NAME)
    assert info.value.path == str(tmp_path / "frames" / NAME)

    write_clip(tmp_path)
    folder = tmp_path / "frames" / NAME
    (folder / "00003.png").unlink()
    with pytest.raises(InputError, match="frame image is missing") as info:
        Stereo4DReader(tmp_path).open_scene(NAME)
    assert info.value.path == str(folder / "00003.png")

    write_clip(tmp_path)
    (folder / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    scene = Stereo4DReader(tmp_path).open_scene(NAME)
    with pytest.raises(InputError, match="cannot decode") as info:
        scene.frames([0, 1])
    assert info.value.path == str(folder / "00001.png")

    for t in range(T):
        Image.fromarray(np.zeros((S, S + 8, 3), np.uint8)).save(folder / f"{t:05d}.png")
    with pytest.raises(InputError, match="square") as info:
        Stereo4DReader(tmp_path).open_scene(NAME)
    assert info.value.path == str(folder / "00000.png")


def test_video_of_the_wrong_length_raises_naming_it(tmp_path):
    write_clip(tmp_path, frames=False)
    video = write_video(tmp_path / "frames" / f"{NAME}.mp4", frame_images()[:3], fps=10)
    with pytest.raises(InputError, match="video holds 3 frames, the npz has timestamps for 5") as info:
        Stereo4DReader(tmp_path).open_scene(NAME)
    assert info.value.path == str(video)


def test_relative_depth_aligned_to_tracks_becomes_metric_end_to_end(tmp_path):
    """A toy4d static scene (60 deg FoV, exact depth) written as a Stereo4D clip: its visible surface points as
    ragged tracks, its frames as PNGs, and an affine transform of its true disparity as Video Depth Anything's
    saved output. The pipeline must recover the true metric depth and the cameras."""
    size, frames = 64, 10
    toy = make_reader("toy4d", None, num_scenes=1, num_frames=frames, size=size, seed=3, dynamic_fraction=0.0)
    scene = toy.open_scene(toy.scene_names()[0])
    depth, c2w = scene.depth(range(frames)), scene.c2w[:frames]
    grid = np.stack(np.meshgrid(np.arange(2, size, 4), np.arange(2, size, 4)), -1).reshape(-1, 2) + 0.5
    xyz, visible = scene.tracks_from_pixels(grid, range(frames))
    name = "toyvideo_0"
    root = tmp_path / "stereo4d"
    arrays = native_arrays(name)
    arrays.update(
        timestamps=(np.arange(frames) * 100_000).astype(np.int64),
        camera2world=c2w[:, :3].astype(np.float32),
        **ragged(np.where(visible[..., None], xyz, np.nan)),
    )
    write_clip(root, "test", name, arrays, frames=False)
    (root / "frames" / name).mkdir(parents=True)
    for t, image in enumerate(scene.frames(range(frames))):
        Image.fromarray(image).save(root / "frames" / name / f"{t:05d}.png")

    vda = tmp_path / "vda"
    vda.mkdir()
    key = sample_key("stereo4d", name, 0)
    np.savez(vda / f"{key}_depths.npz", depths=(2.0 / depth + 0.3).astype(np.float32))
    overrides = {
        "clips": {"frames_per_clip": frames, "stride": frames, "frame_step": 1, "max_short_side": None},
        "depth.options": {"outputs_dir": str(vda), "metric": False},
        "alignment.masks": "grid",
        "alignment.cell": 8,
    }
    out = tmp_path / "out"
    args = ["--dataset", "stereo4d", "--root", str(root), "--out", str(out), "--manifest", "none", "--no-progress"]
    assert main([*args, *cli_overrides(overrides)]) == 0
    (sample,) = wds.WebDataset(glob.glob(str(out / "test" / "*.tar")), shardshuffle=False)
    record = decode_record(sample)

    valid = record.depth > 0
    assert valid.mean() > 0.9
    relative_error = np.abs(record.depth[valid] - depth[valid]) / depth[valid]
    # float16 storage, and the sparse oracle puts a track's exact z on the pixel it falls in, off the pixel centre
    assert np.median(relative_error) < 5e-3
    np.testing.assert_allclose(record.c2w, c2w, atol=1e-5)
    np.testing.assert_allclose(record.K, scene.K[:frames], rtol=1e-6)
    assert record.meta.alignment["oracle"] == "tracks" and record.meta.metric
    assert record.meta.pose_source == "gt"
    np.testing.assert_array_equal(record.track_visible, visible[visible.any(1)])
