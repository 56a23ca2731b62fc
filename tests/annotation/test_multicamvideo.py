"""MultiCamVideo reader: native Unreal camera JSON + mp4 videos to the project conventions, and the real-video path.

The fixture places ten Unreal cameras around a point in a left-handed Unreal world (X forward, Y right, Z up, cm)
and writes what the release writes: row-vector transform strings and one mp4 per camera. References are computed in
the native convention (Unreal look-at and projection); the converted world is the Unreal world with Y negated, in
metres (the reader's documented convention).
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from annotation.__main__ import main
from annotation.config import load_config
from annotation.errors import InputError
from annotation.pipeline import load_clip
from annotation.readers import make_reader
from d4s.data.schema import decode_record, sample_key
from d4s.geometry import project_points
from d4s.utils.video import write_video
from tests.annotation.conftest import cli_overrides, saved_real_video_outputs
from tests.annotation.test_estimators import write_megasam_output

T, SIZE, FOCAL_MM = 4, 24, 24.0
FOLDER = "f24_aperture5"
CAMS = [f"cam{i:02d}" for i in range(1, 11)]
TARGET_CM = np.array([0.0, 0.0, 100.0])  # the character: 1 m above the origin of the Unreal world
F_PX = FOCAL_MM / 23.76 * SIZE


def unreal_look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Unreal camera axes ``[3, 3]`` (columns forward X, right Y, up Z in Unreal world coordinates), level roll
    about the world direction ``up`` (Unreal Z by default; right = up x forward in the left-handed world)."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(up, forward)
    right /= np.linalg.norm(right)
    return np.stack([forward, right, np.cross(forward, right)], axis=1)


def native_cameras(num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Unreal axes ``[T, 10, 3, 3]`` and positions ``[T, 10, 3]`` cm: cameras on a 5 m circle, drifting up."""
    axes, eyes = np.zeros((num_frames, 10, 3, 3)), np.zeros((num_frames, 10, 3))
    for t in range(num_frames):
        for c in range(10):
            angle = 2 * np.pi * c / 10 + 0.02 * t
            eyes[t, c] = [500 * np.cos(angle), 500 * np.sin(angle), 150 + 10 * t]
            axes[t, c] = unreal_look_at(eyes[t, c], TARGET_CM + [20.0 * c, 0.0, 0.0])
    return axes, eyes


def transform_string(axes: np.ndarray, eye: np.ndarray) -> str:
    """What the release stores: the rows of the Unreal row-vector transform (camera axes, then the position)."""
    rows = [[*axes[:, 0], 0], [*axes[:, 1], 0], [*axes[:, 2], 0], [*eye, 1]]
    return " ".join("[" + " ".join(f"{v:.9f}" for v in row) + "]" for row in rows)


def colour(c: int, t: int) -> tuple[int, int, int]:
    return 20 + 20 * c, 40 + 40 * t, 128


@dataclass
class Fixture:
    root: Path
    scene: Path
    axes: np.ndarray  # [T,10,3,3] Unreal camera axes
    eyes: np.ndarray  # [T,10,3] cm


def write_extrinsics(path: Path, axes: np.ndarray, eyes: np.ndarray) -> None:
    cameras = {
        f"frame{t}": {cam: transform_string(axes[t, c], eyes[t, c]) for c, cam in enumerate(CAMS)}
        for t in range(len(axes))
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cameras))


def write_scene(root: Path, folder: str = FOLDER, scene: str = "scene1") -> Fixture:
    """A native scene of T frames of SIZE x SIZE: camera c at time t is the flat colour ``colour(c, t)``."""
    path = root / "train" / folder / scene
    axes, eyes = native_cameras(T)
    write_extrinsics(path / "cameras" / "camera_extrinsics.json", axes, eyes)
    (path / "videos").mkdir(parents=True)
    for c, cam in enumerate(CAMS):
        frames = np.array([np.full((SIZE, SIZE, 3), colour(c, t), np.uint8) for t in range(T)])
        write_video(path / "videos" / f"{cam}.mp4", frames, fps=15)
    return Fixture(root, path, axes, eyes)


def native_projection(
    points_cm: np.ndarray, axes: np.ndarray, eye: np.ndarray, size: int = SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``[N, 2]`` and forward distances ``[N]`` m of Unreal points by hand in ``size x size`` frames of the
    23.76 mm sensor: u right along Y, v down along -Z."""
    local = (points_cm - eye) @ axes  # (forward, right, up) cm
    focal = FOCAL_MM / 23.76 * size
    u = size / 2 + focal * local[:, 1] / local[:, 0]
    v = size / 2 - focal * local[:, 2] / local[:, 0]
    return np.stack([u, v], axis=1), local[:, 0] / 100


def to_converted_world(points_cm: np.ndarray) -> np.ndarray:
    """The reader's world: Unreal with Y negated (right-handed X forward, Y left, Z up), metres."""
    return points_cm * [1.0, -1.0, 1.0] / 100


def known_c2w(axes: np.ndarray, eye: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world in the reader's world: x = right, y = -up, z = forward, each axis Y-negated."""
    c2w = np.eye(4)
    c2w[:3, :3] = np.diag([1.0, -1.0, 1.0]) @ np.stack([axes[:, 1], -axes[:, 2], axes[:, 0]], axis=1)
    c2w[:3, 3] = to_converted_world(eye)
    return c2w


@pytest.fixture
def fixture(tmp_path) -> Fixture:
    return write_scene(tmp_path / "mcv")


def reader(fixture: Fixture, **options):
    return make_reader("multicamvideo", fixture.root, frames_per_video=T, **options)


def test_scene_names_and_splits(fixture):
    write_scene(fixture.root, "f50_aperture2.4", "scene7")
    names = reader(fixture).scene_names()
    assert names == sorted(f"{f}/{cam}" for f in (f"{FOLDER}/scene1", "f50_aperture2.4/scene7") for cam in CAMS)
    assert reader(fixture).split_of(names[0]) == "train"
    views = reader(fixture, multiview=True).scene_names()
    assert len(views) == 2 * (10 + T) and f"{FOLDER}/scene1/frame{T - 1}" in views
    with pytest.raises(ValueError, match="frame0"):
        reader(fixture).open_scene(f"{FOLDER}/scene1/frame0")  # multi-view scenes only when asked for
    with pytest.raises(ValueError, match="cam11"):
        reader(fixture).open_scene(f"{FOLDER}/scene1/cam11")
    with pytest.raises(InputError, match="no train/"):
        make_reader("multicamvideo", fixture.root / "train").scene_names()


def test_camera_scene_matches_native_projection(fixture):
    scene = reader(fixture).open_scene(f"{FOLDER}/scene1/cam04")
    c = 3
    assert (scene.height, scene.width, scene.num_frames, scene.fps, scene.metric) == (SIZE, SIZE, T, 15.0, True)
    assert not (scene.has_depth or scene.has_dynamic_mask or scene.has_tracks) and scene.caption == ""
    np.testing.assert_allclose(scene.timestamps, np.arange(T) / 15.0)
    expected_K = [[F_PX, 0, SIZE / 2], [0, F_PX, SIZE / 2], [0, 0, 1]]
    np.testing.assert_allclose(scene.K, np.repeat([expected_K], T, axis=0), rtol=1e-6)
    assert scene.c2w.shape == (T, 4, 4) and scene.c2w.dtype == np.float32
    np.testing.assert_allclose(np.linalg.det(scene.c2w[:, :3, :3]), 1.0, atol=1e-5)
    for t in range(T):
        np.testing.assert_allclose(scene.c2w[t], known_c2w(fixture.axes[t, c], fixture.eyes[t, c]), atol=1e-6)

    rng = np.random.default_rng(0)
    points_cm = TARGET_CM + rng.uniform(-80, 80, (20, 3))
    for t in range(T):
        pixels, distance = native_projection(points_cm, fixture.axes[t, c], fixture.eyes[t, c])
        assert ((pixels > 0) & (pixels < SIZE)).all()  # the points are in view
        uv, z = project_points(
            torch.from_numpy(to_converted_world(points_cm)),
            torch.from_numpy(scene.c2w[t]).double(),
            torch.from_numpy(scene.K[t]).double(),
        )
        np.testing.assert_allclose(uv.numpy(), pixels, atol=1e-3)
        np.testing.assert_allclose(z.numpy(), distance, rtol=1e-5)

    frames = scene.frames([2, 0, 3])
    assert frames.shape == (3, SIZE, SIZE, 3) and frames.dtype == np.uint8
    for frame, t in zip(frames, [2, 0, 3]):
        assert np.abs(frame.astype(int) - colour(c, t)).max() <= 3  # H.264 of a flat colour


def test_multiview_scene_is_ten_cameras_at_one_time(fixture):
    t = 2
    scene = reader(fixture, multiview=True).open_scene(f"{FOLDER}/scene1/frame{t}")
    assert scene.num_frames == 10
    np.testing.assert_allclose(scene.timestamps, np.full(10, t / 15.0))
    for c in range(10):
        np.testing.assert_allclose(scene.c2w[c], known_c2w(fixture.axes[t, c], fixture.eyes[t, c]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(scene.c2w[:, :3, :3]), 1.0, atol=1e-5)
    frames = scene.frames(range(10))
    for c in range(10):
        assert np.abs(frames[c].astype(int) - colour(c, t)).max() <= 3


def test_camera_file_is_converted_once_per_folder(fixture):
    multicam = reader(fixture, multiview=True)
    first = multicam.open_scene(f"{FOLDER}/scene1/cam01")
    first.c2w[:] = 0.0  # a scene's poses are its own copy
    camera_file(fixture).write_text("{}")  # not read again: the folder's conversion is kept
    np.testing.assert_allclose(
        multicam.open_scene(f"{FOLDER}/scene1/frame1").c2w[0],
        known_c2w(fixture.axes[1, 0], fixture.eyes[1, 0]),
        atol=1e-6,
    )
    with pytest.raises(InputError, match="frame0 .. frame"):  # a new reader reads the file again, loudly
        reader(fixture).open_scene(f"{FOLDER}/scene1/cam01")


def camera_file(fixture: Fixture) -> Path:
    return fixture.scene / "cameras" / "camera_extrinsics.json"


def edit_json(fixture: Fixture, edit) -> None:
    data = json.loads(camera_file(fixture).read_text())
    edit(data)
    camera_file(fixture).write_text(json.dumps(data))


def flip_forward(data: dict) -> None:
    """Negate the forward axis of frame1/cam01: an orthonormal matrix with det -1."""
    rows = data["frame1"]["cam01"].split("] [")
    rows[0] = "[" + " ".join(str(-float(v)) for v in rows[0].strip("[").split()[:3]) + " 0"
    data["frame1"]["cam01"] = "] [".join(rows)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d.pop(f"frame{T - 1}"), f"frame0 .. frame{T - 1}"),
        (lambda d: d["frame2"].pop("cam10"), "frame2: expected exactly the cameras cam01 .. cam10"),
        (lambda d: d["frame0"].update(cam03=[1.0, 0.0]), "frame0/cam03: expected a string"),
        (lambda d: d["frame1"].update(cam02="[1 0 0 0] [0 1 0 0] [0 0 1 0]"), "frame1/cam02: expected a string"),
        (lambda d: d["frame1"].update(cam02="[1 0 0 0] [0 1 0 0] [0 0 1 0] [1 2 3 1 5]"), "four rows of four"),
        (
            lambda d: d["frame1"].update(cam02="[1 0 0 1] [0 1 0 0] [0 0 1 0] [1 2 3 1]"),
            "frame1/cam02: expected the last column 0 0 0 1",
        ),
        (lambda d: d["frame1"].update(cam02="[1 0 0 0] [0 1 0 0] [0 0 x 0] [1 2 3 1]"), "frame1/cam02: not a number"),
        (lambda d: d["frame0"].update(cam05="[2 0 0 0] [0 1 0 0] [0 0 1 0] [1 2 3 1]"), "not orthonormal"),
        (flip_forward, "determinant -1"),
    ],
)
def test_loud_camera_json_checks(fixture, edit, needle):
    edit_json(fixture, edit)
    with pytest.raises(InputError, match=needle) as info:
        reader(fixture).open_scene(f"{FOLDER}/scene1/cam01")
    assert info.value.path == str(camera_file(fixture))


def test_frame_count_must_match(fixture):
    with pytest.raises(InputError, match="frame0 .. frame80") as info:
        make_reader("multicamvideo", fixture.root).open_scene(f"{FOLDER}/scene1/cam01")  # default: 81 frames
    assert info.value.path == str(camera_file(fixture))


def test_missing_and_corrupt_camera_file(fixture):
    camera_file(fixture).write_text('{"frame0": ')
    with pytest.raises(InputError, match="cannot read the camera JSON") as info:
        reader(fixture).open_scene(f"{FOLDER}/scene1/cam01")
    assert info.value.path == str(camera_file(fixture))
    camera_file(fixture).unlink()
    with pytest.raises(InputError, match="camera file is missing") as info:
        reader(fixture).open_scene(f"{FOLDER}/scene1/cam01")
    assert info.value.path == str(camera_file(fixture))


@pytest.mark.parametrize(
    ("folder", "needle"), [("f24mm", "f<focal mm>_aperture<f-number>"), ("f85_aperture2.4", "not one of the released")]
)
def test_focal_folder_is_parsed_loudly(tmp_path, folder, needle):
    fixture = write_scene(tmp_path / "mcv", folder)
    with pytest.raises(InputError, match=needle) as info:
        reader(fixture).open_scene(f"{folder}/scene1/cam01")
    assert info.value.path == str(fixture.scene.parent)


def test_missing_corrupt_short_and_non_square_videos(fixture):
    videos = fixture.scene / "videos"
    (videos / "cam02.mp4").write_bytes(b"not an mp4 at all")
    with pytest.raises(InputError, match="cannot decode") as info:
        reader(fixture).open_scene(f"{FOLDER}/scene1/cam02")
    assert info.value.path == str(videos / "cam02.mp4")

    write_video(videos / "cam03.mp4", np.zeros((T - 1, SIZE, SIZE, 3), np.uint8), fps=15)  # one frame short
    scene = reader(fixture).open_scene(f"{FOLDER}/scene1/cam03")
    with pytest.raises(InputError, match=f"asked for frame {T - 1}") as info:
        scene.frames(range(T))
    assert info.value.path == str(videos / "cam03.mp4")

    write_video(videos / "cam04.mp4", np.zeros((T, SIZE, SIZE + 2, 3), np.uint8), fps=15)
    with pytest.raises(InputError, match=f"{SIZE + 2}x{SIZE}.*square") as info:
        reader(fixture).open_scene(f"{FOLDER}/scene1/cam04")
    assert info.value.path == str(videos / "cam04.mp4")

    multiview = reader(fixture, multiview=True).open_scene(f"{FOLDER}/scene1/frame0")  # cam01 decides the size
    with pytest.raises(InputError, match=f"{SIZE + 2}x{SIZE}, the scene's are {SIZE}x{SIZE}") as info:
        multiview.frames([0, 3])
    assert info.value.path == str(videos / "cam04.mp4")

    (videos / "cam05.mp4").unlink()
    with pytest.raises(InputError, match="video is missing") as info:
        reader(fixture).open_scene(f"{FOLDER}/scene1/cam05")
    assert info.value.path == str(videos / "cam05.mp4")


# ---------------------------------------------------------------- end to end

E2E_T, TOY_SIZE, CROP = 10, 56, 4  # toy4d renders 56 px at 60 deg; the centred 48 px crop has fx = 24/23.76 * 48
MEGASAM_SCALE = 3.0  # unknown to the pipeline


def test_cameras_and_estimator_outputs_become_metric_shards(tmp_path):
    """Native Unreal cameras (look-at in cm, left-handed world) in a toy4d room, which renders the frames and depth
    from the OpenCV poses ``known_c2w`` derives from them; the shard's cameras must project Unreal points where the
    Unreal cameras see them."""
    toy = make_reader("toy4d", None, num_scenes=1, num_frames=49, size=TOY_SIZE, seed=5, dynamic_fraction=0.0)
    toy_scene = toy.open_scene(toy.scene_names()[0])
    size = TOY_SIZE - 2 * CROP
    assert abs(FOCAL_MM / 23.76 * size - toy_scene.K[0, 0, 0]) < 0.02  # the crop matches the sensor model

    # The toy room is the reader's world; its first camera and focus, as Unreal points (cm, Y negated), start a
    # dolly towards the focus (so the cameras stay inside the room) while the look-at target slides sideways.
    placement = toy_scene.layout.placement
    focus = placement[:3, 3] + toy_scene.layout.scene_scale * placement[:3, 2]
    start_cm, focus_cm = (np.array([1.0, -1.0, 1.0]) * 100 * p for p in (placement[:3, 3], focus))
    eyes = np.array([start_cm + 0.02 * t * (focus_cm - start_cm) for t in range(E2E_T)])
    targets = np.array([focus_cm + [3.0 * t, 0.0, 0.0] for t in range(E2E_T)])
    up = [0.0, 1.0, 0.0]  # the toy room's up (-y, its y points down) in the Unreal world
    axes = np.array([unreal_look_at(eye, target, up) for eye, target in zip(eyes, targets)])
    c2w = np.array([known_c2w(a, eye) for a, eye in zip(axes, eyes)])
    toy_scene.c2w[:E2E_T] = c2w  # render from the native cameras (nothing is rendered yet)
    crop = (slice(None), slice(CROP, TOY_SIZE - CROP), slice(CROP, TOY_SIZE - CROP))
    depth, frames = toy_scene.depth(range(E2E_T))[crop], toy_scene.frames(range(E2E_T))[crop]

    root = tmp_path / "mcv"
    scene_dir = root / "train" / FOLDER / "scene1"
    every_camera = (np.repeat(x[:, None], len(CAMS), axis=1) for x in (axes, eyes))  # cam01 is the one annotated
    write_extrinsics(scene_dir / "cameras" / "camera_extrinsics.json", *every_camera)
    (scene_dir / "videos").mkdir()
    write_video(scene_dir / "videos" / "cam01.mp4", frames, fps=15, crf=1)
    for cam in CAMS[1:]:  # no estimator outputs for these: skipped as bad input
        (scene_dir / "videos" / f"{cam}.mp4").write_bytes((scene_dir / "videos" / "cam01.mp4").read_bytes())

    name = f"{FOLDER}/scene1/cam01"
    key = sample_key("multicamvideo", name, 0)
    estimators, megasam = saved_real_video_outputs(tmp_path, key, depth)
    overrides = {
        "reader.frames_per_video": E2E_T,
        "clips": {"frames_per_clip": E2E_T, "stride": E2E_T, "frame_step": 1, "max_short_side": None},
        **estimators,
    }
    config = load_config("multicamvideo", overrides=overrides)
    clip = load_clip(make_reader("multicamvideo", root, **config.reader).open_scene(name), range(E2E_T), config)
    megasam_c2w = c2w.copy()
    megasam_c2w[:, :3, 3] /= MEGASAM_SCALE
    write_megasam_output(
        megasam / "outputs_cvd" / f"{key}_sgd_cvd_hr.npz", clip, megasam_c2w, clip.K[0], depth / MEGASAM_SCALE
    )

    out = tmp_path / "out"
    argv = ["--dataset", "multicamvideo", "--root", str(root), "--out", str(out), "--manifest", "none"]
    assert main([*argv, "--no-progress", *cli_overrides(overrides)]) == 0
    (sample,) = wds.WebDataset(glob.glob(str(out / "train" / "*.tar")), shardshuffle=False)
    record = decode_record(sample)

    assert record.meta.scene == name and record.meta.metric and record.meta.pose_source == "gt"
    assert record.meta.alignment["oracle"] == "megasam"
    valid = record.depth > 0
    assert valid.mean() > 0.9
    assert np.median(np.abs(record.depth[valid] - depth[valid]) / depth[valid]) < 2e-3  # float16 storage
    np.testing.assert_allclose(record.K[:, 0, 0], FOCAL_MM / 23.76 * size, rtol=1e-6)
    np.testing.assert_allclose(record.K[:, :2, 2], size / 2)
    np.testing.assert_allclose(record.c2w, c2w, atol=1e-5)  # the poses the frames and depth were rendered from
    points_cm = focus_cm + np.random.default_rng(1).uniform(-60, 60, (20, 3))
    for t in range(E2E_T):  # and the native projection, by hand in Unreal terms
        pixels, distance = native_projection(points_cm, axes[t], eyes[t], size)
        assert ((pixels > 0) & (pixels < size)).all()
        uv, z = project_points(
            torch.from_numpy(to_converted_world(points_cm)),
            torch.from_numpy(record.c2w[t]).double(),
            torch.from_numpy(record.K[t]).double(),
        )
        np.testing.assert_allclose(uv.numpy(), pixels, atol=2e-3)
        np.testing.assert_allclose(z.numpy(), distance, rtol=1e-5)
