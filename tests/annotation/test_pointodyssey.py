"""PointOdyssey reader: native jpg/png16/npz (float16) sequences to the project conventions."""

from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from annotation.errors import InputError
from annotation.readers import make_reader
from annotation.readers.pointodyssey import PointOdysseyReader
from d4s.geometry import project_points

T, H, W = 4, 24, 32
K_PX = np.array([[30.0, 0.0, 16.0], [0.0, 30.0, 12.0], [0.0, 0.0, 1.0]])
STATIC, MOVING = (10, 200, 30), (200, 40, 90)  # instance colours: left half static, right half moving
SKY_ROWS = 6  # rows 0..5 are black background
NAN_TRACK, INF_TRACK, INVALID_TRACK, HIDDEN_TRACK = 0, 1, 2, 3


def native_w2c() -> np.ndarray:
    """``[T, 4, 4]`` world-to-camera: a fixed tilt, a slow pan and a small sideways drift."""
    w2c = np.tile(np.eye(4), (T, 1, 1))
    tilt = Rotation.from_rotvec([0.2, 0.0, 0.0]).as_matrix()
    for t in range(T):
        w2c[t, :3, :3] = tilt @ Rotation.from_rotvec([0.0, 0.01 * t, 0.0]).as_matrix()
        w2c[t, :3, 3] = [0.02 * t, 0.0, 0.0]
    return w2c


def unproject(pixel, depth, w2c) -> np.ndarray:
    """The world point seen at ``pixel`` with z-depth ``depth`` (native convention: x_cam = R X + t)."""
    cam = depth * np.linalg.inv(K_PX) @ [pixel[0], pixel[1], 1.0]
    return w2c[:3, :3].T @ (cam - w2c[:3, 3])


def project(point, w2c) -> np.ndarray:
    """Native projection by hand: ``K (R X + t)``, divided by z (in float64, from stored float16 values)."""
    point, w2c = np.asarray(point, np.float64), np.asarray(w2c, np.float64)
    cam = w2c[:3, :3] @ point + w2c[:3, 3]
    return (K_PX @ cam)[:2] / cam[2]


@dataclass
class Fixture:
    root: object
    folder: object
    w2c: np.ndarray  # [T,4,4] as stored (float16 values)
    trajs_3d: np.ndarray  # [T,N,3] as stored
    depth_raw: np.ndarray  # [T,H,W] uint16
    depth_m: np.ndarray  # [T,H,W] the metres it encodes, before quantisation


def make_tracks(w2c: np.ndarray) -> np.ndarray:
    """World tracks ``[T, N, 3]``: 6 static on the static instance, 1 mover among them, 4 movers (and 1 static)
    on the moving instance, 1 mover on the black background."""
    static_pixels = [(3, 9), (5, 12), (8, 15), (11, 18), (6, 21), (12, 10)]
    tracks = [[unproject(p, 3.0, w2c[0])] * T for p in static_pixels]
    for pixel, step in [((9, 19), 0.03)] + [((20 + 2 * i, 10 + 3 * i), 0.04) for i in range(4)] + [((16, 2), 0.05)]:
        tracks.append([unproject(pixel, 3.0, w2c[0]) + [0.0, step * t, 0.0] for t in range(T)])
    tracks.append([unproject((26, 20), 3.0, w2c[0])] * T)  # a static point on the moving instance
    return np.array(tracks).transpose(1, 0, 2)


def write_sequence(root, split="train", seq="seq") -> Fixture:
    """A native PointOdyssey sequence; returns what was written."""
    folder = root / split / seq
    for sub in ("rgbs", "depths", "masks"):
        (folder / sub).mkdir(parents=True)
    w2c = native_w2c().astype(np.float16)
    trajs_3d = make_tracks(w2c.astype(np.float64)).astype(np.float16)
    trajs_2d = np.array([[project(x, w2c[t]) for x in trajs_3d[t]] for t in range(T)])  # from the stored values
    n = trajs_3d.shape[1]
    visibs, valids = np.ones((T, n), bool), np.ones((T, n), bool)
    trajs_3d[1, NAN_TRACK], trajs_3d[2, INF_TRACK, 1] = np.nan, np.inf
    trajs_2d[1, NAN_TRACK] = np.nan
    valids[3, INVALID_TRACK] = False
    visibs[0, HIDDEN_TRACK] = False
    np.savez(
        folder / "anno.npz",
        trajs_2d=trajs_2d.astype(np.float16),
        trajs_3d=trajs_3d,
        visibs=visibs,
        valids=valids,
        intrinsics=np.tile(K_PX, (T, 1, 1)).astype(np.float16),
        extrinsics=w2c,
    )
    mask = np.zeros((H, W, 3), np.uint8)
    mask[SKY_ROWS:, : W // 2], mask[SKY_ROWS:, W // 2 :] = STATIC, MOVING
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    depth_m = np.stack([1.5 + 0.01 * u + 0.02 * v + 0.1 * t for t in range(T)])
    depth_m[:, 0, 0] = 0.0
    depth_raw = np.round(depth_m / 1000 * 65535).astype(np.uint16)
    for t in range(T):
        rgb = np.full((H, W, 3), (60 * t, 100, 200), np.uint8)
        Image.fromarray(rgb).save(folder / "rgbs" / f"rgb_{t:05d}.jpg", quality=95)
        Image.fromarray(mask).save(folder / "masks" / f"mask_{t:05d}.png")
        cv2.imwrite(str(folder / "depths" / f"depth_{t:05d}.png"), depth_raw[t])
    return Fixture(root, folder, w2c, trajs_3d, depth_raw, depth_m)


@pytest.fixture
def fixture(tmp_path):
    return write_sequence(tmp_path)


def open_scene(fixture, **options):
    return PointOdysseyReader(fixture.root, **options).open_scene("train/seq")


def test_listing_and_splits(tmp_path):
    for split, seq in (("train", "b"), ("val", "a"), ("test", "c")):
        (tmp_path / split / seq).mkdir(parents=True)
    reader = make_reader("pointodyssey", tmp_path)
    assert reader.name == "pointodyssey" and reader.licence == "CC-BY-NC-SA-4.0"
    assert reader.scene_names() == ["test/c", "train/b", "val/a"]
    assert [reader.split_of(n) for n in reader.scene_names()] == ["test", "train", "val"]
    with pytest.raises(ValueError, match="train/zzz"):
        reader.split_of("train/zzz")
    with pytest.raises(InputError, match="no train/, val/, test/ folder of pointodyssey"):
        PointOdysseyReader(tmp_path / "elsewhere").scene_names()


def test_cameras_project_known_points_with_proper_rotations(fixture):
    scene = open_scene(fixture)
    assert (scene.num_frames, scene.height, scene.width, scene.fps, scene.metric) == (T, H, W, 30.0, True)
    assert scene.c2w.dtype == np.float32 and scene.K.dtype == np.float32
    np.testing.assert_allclose(scene.timestamps, np.arange(T) / 30)
    np.testing.assert_allclose(np.linalg.det(scene.c2w[:, :3, :3]), 1.0, atol=1e-6)
    points = fixture.trajs_3d[0, 4:].astype(np.float64)  # finite in frame 0
    expected = np.stack([[project(x, fixture.w2c[t]) for x in points] for t in range(T)])
    uv, z = project_points(torch.from_numpy(points).float(), torch.from_numpy(scene.c2w), torch.from_numpy(scene.K))
    np.testing.assert_allclose(uv.numpy(), expected, atol=0.02)  # float16 storage, re-orthonormalised rotation
    assert (z > 0).all()


def test_frames_are_rgb(fixture):
    frames = open_scene(fixture).frames([2])
    assert frames.shape == (1, H, W, 3) and frames.dtype == np.uint8
    assert np.abs(frames[0].astype(int) - [120, 100, 200]).max() <= 3


def test_depth_decodes_png16_to_metres_and_keeps_invalid_zero(fixture):
    depth = open_scene(fixture).depth([1, 3])
    assert depth.shape == (2, H, W) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, fixture.depth_raw[[1, 3]] / 65535 * 1000, rtol=1e-6)
    np.testing.assert_allclose(depth, fixture.depth_m[[1, 3]], atol=1000 / 65535 / 2 + 1e-6)
    assert (depth[:, 0, 0] == 0).all() and (depth[:, 1:, 1:] > 0).all()


def test_tracks_drop_non_finite_and_invalid_ones(fixture):
    scene = open_scene(fixture)
    n = fixture.trajs_3d.shape[1]
    xyz, visible = scene.tracks(range(T))
    kept = [i for i in range(n) if i not in (NAN_TRACK, INF_TRACK, INVALID_TRACK)]
    assert xyz.shape == (len(kept), T, 3) and xyz.dtype == np.float32 and visible.shape == (len(kept), T)
    np.testing.assert_array_equal(xyz, fixture.trajs_3d[:, kept].astype(np.float32).transpose(1, 0, 2))
    assert visible.dtype == bool and visible.sum() == visible.size - 1 and not visible[kept.index(HIDDEN_TRACK), 0]
    xyz, visible = scene.tracks([0])  # each defect lies outside frame 0
    assert xyz.shape == (n, 1, 3) and np.isfinite(xyz).all()
    xyz, _ = scene.tracks([0, 2])
    assert xyz.shape[0] == n - 1  # the NaN (frame 1) and invalid (frame 3) tracks are back, the inf one is not


def test_dynamic_mask_marks_the_moving_instance_only(fixture):
    masks = open_scene(fixture).dynamic_mask([0, 3])
    expected = np.zeros((H, W), bool)
    expected[SKY_ROWS:, W // 2 :] = True
    assert masks.shape == (2, H, W) and masks.dtype == bool
    np.testing.assert_array_equal(masks, np.stack([expected, expected]))


def test_dynamic_rule_options(fixture):
    assert not open_scene(fixture, motion_threshold=1.0).dynamic_mask([0]).any()  # nothing moves a metre
    # with any single moving vote enough, the static instance (one stray mover) turns dynamic; black never does
    masks = open_scene(fixture, moving_fraction=0.0).dynamic_mask([1])
    np.testing.assert_array_equal(masks[0], np.arange(H)[:, None].repeat(W, 1) >= SKY_ROWS)


def test_missing_or_corrupt_files_raise_naming_them(fixture):
    folder = fixture.folder
    (folder / "depths" / "depth_00002.png").unlink()
    (folder / "depths" / "depth_00001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cv2.imwrite(str(folder / "depths" / "depth_00003.png"), fixture.depth_raw[3].astype(np.uint8))
    jpg = (folder / "rgbs" / "rgb_00001.jpg").read_bytes()
    (folder / "rgbs" / "rgb_00001.jpg").write_bytes(jpg[: len(jpg) // 2])
    scene = open_scene(fixture)
    for t, needle in ((2, "missing"), (1, "cannot decode"), (3, "16-bit")):
        with pytest.raises(InputError, match=needle) as info:
            scene.depth([0, t])
        assert info.value.path == str(folder / "depths" / f"depth_{t:05d}.png")
    with pytest.raises(InputError, match="cannot decode") as info:
        scene.frames([1])
    assert info.value.path == str(folder / "rgbs" / "rgb_00001.jpg")
    (folder / "rgbs" / "rgb_00003.jpg").unlink()
    with pytest.raises(InputError, match="missing") as info:
        open_scene(fixture)
    assert info.value.path == str(folder / "rgbs" / "rgb_00003.jpg")


def rewrite_anno(folder, **changes):
    path = folder / "anno.npz"
    with np.load(path) as anno:
        arrays = dict(anno)
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"extrinsics": np.full((T, 4, 4), np.nan, np.float16)}, "non-finite"),
        ({"extrinsics": np.tile(np.diag([1.0, 1.0, -1.0, 1.0]), (T, 1, 1)).astype(np.float16)}, "determinant"),
        ({"intrinsics": None}, "missing array"),
        ({"intrinsics": np.zeros((T + 1, 3, 3), np.float16)}, "expected shape"),
    ],
    ids=["nan_extrinsics", "reflection", "no_intrinsics", "frame_count"],
)
def test_bad_annotations_raise_naming_anno(fixture, changes, needle):
    rewrite_anno(fixture.folder, **changes)
    with pytest.raises(InputError, match=needle) as info:
        open_scene(fixture)
    assert info.value.path == str(fixture.folder / "anno.npz")


def test_missing_or_corrupt_anno(fixture):
    anno = fixture.folder / "anno.npz"
    anno.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(InputError, match="cannot read") as info:
        open_scene(fixture)
    assert info.value.path == str(anno)
    anno.unlink()
    with pytest.raises(InputError, match="missing") as info:
        open_scene(fixture)
    assert info.value.path == str(anno)


def test_track_shape_mismatch_raises_when_tracks_are_read(fixture):
    rewrite_anno(fixture.folder, visibs=np.ones((T, 3), bool))
    scene = open_scene(fixture)
    with pytest.raises(InputError, match="visibs"):
        scene.tracks([0])
