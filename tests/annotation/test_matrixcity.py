"""MatrixCity reader: native transforms.json (OpenGL, rotation /100) + PNG + EXR centimetres to the project conventions.

The fixture renders a textured slanted wall seen by a camera moving along a path, in MatrixCity's native
conventions (OpenGL camera axes, rotation block stored divided by 100, depth in centimetres).
"""

import glob
import json
import math
from dataclasses import dataclass

import numpy as np
import OpenEXR
import pytest
import torch
import webdataset as wds
from PIL import Image
from scipy.spatial.transform import Rotation

from annotation.__main__ import main
from annotation.errors import InputError
from annotation.readers import make_reader
from annotation.readers.matrixcity import MatrixCityReader
from d4s.data.schema import decode_record
from d4s.geometry import project_points
from tests.annotation.conftest import cli_overrides

T, H, W = 6, 24, 32
FX = 30.0
K_PX = np.array([[FX, 0.0, W / 2], [0.0, FX, H / 2], [0.0, 0.0, 1.0]])
ANGLE_X = 2 * math.atan(0.5 * W / FX)
PLANE_N, PLANE_C = np.array([0.2, 1.0, 0.1]) / np.linalg.norm([0.2, 1.0, 0.1]), 4.0  # wall: n . X = c (world)
SCENE = "small_city/street/train_dense/road_a"
SKY_ROW = 1  # depth row stored as 65504 cm (float16 saturation); row 0 is stored as 0 (invalid)


def native_c2w() -> np.ndarray:
    """``[T, 4, 4]`` OpenGL camera-to-world (camera x right, y up, z back), metres: looking along world +y with
    a slow yaw and a fixed tilt, moving along world x."""
    looking_y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # columns: camera x, y, z in world
    c2w = np.tile(np.eye(4), (T, 1, 1))
    for t in range(T):
        yaw = Rotation.from_rotvec([0.0, 0.0, 0.01 * t]).as_matrix()
        tilt = Rotation.from_rotvec([0.05, 0.0, 0.0]).as_matrix()
        c2w[t, :3, :3] = yaw @ looking_y @ tilt
        c2w[t, :3, 3] = [0.05 * t, 0.0, 1.5]
    return c2w


def gl_rays(c2w_gl: np.ndarray) -> np.ndarray:
    """World directions ``[H, W, 3]`` of pixel centres whose OpenGL camera z component is -1 (unit z-depth)."""
    v, u = np.mgrid[0:H, 0:W] + 0.5
    cam = np.stack([(u - K_PX[0, 2]) / FX, -(v - K_PX[1, 2]) / FX, -np.ones_like(u)], axis=-1)
    return cam @ c2w_gl[:3, :3].T


def project_gl(point: np.ndarray, c2w_gl: np.ndarray) -> np.ndarray:
    """Native hand projection: OpenGL camera coordinates ``R^T (X - t)``, the camera looks along -z, y is up."""
    x, y, z = c2w_gl[:3, :3].T @ (point - c2w_gl[:3, 3])
    return np.array([K_PX[0, 2] + FX * x / -z, K_PX[1, 2] - FX * y / -z])


@dataclass
class Fixture:
    root: object
    folder: object
    depth_folder: object
    c2w_gl: np.ndarray  # [T,4,4] native, before the /100 storage quirk
    depth_m: np.ndarray  # [T,H,W] true z-depth in metres (the wall)
    stored_cm: np.ndarray  # [T,H,W] what the EXRs hold
    frames: np.ndarray  # [T,H,W,3]


def write_exr(path, pixels: np.ndarray, name: str = "Y") -> None:
    """A single-part scanline EXR with one channel per entry of ``{name: pixels}`` (``pixels`` dtype sets the type)."""
    channels = pixels if isinstance(pixels, dict) else {name: pixels}
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, channels).write(str(path))


def transforms_json(c2w_gl: np.ndarray, key: str = "frame_index") -> dict:
    """A native ``transforms.json``: rotation stored /100, last row ``[0, 0, 0, 0.01]``, frames listed backwards."""
    frames = []
    for t in reversed(range(T)):
        stored = c2w_gl[t].copy()
        stored[:3, :3] /= 100
        stored[3, 3] = 0.01
        frame = {"frame_index": t} if key == "frame_index" else {"file_path": f"{t:04d}.png"}
        frames.append({**frame, "rot_mat": stored.tolist()})
    return {"camera_angle_x": ANGLE_X, "frames": frames}


def write_block(root, depth_root=None, dtype=np.float16, key="frame_index") -> Fixture:
    """A native MatrixCity street block with its depth tree; returns what was written."""
    depth_root = root if depth_root is None else depth_root
    folder = root / SCENE
    depth_folder = depth_root / "small_city_depth" / "street" / "train_dense" / "road_a_depth"
    folder.mkdir(parents=True)
    depth_folder.mkdir(parents=True)
    c2w_gl = native_c2w()
    (folder / "transforms.json").write_text(json.dumps(transforms_json(c2w_gl, key)))
    depth_m, frames = np.zeros((T, H, W)), np.zeros((T, H, W, 3), np.uint8)
    for t in range(T):
        rays = gl_rays(c2w_gl[t])
        depth_m[t] = (PLANE_C - PLANE_N @ c2w_gl[t, :3, 3]) / (rays @ PLANE_N)
        world = c2w_gl[t, :3, 3] + depth_m[t, ..., None] * rays
        texture = [np.sin(4 * world[..., 0]), np.cos(3 * world[..., 2]), np.sin(2 * world[..., 0] + 5 * world[..., 2])]
        frames[t] = np.round(127 + 100 * np.stack(texture, -1)).astype(np.uint8)
        Image.fromarray(frames[t]).save(folder / f"{t:04d}.png")
    stored_cm = (depth_m * 100).astype(dtype)
    stored_cm[:, 0] = 0.0
    stored_cm[:, SKY_ROW] = 65504.0
    for t in range(T):
        write_exr(depth_folder / f"{t:04d}.exr", stored_cm[t])
    return Fixture(root, folder, depth_folder, c2w_gl, depth_m, stored_cm, frames)


@pytest.fixture
def fixture(tmp_path):
    return write_block(tmp_path)


def open_scene(fixture, **options):
    return MatrixCityReader(fixture.root, **options).open_scene(SCENE)


def test_listing_and_splits(tmp_path):
    for name in ("big_city/aerial/test/block_1_test", "small_city/aerial/train/block_2", SCENE):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "small_city" / "aerial" / "pose" / "block_A").mkdir(parents=True)  # not a split folder
    reader = make_reader("matrixcity", tmp_path)
    assert reader.name == "matrixcity" and reader.licence == "CC-BY-NC-4.0"
    names = reader.scene_names()
    assert names == ["big_city/aerial/test/block_1_test", "small_city/aerial/train/block_2", SCENE]
    assert [reader.split_of(n) for n in names] == ["test", "train", "train"]
    for bad in ("small_city/aerial/train/zzz", "small_city/aerial/pose/block_A", "road_a"):
        with pytest.raises(ValueError, match="name"):
            reader.split_of(bad)
    with pytest.raises(InputError, match="small_city/ or big_city/"):
        MatrixCityReader(tmp_path / "elsewhere").scene_names()


def test_cameras_are_opencv_metric_and_project_known_points(fixture):
    scene = open_scene(fixture)
    assert (scene.num_frames, scene.height, scene.width, scene.fps, scene.metric) == (T, H, W, 10.0, True)
    assert (scene.has_depth, scene.has_dynamic_mask, scene.has_tracks, scene.caption) == (True, False, False, "")
    assert scene.c2w.dtype == np.float32 and scene.K.dtype == np.float32
    np.testing.assert_allclose(scene.timestamps, np.arange(T) / 10.0)
    np.testing.assert_allclose(scene.K, np.tile(K_PX, (T, 1, 1)), rtol=1e-6)
    flip_yz = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL -> OpenCV camera axes
    np.testing.assert_allclose(scene.c2w, fixture.c2w_gl @ flip_yz, atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(scene.c2w[:, :3, :3]), 1.0, atol=1e-6)
    # world points on the wall, seen in frame 0 at known pixels
    pixels = [(3, 4), (20, 7), (28, 20), (10, 15)]
    rays = gl_rays(fixture.c2w_gl[0])
    points = np.array([fixture.c2w_gl[0, :3, 3] + fixture.depth_m[0, v, u] * rays[v, u] for u, v in pixels])
    expected = np.stack([[project_gl(p, fixture.c2w_gl[t]) for p in points] for t in range(T)])
    np.testing.assert_allclose(expected[0], np.array(pixels) + 0.5, atol=1e-9)  # the hand projection is right
    uv, z = project_points(torch.from_numpy(points).float(), torch.from_numpy(scene.c2w), torch.from_numpy(scene.K))
    np.testing.assert_allclose(uv.numpy(), expected, atol=1e-3)
    assert (z > 0).all()


def test_frames_follow_frame_numbers_not_json_order(fixture):
    frames = open_scene(fixture).frames([0, 4])
    assert frames.shape == (2, H, W, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, fixture.frames[[0, 4]])


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_depth_is_metres_with_invalid_zero(tmp_path, dtype):
    fixture = write_block(tmp_path, dtype=dtype)
    depth = open_scene(fixture).depth([1, 5])
    assert depth.shape == (2, H, W) and depth.dtype == np.float32
    body = slice(SKY_ROW + 1, None)
    np.testing.assert_allclose(
        depth[:, body], fixture.depth_m[[1, 5], body], rtol=5e-4 if dtype == np.float16 else 1e-6
    )
    assert (depth[:, 0] == 0).all()
    if dtype == np.float16:  # saturated float16 is far/sky: invalid
        assert (depth[:, SKY_ROW] == 0).all()
    else:  # a float32 release keeps 655.04 m
        np.testing.assert_allclose(depth[:, SKY_ROW], 655.04, rtol=1e-6)


def test_file_path_key_and_depth_root_option(tmp_path):
    fixture = write_block(tmp_path / "rgb", depth_root=tmp_path / "depth", key="file_path")
    with pytest.raises(InputError, match="depth folder is missing") as info:
        open_scene(fixture)
    assert info.value.path == str(tmp_path / "rgb" / "small_city_depth" / "street" / "train_dense" / "road_a_depth")
    scene = open_scene(fixture, depth_root=tmp_path / "depth")
    np.testing.assert_array_equal(scene.frames([2]), fixture.frames[[2]])
    np.testing.assert_allclose(scene.depth([2])[0, SKY_ROW + 1 :], fixture.depth_m[2, SKY_ROW + 1 :], rtol=5e-4)


def rewrite_transforms(fixture, change) -> None:
    path = fixture.folder / "transforms.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _set_matrix(meta, matrix):
    meta["frames"][2]["rot_mat"] = matrix


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda m: m.pop("camera_angle_x"), "'camera_angle_x' and 'frames'"),
        (lambda m: m.update(camera_angle_x=60), r"radians in \(0, pi\)"),
        (lambda m: m["frames"][0].pop("frame_index"), "expected a 'frame_index' \\(or 'file_path'\\) key"),
        (lambda m: m["frames"][0].update(frame_index="3"), "non-negative int"),
        (lambda m: m["frames"][0].update(frame_index=1), "more than once"),
        (lambda m: m["frames"][1].pop("rot_mat"), "missing 'rot_mat'"),
        (lambda m: _set_matrix(m, m["frames"][2]["rot_mat"][:3]), "expected a 4x4 matrix, got shape \\[3, 4\\]"),
        (lambda m: _set_matrix(m, (np.eye(4) * [1, 1, 1, 0.01]).tolist()), "not orthonormal"),  # no /100
        (lambda m: _set_matrix(m, (np.diag([1, 1, -1, 100]) / 100).tolist()), "determinant -1"),
        (lambda m: _set_matrix(m, (np.full((4, 4), np.nan)).tolist()), "last row"),
    ],
    ids=[
        "no_angle",
        "degrees",
        "no_frame_key",
        "str_index",
        "duplicate",
        "no_rot_mat",
        "3x4",
        "unscaled",
        "reflect",
        "nan",
    ],
)
def test_bad_transforms_raise_naming_the_file(fixture, change, needle):
    rewrite_transforms(fixture, change)
    with pytest.raises(InputError, match=needle) as info:
        open_scene(fixture)
    assert info.value.path == str(fixture.folder / "transforms.json")


def test_missing_or_corrupt_transforms(fixture):
    path = fixture.folder / "transforms.json"
    path.write_text('{"camera_angle_x": 0.5, "frames": [')
    with pytest.raises(InputError, match="cannot parse JSON") as info:
        open_scene(fixture)
    assert info.value.path == str(path)
    path.unlink()
    with pytest.raises(InputError, match="missing") as info:
        open_scene(fixture)
    assert info.value.path == str(path)


def test_bad_depth_files_raise_naming_them(fixture):
    folder = fixture.depth_folder
    (folder / "0001.exr").unlink()
    (folder / "0002.exr").write_bytes(b"v/1\x01 not an exr")
    write_exr(folder / "0003.exr", fixture.stored_cm[3].astype(np.uint32))
    write_exr(folder / "0004.exr", {"Y": fixture.stored_cm[4], "Z": fixture.stored_cm[4]})
    write_exr(folder / "0005.exr", fixture.stored_cm[5, :, :-1])
    write_exr(folder / "0000.exr", -fixture.stored_cm[0])
    scene = open_scene(fixture)
    cases = [
        (1, "depth file is missing"),
        (2, "cannot read EXR"),
        (3, "expected HALF or FLOAT depth pixels, got UINT"),
        (4, r"expected one depth channel \(or equal R, G, B\), got channels \['Y', 'Z'\]"),
        (5, "image is 31x24, the scene's frames are 32x24"),
        (0, "negative depth"),
    ]
    for t, needle in cases:
        with pytest.raises(InputError, match=needle) as info:
            scene.depth([t])
        assert info.value.path == str(folder / f"{t:04d}.exr")


def test_equal_rgb_channels_are_one_depth_channel(fixture):
    cm = fixture.stored_cm[2]
    write_exr(fixture.depth_folder / "0002.exr", {"R": cm, "G": cm, "B": cm})
    np.testing.assert_allclose(open_scene(fixture).depth([2])[0, 2:], fixture.depth_m[2, 2:], rtol=5e-4)
    write_exr(fixture.depth_folder / "0002.exr", {"R": cm, "G": cm, "B": cm + 1})
    with pytest.raises(InputError, match="R, G and B differ"):
        open_scene(fixture).depth([2])


def test_missing_or_corrupt_frames_raise_naming_them(fixture):
    png = (fixture.folder / "0002.png").read_bytes()
    (fixture.folder / "0002.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(InputError, match="cannot decode") as info:
        open_scene(fixture).frames([2])
    assert info.value.path == str(fixture.folder / "0002.png")
    (fixture.folder / "0004.png").unlink()
    with pytest.raises(InputError, match="frame image is missing") as info:
        open_scene(fixture)
    assert info.value.path == str(fixture.folder / "0004.png")


def test_annotate_end_to_end_keeps_metric_depth_and_cameras(fixture, tmp_path):
    out = tmp_path / "out"
    overrides = {
        "clips": {"frames_per_clip": T, "stride": T, "frame_step": 1, "max_short_side": None},
        "query_stride": 4,
        "quality.flow_gap": 2,  # the default gap of 4 leaves frame 2 of 6 without a flow partner
    }
    args = ["--dataset", "matrixcity", "--root", str(fixture.root), "--out", str(out), "--manifest", "none"]
    assert main([*args, "--no-progress", *cli_overrides(overrides)]) == 0
    (sample,) = wds.WebDataset(glob.glob(str(out / "train" / "*.tar")), shardshuffle=False)
    record = decode_record(sample)
    assert record.meta.dataset == "matrixcity" and record.meta.metric and record.meta.licence == "CC-BY-NC-4.0"
    np.testing.assert_allclose(record.K, np.tile(K_PX, (T, 1, 1)), rtol=1e-6)
    np.testing.assert_allclose(record.c2w, fixture.c2w_gl @ np.diag([1.0, -1.0, -1.0, 1.0]), atol=1e-5)
    valid = record.depth > 0
    assert not valid[:, : SKY_ROW + 1].any() and valid[:, SKY_ROW + 1 :].mean() > 0.9
    np.testing.assert_allclose(record.depth[valid], fixture.depth_m[valid], rtol=2e-3)  # float16 EXR + shard storage
