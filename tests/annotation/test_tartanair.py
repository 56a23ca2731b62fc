"""TartanAir v1 reader: native png/npy/NED-pose trajectories to the project conventions, and end to end."""

import glob
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from scipy.spatial.transform import Rotation

from annotation.__main__ import main
from annotation.errors import InputError
from annotation.readers import make_reader
from annotation.readers.tartanair import TartanAirReader
from d4s.data.schema import decode_record
from d4s.geometry import project_points
from tests.annotation.conftest import cli_overrides

T, H, W = 8, 24, 32
# The documented 640x480 intrinsics (fx = fy = 320, cx = 320, cy = 240) for frames resized to 32x24.
FX = FY = 320.0 * W / 640
CX, CY = 320.0 * W / 640, 240.0 * H / 480
K_PX = np.array([[FX, 0.0, CX], [0.0, FY, CY], [0.0, 0.0, 1.0]])
WALL = 8.0  # a textured wall at NED x (north) = 8 m fills the view below the sky
SKY_ROWS = 3  # rows 0..2 see the sky (depth 1e4 m)
SKY_DEPTH, AT_LIMIT, INF_PIXEL = 1.0e4, (SKY_ROWS, 0), (SKY_ROWS, 1)  # depth 1000 m exactly, inf: both invalid
SCENE = "Forest/Easy/P001"
# The reader's world axes, as documented: x = NED y (east), y = NED z (down), z = NED x (north).
NED_TO_READER_WORLD = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


def native_poses() -> np.ndarray:
    """Pose lines ``[T, 7]`` ``tx ty tz qx qy qz qw``: NED camera-to-world, a slow yaw, pitch and roll while
    moving north-east and climbing."""
    rows = []
    for t in range(T):
        rotation = Rotation.from_euler(
            "ZYX", [0.3 + 0.01 * t, 0.1 - 0.005 * t, -0.2 - 0.01 * t]
        )  # yaw, pitch, roll (NED)
        rows.append([0.05 * t, 0.02 * t, -1.0 - 0.01 * t, *rotation.as_quat()])  # scipy: scalar last (xyzw)
    return np.array(rows)


def project_ned(point: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, float]:
    """Native projection by hand: NED body coordinates (x forward, y right, z down), then the pinhole K.
    Returns the pixel (pixel centres at +0.5) and the z-depth (distance along the forward axis)."""
    body = Rotation.from_quat(pose[3:]).as_matrix().T @ (point - pose[:3])
    return np.array([FX * body[1] / body[0] + CX, FY * body[2] / body[0] + CY]), body[0]


def texture(east: np.ndarray, down: np.ndarray) -> np.ndarray:
    """Smooth wall colours ``[..., 3]`` uint8 from NED wall coordinates."""
    phases = np.array([0.0, 1.0, 2.0])
    value = 128 + 100 * np.sin(1.1 * east[..., None] + phases) * np.cos(0.8 * down[..., None] + 2 * phases)
    return np.clip(np.round(value), 0, 255).astype(np.uint8)


def render(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB ``[H, W, 3]`` uint8 and NED depth ``[H, W]`` float32 metres (sky 1e4) of the wall seen from ``pose``."""
    v, u = np.mgrid[0:H, 0:W] + 0.5
    rays = np.stack([np.ones_like(u), (u - CX) / FX, (v - CY) / FY], -1)  # body frame, forward component 1
    world = rays @ Rotation.from_quat(pose[3:]).as_matrix().T
    depth = (WALL - pose[0]) / world[..., 0]  # z-depth, as the forward ray component is 1
    hits = pose[:3] + depth[..., None] * world
    rgb = texture(hits[..., 1], hits[..., 2])
    rgb[:SKY_ROWS], depth[:SKY_ROWS] = (135, 206, 235), SKY_DEPTH
    depth[AT_LIMIT], depth[INF_PIXEL] = 1000.0, np.inf
    return rgb, depth.astype(np.float32)


@dataclass
class Fixture:
    root: object
    folder: object
    poses: np.ndarray  # [T, 7] as written
    rgb: np.ndarray  # [T, H, W, 3]
    depth: np.ndarray  # [T, H, W] float32 as written (sky and specials included)


def write_trajectory(root, scene=SCENE, camera="left") -> Fixture:
    """A native TartanAir trajectory folder; returns what was written."""
    folder = root / scene
    (folder / f"image_{camera}").mkdir(parents=True, exist_ok=True)
    (folder / f"depth_{camera}").mkdir(parents=True, exist_ok=True)
    poses = native_poses()
    lines = [" ".join(f"{value:.10e}" for value in row) for row in poses]
    (folder / f"pose_{camera}.txt").write_text("\n".join(lines) + "\n")
    rgbs, depths = zip(*(render(pose) for pose in poses))
    for t in range(T):
        Image.fromarray(rgbs[t]).save(folder / f"image_{camera}" / f"{t:06d}_{camera}.png")
        np.save(folder / f"depth_{camera}" / f"{t:06d}_{camera}_depth.npy", depths[t])
    return Fixture(root, folder, poses, np.stack(rgbs), np.stack(depths))


@pytest.fixture
def fixture(tmp_path):
    return write_trajectory(tmp_path)


def open_scene(fixture, name=SCENE, **options):
    return TartanAirReader(fixture.root, **options).open_scene(name)


def test_listing_cameras_and_environment_splits(tmp_path):
    for path in ("b/Easy/P000", "b/Hard/P003", "a/Easy/P001", "a/Medium/P000", "a/Easy/notes", "c/Hard/P000"):
        (tmp_path / path).mkdir(parents=True)
    reader = make_reader("tartanair", tmp_path)
    assert reader.name == "tartanair" and reader.licence == "CC-BY-4.0"
    assert reader.scene_names() == ["a/Easy/P001", "b/Easy/P000", "b/Hard/P003", "c/Hard/P000"]
    both = TartanAirReader(tmp_path, cameras=["right", "left"])
    assert both.scene_names()[:2] == ["a/Easy/P001", "a/Easy/P001/right"] and len(both.scene_names()) == 8
    assert both.split_of("b/Easy/P000/right") == both.split_of("b/Hard/P003") == reader.split_of("b/Easy/P000")
    assert {
        TartanAirReader(tmp_path, val_fraction=0.0, test_fraction=1.0).split_of(n) for n in reader.scene_names()
    } == {"test"}
    assert {TartanAirReader(tmp_path, val_fraction=1.0, test_fraction=0.0).split_of("c/Hard/P000")} == {"val"}
    for bad in ("a/Medium/P000", "a/Easy/P009", "b/Easy/P000/right", "b/Easy"):
        with pytest.raises(ValueError, match="no TartanAir scene"):
            reader.split_of(bad)
    with pytest.raises(InputError, match="no TartanAir trajectory folders"):
        TartanAirReader(tmp_path / "elsewhere").scene_names()
    with pytest.raises(ValueError, match="cameras"):
        TartanAirReader(tmp_path, cameras=["centre"])


def test_split_fractions_are_roughly_kept(tmp_path):
    for i in range(200):
        (tmp_path / f"env{i:03d}" / "Easy" / "P000").mkdir(parents=True)
    reader = TartanAirReader(tmp_path, val_fraction=0.2, test_fraction=0.1)
    splits = [reader.split_of(name) for name in reader.scene_names()]
    assert 0.03 < splits.count("test") / 200 < 0.18 and 0.12 < splits.count("val") / 200 < 0.3


def test_cameras_project_known_points_with_proper_rotations(fixture):
    scene = open_scene(fixture)
    assert (scene.num_frames, scene.height, scene.width, scene.fps, scene.metric) == (T, H, W, 10.0, True)
    assert scene.has_depth and not scene.has_dynamic_mask and not scene.has_tracks and scene.caption == ""
    assert scene.c2w.dtype == np.float32 and scene.K.dtype == np.float32
    np.testing.assert_allclose(scene.timestamps, np.arange(T) / 10)
    np.testing.assert_allclose(scene.K, np.tile(K_PX, (T, 1, 1)))
    np.testing.assert_allclose(np.linalg.det(scene.c2w[:, :3, :3].astype(np.float64)), 1.0, atol=1e-6)
    rng = np.random.default_rng(0)
    points = np.stack([np.full(10, WALL - 2.0), rng.uniform(-2, 2, 10), rng.uniform(-3, 1, 10)], -1)  # NED world
    expected = [[project_ned(x, pose) for x in points] for pose in fixture.poses]
    uv, z = project_points(
        torch.from_numpy(points @ NED_TO_READER_WORLD.T).float(), torch.from_numpy(scene.c2w), torch.from_numpy(scene.K)
    )
    np.testing.assert_allclose(uv.numpy(), [[p for p, _ in row] for row in expected], atol=1e-3)
    np.testing.assert_allclose(z.numpy(), [[d for _, d in row] for row in expected], atol=1e-4)
    assert open_scene(fixture, fps=5.0).timestamps[1] == pytest.approx(0.2)


def test_native_size_gets_the_documented_intrinsics_and_other_shapes_are_refused(tmp_path):
    folder = tmp_path / "Env" / "Hard" / "P000"
    (folder / "image_left").mkdir(parents=True)
    (folder / "pose_left.txt").write_text("0 0 0 0 0 0 1\n")
    frame = folder / "image_left" / "000000_left.png"
    Image.new("RGB", (640, 480)).save(frame)
    scene = TartanAirReader(tmp_path).open_scene("Env/Hard/P000")
    np.testing.assert_array_equal(scene.K[0], [[320, 0, 320], [0, 320, 240], [0, 0, 1]])
    Image.new("RGB", (640, 640)).save(frame)  # TartanAir v2's square frames
    with pytest.raises(InputError, match="640x480") as info:
        TartanAirReader(tmp_path).open_scene("Env/Hard/P000")
    assert info.value.path == str(frame)


def test_frames_are_rgb(fixture):
    frames = open_scene(fixture).frames([1, 4])
    assert frames.shape == (2, H, W, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, fixture.rgb[[1, 4]])


def test_depth_is_metres_with_sky_and_non_finite_invalid(fixture):
    depth = open_scene(fixture).depth([0, 5])
    assert depth.shape == (2, H, W) and depth.dtype == np.float32
    expected = fixture.depth[[0, 5]].copy()
    expected[:, :SKY_ROWS] = 0.0
    expected[(slice(None), *AT_LIMIT)] = expected[(slice(None), *INF_PIXEL)] = 0.0
    np.testing.assert_array_equal(depth, expected)
    assert (depth[:, SKY_ROWS + 1 :] > 5.0).all()  # the wall, about 7 m ahead
    assert (open_scene(fixture, max_depth=20.0).depth([0])[0, :SKY_ROWS] == 0).all()


def test_float16_depth_is_accepted(fixture):
    path = fixture.folder / "depth_left" / "000002_left_depth.npy"
    np.save(path, fixture.depth[2].astype(np.float16))
    depth = open_scene(fixture).depth([2])[0]
    np.testing.assert_allclose(depth[SKY_ROWS + 1 :], fixture.depth[2, SKY_ROWS + 1 :], rtol=1e-3)
    assert (depth[:SKY_ROWS] == 0).all()


@pytest.mark.parametrize(
    "content,needle",
    [
        (np.zeros((H, W), np.float64), "depth dtype float64, expected float32"),
        (np.zeros((H, W), np.uint16), "depth dtype uint16, expected float32"),
        (np.zeros((H, W, 1), np.float32), "expected \\[H, W\\] = \\[24, 32\\]"),
        (b"\x93NUMPY garbage", "cannot read depth"),
        (None, "depth file is missing"),
    ],
    ids=["float64", "uint16", "shape", "corrupt", "missing"],
)
def test_bad_depth_raises_naming_the_file(fixture, content, needle):
    path = fixture.folder / "depth_left" / "000003_left_depth.npy"
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    scene = open_scene(fixture)
    with pytest.raises(InputError, match=needle) as info:
        scene.depth([0, 3])
    assert info.value.path == str(path)


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda lines: lines[:2] + [" ".join(lines[2].split()[:6])] + lines[3:], "line 3: expected 7 values"),
        (lambda lines: lines[:1] + ["1 2 3 a b c d"] + lines[2:], "line 2: not a number"),
        (lambda lines: lines[:4] + ["0 0 nan 0 0 0 1"] + lines[5:], "line 5: non-finite"),
        (lambda lines: lines[:3] + ["0 0 0 0 0 0 2"] + lines[4:], "line 4: quaternion norm 2, expected a unit"),
        (lambda lines: ["0 0 0 0 0 0 0"] + lines[1:], "line 1: quaternion norm 0"),
        (lambda lines: [], "holds no lines of tx ty tz qx qy qz qw"),
        (None, "file is missing"),
    ],
    ids=["six_values", "not_numbers", "nan", "scaled_quaternion", "zero_quaternion", "empty", "missing"],
)
def test_bad_pose_file_raises_naming_it(fixture, edit, needle):
    path = fixture.folder / "pose_left.txt"
    if edit is None:
        path.unlink()
    else:
        path.write_text("\n".join(edit(path.read_text().splitlines())))
    with pytest.raises(InputError, match=needle) as info:
        open_scene(fixture)
    assert info.value.path == str(path)


def test_pose_and_frame_counts_must_agree_and_frames_exist(fixture):
    path = fixture.folder / "pose_left.txt"
    lines = path.read_text()
    path.write_text("\n".join(lines.splitlines()[:-1]))
    with pytest.raises(InputError, match="8 '\\*_left.png' frames, but pose_left.txt has 7") as info:
        open_scene(fixture)
    assert info.value.path == str(fixture.folder / "image_left")
    path.write_text(lines)
    frame = fixture.folder / "image_left" / "000002_left.png"
    frame.rename(fixture.folder / "image_left" / "000099_left.png")  # all frames, but not 0..7
    with pytest.raises(InputError, match="frame image is missing") as info:
        open_scene(fixture)
    assert info.value.path == str(frame)


def test_missing_or_corrupt_frame_raises_naming_it(fixture):
    frame = fixture.folder / "image_left" / "000004_left.png"
    data = frame.read_bytes()
    frame.write_bytes(data[: len(data) // 2])
    scene = open_scene(fixture)
    with pytest.raises(InputError, match="cannot decode") as info:
        scene.frames([3, 4])
    assert info.value.path == str(frame)
    frame.unlink()
    with pytest.raises(InputError, match="frames, but") as info:
        open_scene(fixture)


def test_right_camera_scene(tmp_path):
    left = write_trajectory(tmp_path)
    write_trajectory(tmp_path, camera="right")
    scene = TartanAirReader(tmp_path, cameras=["left", "right"]).open_scene(f"{SCENE}/right")
    assert scene.name == f"{SCENE}/right" and scene.num_frames == T
    np.testing.assert_array_equal(scene.frames([0])[0], left.rgb[0])


def test_end_to_end_writes_metric_depth_and_cameras(fixture, tmp_path):
    out = tmp_path / "out"
    overrides = {
        "reader.test_fraction": 0.0,
        "reader.val_fraction": 0.0,
        "clips": {"frames_per_clip": T, "stride": T, "frame_step": 1, "max_short_side": None},
    }
    args = ["--dataset", "tartanair", "--root", str(fixture.root), "--out", str(out), "--manifest", "none"]
    assert main([*args, "--no-progress", *cli_overrides(overrides)]) == 0
    (sample,) = wds.WebDataset(glob.glob(str(out / "train" / "*.tar")), shardshuffle=False)
    record = decode_record(sample)
    assert record.meta.dataset == "tartanair" and record.meta.scene == SCENE and record.meta.metric
    assert record.meta.licence == "CC-BY-4.0" and record.meta.fps == 10.0
    assert record.meta.depth_source == "gt" and record.meta.pose_source == "gt"
    assert record.dynamic_mask[:, SKY_ROWS + 1 :].mean() < 0.05  # a static wall: flow agrees with the cameras
    assert record.track_xyz.shape[1] == T and record.track_visible.any()
    np.testing.assert_allclose(record.K, np.tile(K_PX, (T, 1, 1)), atol=1e-5)
    wall = record.depth[:, SKY_ROWS + 1 :] > 0
    assert wall.mean() > 0.9 and (record.depth[:, :SKY_ROWS] == 0).all()
    truth = fixture.depth[:, SKY_ROWS + 1 :]
    assert np.median(np.abs(record.depth[:, SKY_ROWS + 1 :][wall] - truth[wall]) / truth[wall]) < 2e-3  # float16
    point = np.array([WALL - 1.0, 0.5, -1.5])  # NED world
    uv, z = project_points(
        torch.from_numpy(NED_TO_READER_WORLD @ point).float()[None],
        torch.from_numpy(record.c2w.astype(np.float32)),
        torch.from_numpy(record.K.astype(np.float32)),
    )
    expected = [project_ned(point, pose) for pose in fixture.poses]
    np.testing.assert_allclose(uv[:, 0].numpy(), [p for p, _ in expected], atol=1e-3)
    np.testing.assert_allclose(z[:, 0].numpy(), [d for _, d in expected], atol=1e-4)
