"""Virtual KITTI 2 reader: native jpg / PNG16-centimetre / text-camera drives to the project conventions."""

import glob
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from scipy.spatial.transform import Rotation

from annotation.__main__ import main
from annotation.errors import InputError
from annotation.readers import make_reader
from annotation.readers.vkitti2 import VKITTI2Reader
from d4s.data.schema import decode_record
from d4s.geometry import project_points
from tests.annotation.conftest import cli_overrides

T, H, W = 5, 24, 32
BASELINE = 0.532725  # metres between Camera_0 and Camera_1 (docs/datasets.md)
FX, FY, CX, CY = 31.0, 29.0, 15.5, 11.0  # fx != fy and cx != cy, so swapped columns would show
SKY = (slice(0, 4), slice(None))  # rows 0..3 are sky in every frame
INTRINSIC_HEADER = "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"
EXTRINSIC_HEADER = "frame cameraID r1,1 r1,2 r1,3 t1 r2,1 r2,2 r2,3 t2 r3,1 r3,2 r3,3 t3 0 0 0 1"
K_NATIVE = np.array([[FX, 0.0, CX], [0.0, FY, CY], [0.0, 0.0, 1.0]])


def native_w2c(camera: int) -> np.ndarray:
    """``[T, 4, 4]`` world-to-camera (x_cam = R X + t): a drive forward with a slow yaw and a fixed pitch;
    Camera_1 sits ``BASELINE`` metres to the right of Camera_0."""
    w2c = np.tile(np.eye(4), (T, 1, 1))
    for t in range(T):
        R = Rotation.from_rotvec([0.05, 0.02 * t, 0.0]).as_matrix()
        centre = np.array([0.1 * t, -1.5, 0.8 * t]) + R.T @ [BASELINE * camera, 0.0, 0.0]
        w2c[t, :3, :3], w2c[t, :3, 3] = R, -R @ centre
    return w2c


def hand_project(point, w2c) -> np.ndarray:
    """Native projection by hand: ``K (R X + t)`` divided by z."""
    cam = w2c[:3, :3] @ point + w2c[:3, 3]
    return (K_NATIVE @ cam)[:2] / cam[2]


def hand_unproject(pixel, depth, w2c) -> np.ndarray:
    """The world point at ``pixel`` with z-depth ``depth`` metres in the native convention."""
    cam = depth * np.linalg.inv(K_NATIVE) @ [pixel[0], pixel[1], 1.0]
    return w2c[:3, :3].T @ (cam - w2c[:3, 3])


def write_tables(folder, w2c_by_camera: dict[int, np.ndarray], K: np.ndarray) -> None:
    """``intrinsic.txt`` and ``extrinsic.txt`` rows ordered frame by frame, camera by camera, as released."""
    intrinsic, extrinsic = [INTRINSIC_HEADER], [EXTRINSIC_HEADER]
    for t in range(len(K)):
        for camera, w2c in w2c_by_camera.items():
            values = (K[t, 0, 0], K[t, 1, 1], K[t, 0, 2], K[t, 1, 2])
            intrinsic.append(f"{t} {camera} " + " ".join(repr(float(v)) for v in values))
            extrinsic.append(f"{t} {camera} " + " ".join(repr(float(v)) for v in w2c[t].ravel()))
    (folder / "intrinsic.txt").write_text("\n".join(intrinsic) + "\n")
    (folder / "extrinsic.txt").write_text("\n".join(extrinsic) + "\n")


def write_frames(folder, camera: str, rgb: np.ndarray, depth_cm: np.ndarray) -> None:
    """``rgb [T,H,W,3]`` uint8 as JPEG and ``depth_cm [T,H,W]`` uint16 as 16-bit PNG in the native folders."""
    for kind in ("rgb", "depth"):
        (folder / "frames" / kind / camera).mkdir(parents=True)
    for t in range(len(rgb)):
        Image.fromarray(rgb[t]).save(folder / "frames" / "rgb" / camera / f"rgb_{t:05d}.jpg", quality=95)
        cv2.imwrite(str(folder / "frames" / "depth" / camera / f"depth_{t:05d}.png"), depth_cm[t])


@dataclass
class Fixture:
    root: object
    folder: object
    w2c: dict  # camera index -> [T,4,4] world-to-camera as written
    depth_m: np.ndarray  # [T,H,W] metres before centimetre quantisation (sky pixels hold 0)
    depth_cm: np.ndarray  # [T,H,W] uint16 as written


def write_drive(root, world="Scene01", variation="clone") -> Fixture:
    """A native two-camera drive variation with depth 2..6 m, sky rows and flat-colour frames."""
    folder = root / world / variation
    folder.mkdir(parents=True)
    w2c = {0: native_w2c(0), 1: native_w2c(1)}
    write_tables(folder, w2c, np.tile(K_NATIVE, (T, 1, 1)))
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    depth_m = np.stack([2.0 + 0.1 * u + 0.037 * v + 0.013 * t for t in range(T)])
    depth_m[(slice(None), *SKY)] = 0.0
    depth_cm = np.round(depth_m * 100).astype(np.uint16)
    depth_cm[(slice(None), *SKY)] = 65535
    for camera in (0, 1):
        rgb = np.stack([np.full((H, W, 3), (40 * t, 90 + 60 * camera, 200), np.uint8) for t in range(T)])
        write_frames(folder, f"Camera_{camera}", rgb, depth_cm)
    return Fixture(root, folder, w2c, depth_m, depth_cm)


@pytest.fixture
def fixture(tmp_path):
    return write_drive(tmp_path)


def open_scene(fixture, camera=0):
    return VKITTI2Reader(fixture.root).open_scene(f"Scene01/clone/Camera_{camera}")


def test_listing_and_splits(tmp_path):
    for scene in ("Scene01/clone", "Scene01/fog", "Scene18/clone"):
        (tmp_path / scene / "frames" / "rgb" / "Camera_0").mkdir(parents=True)
    (tmp_path / "Scene01" / "clone" / "frames" / "rgb" / "Camera_1").mkdir()
    (tmp_path / "notes" / "x" / "frames" / "rgb" / "Camera_0").mkdir(parents=True)  # not a SceneXX folder
    reader = make_reader("vkitti2", tmp_path, val_scenes=["Scene01/fog"], test_scenes=["Scene18"])
    assert reader.name == "vkitti2" and "CC-BY-NC-SA-3.0" in reader.licence
    names = ["Scene01/clone/Camera_0", "Scene01/clone/Camera_1", "Scene01/fog/Camera_0", "Scene18/clone/Camera_0"]
    assert reader.scene_names() == names
    assert [reader.split_of(n) for n in names] == ["train", "train", "val", "test"]
    assert {make_reader("vkitti2", tmp_path).split_of(n) for n in names} == {"train"}
    with pytest.raises(ValueError, match="Scene01/clone/Camera_2"):
        reader.split_of("Scene01/clone/Camera_2")
    with pytest.raises(ValueError, match="both name"):
        VKITTI2Reader(tmp_path, val_scenes=["Scene18"], test_scenes=["Scene18"])
    with pytest.raises(ValueError, match="SceneXX"):
        VKITTI2Reader(tmp_path, test_scenes=["clone"])
    with pytest.raises(InputError, match="no SceneXX") as info:
        VKITTI2Reader(tmp_path / "elsewhere").scene_names()
    assert info.value.path == str(tmp_path / "elsewhere")


@pytest.mark.parametrize("camera", [0, 1])
def test_cameras_match_the_native_ones_and_project_known_points(fixture, camera):
    scene = open_scene(fixture, camera)
    assert (scene.num_frames, scene.height, scene.width, scene.fps, scene.metric) == (T, H, W, 10.0, True)
    assert (scene.has_depth, scene.has_dynamic_mask, scene.has_tracks) == (True, False, False)
    assert scene.c2w.dtype == np.float32 and scene.K.dtype == np.float32
    np.testing.assert_allclose(scene.timestamps, np.arange(T) / 10)
    np.testing.assert_allclose(scene.K, np.tile(K_NATIVE, (T, 1, 1)), rtol=1e-7)
    w2c = fixture.w2c[camera]
    np.testing.assert_allclose(scene.c2w, np.linalg.inv(w2c), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(scene.c2w[:, :3, :3]), 1.0, atol=1e-6)
    pixels = [(3.5, 5.5), (20.25, 9.0), (30.0, 22.5), (12.0, 17.75)]
    points = np.array([hand_unproject(p, 4.0 + i, w2c[0]) for i, p in enumerate(pixels)])
    expected = np.stack([[hand_project(x, w2c[t]) for x in points] for t in range(T)])
    uv, z = project_points(torch.from_numpy(points).float(), torch.from_numpy(scene.c2w), torch.from_numpy(scene.K))
    np.testing.assert_allclose(uv.numpy(), expected, atol=1e-3)
    np.testing.assert_allclose(uv.numpy()[0], pixels, atol=1e-3)
    np.testing.assert_allclose(z.numpy()[0], [4.0, 5.0, 6.0, 7.0], rtol=1e-5)


def test_the_stereo_pair_is_a_baseline_apart(fixture):
    left, right = open_scene(fixture, 0).c2w, open_scene(fixture, 1).c2w
    relative = np.linalg.inv(left) @ right  # Camera_1 in Camera_0's frame: BASELINE metres along +x (right)
    np.testing.assert_allclose(relative[:, :3, 3], np.tile([BASELINE, 0, 0], (T, 1)), atol=1e-5)


def test_frames_are_rgb(fixture):
    frames = open_scene(fixture, 1).frames([2, 4])
    assert frames.shape == (2, H, W, 3) and frames.dtype == np.uint8
    assert np.abs(frames[0].astype(int) - [80, 150, 200]).max() <= 3  # JPEG: loosely
    assert np.abs(frames[1].astype(int) - [160, 150, 200]).max() <= 3


def test_depth_decodes_centimetres_and_sky_is_invalid(fixture):
    depth = open_scene(fixture).depth([1, 4])
    assert depth.shape == (2, H, W) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, fixture.depth_m[[1, 4]], atol=0.005 + 1e-6)  # centimetre steps
    np.testing.assert_allclose(depth[:, 4:], fixture.depth_cm[[1, 4], 4:] / 100, rtol=1e-6)
    assert (depth[(slice(None), *SKY)] == 0).all() and (depth[:, 4:] > 0).all()


def test_missing_or_corrupt_frames_raise_naming_them(fixture):
    depths, rgbs = fixture.folder / "frames" / "depth" / "Camera_0", fixture.folder / "frames" / "rgb" / "Camera_0"
    (depths / "depth_00002.png").unlink()
    (depths / "depth_00001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cv2.imwrite(str(depths / "depth_00003.png"), fixture.depth_cm[3].astype(np.uint8))
    cv2.imwrite(str(depths / "depth_00004.png"), fixture.depth_cm[4, :, :-1])
    jpg = (rgbs / "rgb_00001.jpg").read_bytes()
    (rgbs / "rgb_00001.jpg").write_bytes(jpg[: len(jpg) // 2])
    scene = open_scene(fixture)
    for t, needle in ((2, "missing"), (1, "cannot decode"), (3, "16-bit"), (4, "image is 31x24")):
        with pytest.raises(InputError, match=needle) as info:
            scene.depth([0, t])
        assert info.value.path == str(depths / f"depth_{t:05d}.png")
    with pytest.raises(InputError, match="cannot decode") as info:
        scene.frames([1])
    assert info.value.path == str(rgbs / "rgb_00001.jpg")
    (rgbs / "rgb_00004.jpg").unlink()
    with pytest.raises(InputError, match="missing") as info:
        open_scene(fixture)
    assert info.value.path == str(rgbs / "rgb_00004.jpg")


def edit_line(path, line: int, edit) -> None:
    """Replace line ``line`` (0 = header) of a text file by ``edit(old_line)``."""
    lines = path.read_text().splitlines()
    lines[line] = edit(lines[line])
    path.write_text("\n".join(lines) + "\n")


def replace_values(first: int, values) -> callable:
    """An ``edit_line`` edit that puts ``values`` in the fields from index ``first`` on."""
    return lambda line: " ".join(line.split()[:first] + [str(v) for v in values] + line.split()[first + len(values) :])


REFLECTION = np.diag([1.0, 1.0, -1.0, 1.0]).ravel()
SCALED = np.diag([2.0, 2.0, 2.0, 1.0]).ravel()


@pytest.mark.parametrize(
    "file,line,edit,needle",
    [
        ("intrinsic.txt", 0, lambda _: "frame cameraID fx fy cx cy", "expected the header 'frame cameraID K"),
        ("extrinsic.txt", 0, lambda h: h.replace("t3", "t_3"), "expected the header 'frame cameraID r1,1"),
        ("extrinsic.txt", 0, lambda h: h.rsplit(" ", 4)[0], "expected the header"),
        ("extrinsic.txt", 3, lambda row: row + " 0", "line 4: expected 18 values .a camera row., got 19"),
        ("intrinsic.txt", 2, replace_values(2, ["nan_value"]), "line 3: not a number"),
        ("intrinsic.txt", 1, replace_values(0, [7]), "frame numbers must be 0..4"),
        ("intrinsic.txt", 1, replace_values(2, [-31.0]), "focal lengths"),
        ("extrinsic.txt", 5, replace_values(2, [float("nan")]), "non-finite"),
        ("extrinsic.txt", 3, replace_values(2, REFLECTION), "determinant"),
        ("extrinsic.txt", 3, replace_values(2, SCALED), "orthonormal"),
        ("extrinsic.txt", 1, replace_values(14, [0, 0, 1, 1]), "last row"),
    ],
    ids=[
        "intrinsic_header",
        "extrinsic_header_name",
        "extrinsic_header_short",
        "field_count",
        "not_a_number",
        "frame_numbers",
        "negative_focal",
        "nan_pose",
        "reflection",
        "scaled_rotation",
        "bottom_row",
    ],
)
def test_bad_camera_files_raise_naming_them(fixture, file, line, edit, needle):
    edit_line(fixture.folder / file, line, edit)
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace("[", r"\[")) as info:
        open_scene(fixture)
    assert info.value.path == str(fixture.folder / file)


def test_missing_camera_rows_and_files(fixture):
    extrinsic = fixture.folder / "extrinsic.txt"
    lines = extrinsic.read_text().splitlines()
    extrinsic.write_text("\n".join(line for line in lines if not line.startswith("4 0 ")) + "\n")
    with pytest.raises(InputError, match="4 frames, but intrinsic.txt has 5") as info:
        open_scene(fixture)
    assert info.value.path == str(extrinsic)
    extrinsic.write_text("\n".join(line for line in lines if line.split()[1] != "0") + "\n")
    with pytest.raises(InputError, match="no rows for cameraID 0"):
        open_scene(fixture)
    open_scene(fixture, 1)  # the other camera is intact
    extrinsic.unlink()
    with pytest.raises(InputError, match="missing") as info:
        open_scene(fixture)
    assert info.value.path == str(extrinsic)


def test_annotation_run_writes_metric_depth_and_cameras(tmp_path):
    """End to end with the shipped config (flow masks and tracks) on a toy4d static scene written natively."""
    steps, size = 8, 48
    toy = make_reader("toy4d", None, num_scenes=1, num_frames=steps, size=size, seed=3, dynamic_fraction=0.0)
    source = toy.open_scene(toy.scene_names()[0])
    folder = tmp_path / "vkitti2" / "Scene02" / "sunset"
    folder.mkdir(parents=True)
    write_tables(folder, {0: np.linalg.inv(source.c2w.astype(np.float64))}, source.K.astype(np.float64))
    depth_cm = np.round(source.depth(range(steps)) * 100).astype(np.uint16)
    write_frames(folder, "Camera_0", source.frames(range(steps)), depth_cm)
    out = tmp_path / "out"
    overrides = {"clips": {"frames_per_clip": steps, "stride": steps, "frame_step": 1, "max_short_side": None}}
    args = ["--dataset", "vkitti2", "--root", str(tmp_path / "vkitti2"), "--out", str(out), "--manifest", "none"]
    assert main([*args, "--no-progress", *cli_overrides(overrides)]) == 0
    (sample,) = wds.WebDataset(glob.glob(str(out / "train" / "*.tar")), shardshuffle=False)
    record = decode_record(sample)
    assert record.meta.dataset == "vkitti2" and record.meta.scene == "Scene02/sunset/Camera_0" and record.meta.metric
    expected = depth_cm / 100
    valid = record.depth > 0
    assert valid.mean() > 0.9 and (expected[valid] > 0).all()
    np.testing.assert_allclose(record.depth[valid], expected[valid], rtol=2e-3)  # float16 storage
    np.testing.assert_allclose(record.c2w, source.c2w, atol=1e-5)
    np.testing.assert_allclose(record.K, source.K, rtol=1e-6)
    # masks and tracks come from flow on JPEG frames (their accuracy is the pipeline's, tested elsewhere)
    assert record.dynamic_mask.shape == (steps, size, size) and record.track_visible.any()
