"""Spring reader: native png / HDF5 .dsp5 (2x disparity) / cam_data text sequences to the project conventions."""

import glob
from dataclasses import dataclass

import h5py
import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from scipy.spatial.transform import Rotation

from annotation.__main__ import main
from annotation.errors import InputError
from annotation.readers import make_reader
from annotation.readers.spring import SpringReader
from d4s.data.schema import decode_record
from d4s.geometry import project_points
from tests.annotation.conftest import cli_overrides

T, H, W = 8, 24, 32  # 8 frames: flow masks need 2 * quality.flow_gap (4) frames (see the report)
BASELINE = 0.065  # metres, Spring's stereo baseline
PLANE_NORMAL, PLANE_OFFSET = np.array([0.1, -0.05, 1.0]), 4.0  # the scene: world points X with n . X = d
INVALID = [(0, 0), (0, 1), (1, 0)]  # (row, col) of pixels written as NaN, 0 and negative disparity
GARBAGE = 999.0  # disparity at the 2x positions that subsampling [::2, ::2] must skip


def native_intrinsics() -> np.ndarray:
    """``[T, 4]`` rows ``fx fy cx cy`` in pixels; fx changes over time so the per-frame fx is exercised."""
    return np.array([[30.0 + 0.5 * t, 31.0, 16.2, 11.8] for t in range(T)])


def k_matrix(row) -> np.ndarray:
    fx, fy, cx, cy = row
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def native_w2c() -> np.ndarray:
    """``[T, 4, 4]`` world-to-camera (OpenCV): a fixed tilt, a slow pan and a sideways and forward drift."""
    w2c = np.tile(np.eye(4), (T, 1, 1))
    tilt = Rotation.from_rotvec([0.15, 0.0, 0.05]).as_matrix()
    for t in range(T):
        w2c[t, :3, :3] = Rotation.from_rotvec([0.0, 0.02 * t, 0.0]).as_matrix() @ tilt
        w2c[t, :3, 3] = [0.05 * t, -0.01 * t, 0.03 * t]
    return w2c


def plane_depth(K: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    """``[H, W]`` z-depth of the plane at each pixel centre (``u + 0.5, v + 0.5``), native convention."""
    R, t = w2c[:3, :3], w2c[:3, 3]
    centre = -R.T @ t
    v, u = np.mgrid[0:H, 0:W] + 0.5
    rays_cam = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T  # z = 1
    rays_world = rays_cam @ R  # R^T d for each ray
    return (PLANE_OFFSET - PLANE_NORMAL @ centre) / (rays_world @ PLANE_NORMAL)


def unproject(pixel, depth, K, w2c) -> np.ndarray:
    """The world point seen at ``pixel`` with z-depth ``depth`` (native: x_cam = R X + t)."""
    cam = depth * np.linalg.inv(K) @ [pixel[0], pixel[1], 1.0]
    return w2c[:3, :3].T @ (cam - w2c[:3, 3])


def project(point, K, w2c) -> np.ndarray:
    """Native projection by hand: ``K (R X + t)`` divided by z."""
    cam = w2c[:3, :3] @ point + w2c[:3, 3]
    return (K @ cam)[:2] / cam[2]


@dataclass
class Fixture:
    root: object
    folder: object
    intrinsics: np.ndarray  # [T, 4] as written
    w2c: np.ndarray  # [T, 4, 4] as written
    depth: np.ndarray  # [T, H, W] metres the disparity encodes (0 at INVALID)
    frames: np.ndarray  # [T, H, W, 3] uint8 as written


def write_hdf5(path, key, data=None) -> None:
    """An HDF5 file holding ``data`` under ``key`` (a group when ``data`` is None)."""
    with h5py.File(path, "w") as file:
        if data is None:
            file.create_group(key)
        else:
            file.create_dataset(key, data=data)


def write_rows(path, rows) -> None:
    path.write_text("".join(" ".join(repr(float(x)) for x in row) + "\n" for row in rows))


def write_sequence(root, split="train", seq="0001") -> Fixture:
    """A native Spring sequence (left camera); returns what was written."""
    folder = root / split / seq
    for sub in ("frame_left", "disp1_left", "cam_data"):
        (folder / sub).mkdir(parents=True)
    intrinsics, w2c = native_intrinsics(), native_w2c()
    write_rows(folder / "cam_data" / "intrinsics.txt", intrinsics)
    write_rows(folder / "cam_data" / "extrinsics.txt", w2c.reshape(T, 16))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    depth = np.stack([plane_depth(k_matrix(intrinsics[t]), w2c[t]) for t in range(T)])
    for t in range(T):
        Image.fromarray(frames[t]).save(folder / "frame_left" / f"frame_left_{t + 1:04d}.png")
        disparity = np.full((2 * H, 2 * W), GARBAGE, np.float32)
        disparity[::2, ::2] = intrinsics[t, 0] * BASELINE / depth[t]
        for (row, col), bad in zip(INVALID, (np.nan, 0.0, -1.0)):
            disparity[2 * row, 2 * col] = bad
        write_hdf5(folder / "disp1_left" / f"disp1_left_{t + 1:04d}.dsp5", "disparity", disparity)
    for row, col in INVALID:
        depth[:, row, col] = 0.0
    return Fixture(root, folder, intrinsics, w2c, depth, frames)


@pytest.fixture
def fixture(tmp_path):
    return write_sequence(tmp_path)


def open_scene(fixture, **options):
    return SpringReader(fixture.root, **options).open_scene("train/0001")


def test_listing_and_splits(tmp_path):
    for split, seq in (("train", "0002"), ("train", "0001"), ("test", "0003")):
        (tmp_path / split / seq).mkdir(parents=True)
    reader = make_reader("spring", tmp_path)
    assert reader.name == "spring" and "CC-BY-4.0" in reader.licence
    assert reader.scene_names() == ["test/0003", "train/0001", "train/0002"]
    assert [reader.split_of(n) for n in reader.scene_names()] == ["test", "train", "train"]
    with pytest.raises(ValueError, match="train/9999"):
        reader.split_of("train/9999")
    with pytest.raises(InputError, match="no train/, val/, test/ folder of spring"):
        SpringReader(tmp_path / "elsewhere").scene_names()
    with pytest.raises(ValueError, match="fps"):
        SpringReader(tmp_path, fps=0)


def test_cameras_match_the_native_ones_and_project_known_points(fixture):
    scene = open_scene(fixture)
    assert (scene.num_frames, scene.height, scene.width, scene.fps, scene.metric) == (T, H, W, 60.0, True)
    assert (scene.has_depth, scene.has_dynamic_mask, scene.has_tracks, scene.caption) == (True, False, False, "")
    assert scene.c2w.dtype == np.float32 and scene.K.dtype == np.float32
    np.testing.assert_allclose(scene.timestamps, np.arange(T) / 60)
    np.testing.assert_allclose(scene.K, [k_matrix(row) for row in fixture.intrinsics], rtol=1e-7)
    np.testing.assert_allclose(scene.c2w, np.linalg.inv(fixture.w2c), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(scene.c2w[:, :3, :3].astype(np.float64)), 1.0, atol=1e-6)
    K0 = k_matrix(fixture.intrinsics[0])
    points = np.array([unproject(p, d, K0, fixture.w2c[0]) for p, d in [((5, 7), 3.0), ((20, 15), 4.5), ((30, 2), 6)]])
    expected = np.stack(
        [[project(x, k_matrix(fixture.intrinsics[t]), fixture.w2c[t]) for x in points] for t in range(T)]
    )
    uv, z = project_points(torch.from_numpy(points).float(), torch.from_numpy(scene.c2w), torch.from_numpy(scene.K))
    np.testing.assert_allclose(uv.numpy(), expected, atol=1e-3)
    assert (z > 0).all()


def test_fps_option_sets_timestamps(fixture):
    scene = open_scene(fixture, fps=24.0)
    assert scene.fps == 24.0
    np.testing.assert_allclose(scene.timestamps, np.arange(T) / 24)


def test_frames_are_the_rgb_images(fixture):
    frames = open_scene(fixture).frames([4, 1])
    assert frames.shape == (2, H, W, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, fixture.frames[[4, 1]])


def test_depth_is_metric_from_the_subsampled_disparity(fixture):
    depth = open_scene(fixture).depth([0, 5])
    assert depth.shape == (2, H, W) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, fixture.depth[[0, 5]], rtol=1e-6)  # float32 disparity
    for row, col in INVALID:  # NaN, zero and negative disparity
        assert (depth[:, row, col] == 0).all()
    assert (depth > 0).sum() == depth.size - 2 * len(INVALID)


def disparity_path(fixture, t=2):
    return fixture.folder / "disp1_left" / f"disp1_left_{t + 1:04d}.dsp5"


@pytest.mark.parametrize(
    "write,needle",
    [
        (lambda p: write_hdf5(p, "disparity", np.ones((H, W), np.float32)), r"shape \[24, 32\], expected \[48, 64\]"),
        (lambda p: write_hdf5(p, "disparity", np.ones((2 * H, 2 * W, 1), np.float32)), r"expected \[48, 64\]"),
        (lambda p: write_hdf5(p, "disparity", np.ones((2 * H, 2 * W), np.int32)), "dtype int32, expected floating"),
        (lambda p: write_hdf5(p, "disp", np.ones((2 * H, 2 * W), np.float32)), "no HDF5 dataset 'disparity'"),
        (lambda p: write_hdf5(p, "disparity"), "HDF5 group, expected a dataset"),
        (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n broken"), "cannot read as HDF5"),
        (None, "disparity file is missing"),
    ],
    ids=["not_2x", "three_dims", "int_dtype", "wrong_key", "group", "corrupt", "missing"],
)
def test_bad_disparity_files_raise_naming_them(fixture, write, needle):
    scene = open_scene(fixture)  # files are checked to exist here; later damage shows when depth is read
    path = disparity_path(fixture)
    path.unlink()
    if write is not None:
        write(path)
    with pytest.raises(InputError, match=needle) as info:
        scene.depth([0, 2])
    assert info.value.path == str(path)


def edit_rows(path, edit) -> None:
    rows = [line.split() for line in path.read_text().splitlines()]
    edit(rows)
    path.write_text("".join(" ".join(row) + "\n" for row in rows))


def set_w2c(t, matrix):
    def edit(rows):
        rows[t] = [repr(float(x)) for x in np.ravel(matrix)]

    return edit


@pytest.mark.parametrize(
    "name,edit,needle",
    [
        ("extrinsics.txt", lambda rows: rows[3].pop(), "line 4: expected 16 values"),
        ("extrinsics.txt", lambda rows: rows[1].__setitem__(5, "abc"), "line 2: not a number"),
        ("extrinsics.txt", lambda rows: rows[1].__setitem__(5, "nan"), "line 2: non-finite"),
        ("extrinsics.txt", set_w2c(2, np.diag([1.0, 1.0, -1.0, 1.0])), "determinant"),
        ("extrinsics.txt", set_w2c(2, np.diag([1.1, 1.1, 1.1, 1.0])), "orthonormal"),
        ("extrinsics.txt", set_w2c(2, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0.5, 1]]), "last row"),
        ("extrinsics.txt", lambda rows: rows.clear(), "no lines"),
        ("intrinsics.txt", lambda rows: rows.pop(), "7 lines, but extrinsics.txt has 8"),
        ("intrinsics.txt", lambda rows: rows[2].__setitem__(0, "-30"), "line 3: focal lengths"),
        ("intrinsics.txt", lambda rows: rows[0].append("1"), "line 1: expected 4 values"),
    ],
    ids=["short", "text", "nan", "reflection", "scaled", "bottom_row", "empty", "count", "negative_fx", "long"],
)
def test_bad_camera_files_raise_naming_them(fixture, name, edit, needle):
    path = fixture.folder / "cam_data" / name
    edit_rows(path, edit)
    with pytest.raises(InputError, match=needle) as info:
        open_scene(fixture)
    assert info.value.path == str(path)


def test_corrupt_frame_raises_naming_it(fixture):
    path = fixture.folder / "frame_left" / "frame_left_0002.png"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="cannot decode") as info:
        open_scene(fixture).frames([0, 1])
    assert info.value.path == str(path)


@pytest.mark.parametrize(
    "relative,needle",
    [
        ("disp1_left/disp1_left_0005.dsp5", "disparity file is missing"),
        ("frame_left/frame_left_0004.png", "frame image is missing"),
        ("cam_data/extrinsics.txt", "file is missing"),
        ("cam_data/intrinsics.txt", "file is missing"),
    ],
)
def test_missing_files_refuse_the_scene_naming_them(fixture, relative, needle):
    (fixture.folder / relative).unlink()
    with pytest.raises(InputError, match=needle) as info:
        open_scene(fixture)
    assert info.value.path == str(fixture.folder / relative)


def test_frames_beyond_the_cameras_refuse_the_scene(fixture):
    extra = fixture.folder / "frame_left" / f"frame_left_{T + 1:04d}.png"
    Image.fromarray(fixture.frames[0]).save(extra)
    with pytest.raises(InputError, match=f"{T + 1} frames, but cam_data has {T} camera lines") as info:
        open_scene(fixture)
    assert info.value.path == str(fixture.folder / "frame_left")


def test_test_split_without_disparity_is_refused(tmp_path):
    fixture = write_sequence(tmp_path, split="test", seq="0010")
    for path in (fixture.folder / "disp1_left").iterdir():
        path.unlink()
    (fixture.folder / "disp1_left").rmdir()
    with pytest.raises(InputError, match="disparity folder is missing") as info:
        SpringReader(tmp_path).open_scene("test/0010")
    assert info.value.path == str(fixture.folder / "disp1_left")


def test_annotation_run_writes_metric_depth_and_cameras(tmp_path):
    fixture = write_sequence(tmp_path / "spring")
    out = tmp_path / "out"
    overrides = {"clips": {"frames_per_clip": T, "stride": T, "frame_step": 1, "max_short_side": None}}
    args = ["--dataset", "spring", "--root", str(fixture.root), "--out", str(out), "--manifest", "none"]
    assert main([*args, "--no-progress", *cli_overrides(overrides)]) == 0
    (sample,) = wds.WebDataset(glob.glob(str(out / "train" / "*.tar")), shardshuffle=False)
    record = decode_record(sample)
    assert record.meta.dataset == "spring" and record.meta.scene == "train/0001" and record.meta.metric
    assert record.meta.fps == 60.0 and record.frames.shape == (T, H, W, 3)
    np.testing.assert_allclose(record.K, [k_matrix(row) for row in fixture.intrinsics], rtol=1e-6)
    np.testing.assert_allclose(record.c2w, np.linalg.inv(fixture.w2c), atol=1e-5)
    valid = record.depth > 0
    assert valid.mean() > 0.95 and not valid[:, 0, 0].any()
    np.testing.assert_allclose(record.depth[valid], fixture.depth[valid], rtol=2e-3)  # float16 storage
