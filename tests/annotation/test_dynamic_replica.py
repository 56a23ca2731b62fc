"""Dynamic Replica reader: native jgz annotations (PyTorch3D cameras, NDC intrinsics), float16-in-PNG16 depth and
per-frame ``.pth`` tracks, to the project conventions; and one end-to-end annotation run."""

from __future__ import annotations

import glob
import gzip
import json
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
from annotation.readers.dynamic_replica import DynamicReplicaReader
from d4s.data.schema import decode_record
from d4s.geometry import project_points
from tests.annotation.conftest import cli_overrides

T, H, W, SEQ = 8, 48, 64, "seqa"  # 8 frames: flow masks need 2 * quality.flow_gap (4) frames
FOCAL_NDC, PP_NDC = np.array([2.5, 2.25]), np.array([0.25, -0.5])  # ndc_isotropic, s = min(H, W) / 2 = 24
K_PX = np.array([[60.0, 0.0, 26.0], [0.0, 54.0, 36.0], [0.0, 0.0, 1.0]])  # f * 24, (32, 24) - pp * 24
PLANE_Z = 3.0  # the scene: the world plane z = 3, textured
BASELINE = 0.1
NAN_TRACK, HIDDEN_TRACK = 0, 1


def native_cameras(camera: str) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch3D ``R [T,3,3]``, ``T [T,3]`` (``X_cam = X_world R + T``, camera +X left, +Y up): a tilted camera
    that pans and drifts; the right camera sits ``BASELINE`` m to the left camera's right (its -X)."""
    R = np.stack([Rotation.from_rotvec([0.05, 0.1 + 0.02 * t, 0.03]).as_matrix() for t in range(T)])
    centres = np.array([[0.03 * t, 0.01 * t, 0.0] for t in range(T)])
    if camera == "right":
        centres = centres - BASELINE * R[:, :, 0]  # camera +X (left) in world is column 0 of R
    return R, -np.einsum("ti,tij->tj", centres, R)


def native_project(points: np.ndarray, R: np.ndarray, T_: np.ndarray) -> np.ndarray:
    """Pixels ``[N, 2]`` by the PyTorch3D route: view coords, NDC (+X left, +Y up), then isotropic NDC to pixels."""
    cam = points @ R + T_
    ndc = FOCAL_NDC * cam[:, :2] / cam[:, 2:] + PP_NDC
    return np.array([W / 2, H / 2]) - ndc * (min(H, W) / 2)


def native_depth(R: np.ndarray, T_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-depth ``[H, W]`` of the plane at pixel centres and the world points seen there ``[H, W, 3]``."""
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    s = min(H, W) / 2
    rays = np.stack([((W / 2 - u) / s - PP_NDC[0]) / FOCAL_NDC[0], ((H / 2 - v) / s - PP_NDC[1]) / FOCAL_NDC[1]], -1)
    rays = np.concatenate([rays, np.ones((H, W, 1))], -1)  # view coords at Z = 1
    normal = R.T @ np.array([0.0, 0.0, 1.0])  # X_world . e_z = (X_cam - T) R^T e_z
    z = (PLANE_Z + T_ @ normal) / (rays @ normal)
    return z, (z[..., None] * rays - T_) @ R.T


def texture(world: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[..., 3]`` painted on the plane, so that flow sees the camera motion."""
    x, y = world[..., 0], world[..., 1]
    a = 0.5 + 0.5 * np.sin(14 * x) * np.cos(11 * y)
    b = 0.5 + 0.5 * np.sin(9 * x + 7 * y)
    return (np.stack([a, b, 1 - a], -1) * 200 + 25).astype(np.uint8)


def float16_png(path, metres: np.ndarray) -> None:
    """Write metres ``[H, W]`` as a PNG16 whose raw bits are float16 (the Dynamic Replica encoding)."""
    cv2.imwrite(str(path), metres.astype(np.float16).view(np.uint16))


@dataclass
class Fixture:
    root: object
    split_dir: object
    R: dict  # camera -> [T,3,3] native
    T: dict  # camera -> [T,3] native
    depth: dict  # camera -> [T,H,W] metres before float16 rounding
    tracks: np.ndarray  # [T,N,3] world points as stored (left camera)
    visible: np.ndarray  # [T,N] bool as stored


def write_tracks(folder, R, T_) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ``trajectories/<t:06d>.pth``: points on the plane and one above it that moves."""
    _, world = native_depth(R[0], T_[0])
    points = world[[6, 20, 30, 40, 12], [8, 30, 38, 14, 34]]
    tracks = np.repeat(points[None], T, 0)
    tracks[:, 4] += np.array([0.0, 0.0, -0.5]) + np.arange(T)[:, None] * [0.02, 0.0, 0.0]  # a mover in front
    tracks[2, NAN_TRACK] = np.nan
    visible = np.ones(tracks.shape[:2], bool)
    visible[[0, 3], HIDDEN_TRACK] = False
    (folder / "trajectories").mkdir()
    for t in range(T):
        uv = native_project(tracks[t], R[t], T_[t])
        traj_2d = np.concatenate([uv, np.zeros((len(uv), 1))], 1)
        torch.save(
            {
                "traj_3d_world": torch.from_numpy(tracks[t]).float(),
                "traj_2d": torch.from_numpy(traj_2d).float(),
                "verts_inds_vis": torch.from_numpy(visible[t]),
                "instances": torch.zeros(len(uv), dtype=torch.int64),
            },
            folder / "trajectories" / f"{t:06d}.pth",
        )
    return tracks.astype(np.float32), visible


def write_dataset(root, split="train") -> Fixture:
    """A native Dynamic Replica split with one sequence, both cameras; returns what was written."""
    split_dir = root / split
    entries, Rs, Ts, depths = [], {}, {}, {}
    tracks = visible = None
    for camera in ("left", "right"):
        folder = split_dir / f"{SEQ}_{camera}"
        (folder / "images").mkdir(parents=True)
        (folder / "depths").mkdir()
        Rs[camera], Ts[camera] = R, T_ = native_cameras(camera)
        maps = []
        for t in range(T):
            z, world = native_depth(R[t], T_[t])
            z[0, 0] = 0.0  # invalid
            maps.append(z)
            image, depth = (
                f"{SEQ}_{camera}/images/{SEQ}-{t:04d}.png",
                f"{SEQ}_{camera}/depths/{SEQ}_{t:04d}.geometric.png",
            )
            Image.fromarray(texture(world)).save(split_dir / image)
            float16_png(split_dir / depth, z)
            entries.append(
                {
                    "sequence_name": SEQ,
                    "camera_name": camera,
                    "frame_number": t,
                    "frame_timestamp": t / 30,
                    "image": {"path": image, "size": [H, W]},
                    "depth": {"path": depth, "scale_adjustment": 1.0, "mask_path": None},
                    "mask": {"path": f"{SEQ}_{camera}/masks/{SEQ}_{t:04d}.png"},
                    "viewpoint": {
                        "R": R[t].tolist(),
                        "T": T_[t].tolist(),
                        "focal_length": FOCAL_NDC.tolist(),
                        "principal_point": PP_NDC.tolist(),
                        "intrinsics_format": "ndc_isotropic",
                    },
                }
            )
        depths[camera] = np.stack(maps)
        if camera == "left":
            tracks, visible = write_tracks(folder, R, T_)
    entries.sort(key=lambda e: (e["frame_number"], e["camera_name"]))  # interleaved, as in the release
    write_annotations(split_dir, entries)
    return Fixture(root, split_dir, Rs, Ts, depths, tracks, visible)


def write_annotations(split_dir, entries) -> None:
    with gzip.open(split_dir / f"frame_annotations_{split_dir.name}.jgz", "wt", encoding="utf8") as file:
        json.dump(entries, file)


def read_entries(split_dir) -> list[dict]:
    with gzip.open(split_dir / f"frame_annotations_{split_dir.name}.jgz", "rt", encoding="utf8") as file:
        return json.load(file)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("dynamic_replica"))


@pytest.fixture
def fresh(tmp_path):
    return write_dataset(tmp_path)


def open_scene(fixture, camera="left"):
    return DynamicReplicaReader(fixture.root).open_scene(f"train/{SEQ}_{camera}")


def test_listing_splits_and_scene_kinds(tmp_path):
    for split in ("train", "valid"):
        write_dataset(tmp_path, split)
    (tmp_path / "real").mkdir()  # not read
    reader = make_reader("dynamic_replica", tmp_path)
    names = [f"{s}/{SEQ}_{c}" for s in ("train", "valid") for c in ("left", "right")]
    assert reader.scene_names() == names
    assert [reader.split_of(n) for n in names] == ["train", "train", "val", "val"]
    left, right = reader.open_scene(names[0]), reader.open_scene(names[1])
    assert (left.has_tracks, right.has_tracks) == (True, False)
    assert left.has_depth and right.has_depth and not left.has_dynamic_mask and not right.has_dynamic_mask
    with pytest.raises(NotImplementedError):
        right.tracks([0])
    with pytest.raises(ValueError, match="train/zzz_left"):
        reader.split_of("train/zzz_left")
    with pytest.raises(InputError, match="no train/, valid/ or test/"):
        DynamicReplicaReader(tmp_path / "elsewhere").scene_names()


def test_a_split_is_read_only_when_one_of_its_scenes_is_used(tmp_path):
    for split in ("train", "valid"):
        write_dataset(tmp_path, split)
    broken = tmp_path / "valid" / "frame_annotations_valid.jgz"
    broken.write_bytes(b"\x1f\x8b not gzip")
    reader = DynamicReplicaReader(tmp_path)
    assert reader.split_of(f"train/{SEQ}_right") == "train"
    assert reader.open_scene(f"train/{SEQ}_left").num_frames == T  # valid/ is never read
    with pytest.raises(InputError, match="cannot read gzipped JSON") as info:
        reader.scene_names()
    assert info.value.path == str(broken)


@pytest.mark.parametrize("camera", ["left", "right"])
def test_cameras_project_known_points_with_proper_rotations(dataset, camera):
    scene = open_scene(dataset, camera)
    assert (scene.num_frames, scene.height, scene.width, scene.metric, scene.caption) == (T, H, W, True, "")
    assert scene.fps == pytest.approx(30.0) and scene.licence.startswith("unverified")
    np.testing.assert_allclose(scene.timestamps, np.arange(T) / 30)
    assert scene.K.dtype == np.float32 and scene.c2w.dtype == np.float32
    np.testing.assert_allclose(scene.K, np.tile(K_PX, (T, 1, 1)), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(scene.c2w[:, :3, :3]), 1.0, atol=1e-6)
    # the known pose: OpenCV x, y are PyTorch3D -X, -Y; z is shared; the centre solves X R + T = 0
    R, T_ = dataset.R[camera], dataset.T[camera]
    expected = np.tile(np.eye(4), (T, 1, 1))
    expected[:, :3, :3] = R * [-1.0, -1.0, 1.0]
    expected[:, :3, 3] = -np.einsum("ti,tji->tj", T_, R)
    np.testing.assert_allclose(scene.c2w, expected, atol=1e-6)
    points = dataset.tracks[0, 1:]  # on the plane and in front of it, all in view
    native = np.stack([native_project(points.astype(np.float64), R[t], T_[t]) for t in range(T)])
    assert ((native > 0) & (native < [W, H])).all()
    uv, z = project_points(torch.from_numpy(points), torch.from_numpy(scene.c2w), torch.from_numpy(scene.K))
    np.testing.assert_allclose(uv.numpy(), native, atol=1e-3)
    assert (z > 0).all()
    # the check discriminates: the widely used mistake (w2c = [R^T | T], no axis flip) misprojects every point
    wrong_w2c = np.tile(np.eye(4), (T, 1, 1))
    wrong_w2c[:, :3, :3], wrong_w2c[:, :3, 3] = R.transpose(0, 2, 1), T_
    wrong = torch.from_numpy(np.linalg.inv(wrong_w2c)).float()
    uv_wrong, _ = project_points(torch.from_numpy(points), wrong, torch.from_numpy(scene.K))
    assert (np.linalg.norm(uv_wrong.numpy() - native, axis=-1) > 1.0).all()


def test_frames_are_rgb(dataset):
    frames = open_scene(dataset).frames([2, 4])
    assert frames.shape == (2, H, W, 3) and frames.dtype == np.uint8
    expected = np.asarray(Image.open(dataset.split_dir / f"{SEQ}_left/images/{SEQ}-0004.png"))
    np.testing.assert_array_equal(frames[1], expected)


@pytest.mark.parametrize("camera", ["left", "right"])
def test_depth_is_float16_metres_with_zero_invalid(dataset, camera):
    depth = open_scene(dataset, camera).depth([1, 5])
    assert depth.shape == (2, H, W) and depth.dtype == np.float32
    known = dataset.depth[camera][[1, 5]]
    np.testing.assert_allclose(depth, known, rtol=2**-11)  # float16 rounding
    assert (depth[:, 0, 0] == 0).all() and (depth.reshape(2, -1)[:, 1:] > 2.0).all()


def test_depth_inf_is_invalid(fresh):
    z = fresh.depth["left"][3].copy()
    z[5, 7] = np.inf
    float16_png(fresh.split_dir / f"{SEQ}_left/depths/{SEQ}_0003.geometric.png", z)
    depth = open_scene(fresh).depth([3])[0]
    assert depth[5, 7] == 0 and np.isfinite(depth).all()


def test_tracks_keep_visibility_and_drop_non_finite(dataset):
    scene = open_scene(dataset)
    xyz, visible = scene.tracks(range(T))
    n = dataset.tracks.shape[1]
    kept = [i for i in range(n) if i != NAN_TRACK]
    assert xyz.shape == (n - 1, T, 3) and xyz.dtype == np.float32 and visible.dtype == bool
    np.testing.assert_array_equal(xyz, dataset.tracks[:, kept].transpose(1, 0, 2))
    np.testing.assert_array_equal(visible, dataset.visible[:, kept].T)
    assert not visible[kept.index(HIDDEN_TRACK), [0, 3]].any() and visible.sum() == visible.size - 2
    xyz, visible = scene.tracks([0, 3])  # the NaN lies in frame 2
    assert xyz.shape == (n, 2, 3) and not visible[HIDDEN_TRACK].any()


def test_missing_or_corrupt_frames_and_depth_raise_naming_them(fresh):
    depths = fresh.split_dir / f"{SEQ}_left" / "depths"
    (depths / f"{SEQ}_0002.geometric.png").unlink()
    (depths / f"{SEQ}_0001.geometric.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cv2.imwrite(str(depths / f"{SEQ}_0003.geometric.png"), np.zeros((H, W), np.uint8))
    cv2.imwrite(str(depths / f"{SEQ}_0004.geometric.png"), np.full((H, W), 0xFE00, np.uint16))  # a float16 NaN
    cv2.imwrite(str(depths / f"{SEQ}_0005.geometric.png"), np.zeros((H, W + 1), np.uint16))
    scene = open_scene(fresh)
    for t, needle in ((2, "missing"), (1, "cannot decode"), (3, "16-bit"), (4, "float16 metres"), (5, "65x48")):
        with pytest.raises(InputError, match=needle) as info:
            scene.depth([0, t])
        assert info.value.path == str(depths / f"{SEQ}_{t:04d}.geometric.png")
    image = fresh.split_dir / f"{SEQ}_left" / "images" / f"{SEQ}-0001.png"
    image.write_bytes(image.read_bytes()[:60])
    with pytest.raises(InputError, match="cannot decode") as info:
        scene.frames([1])
    assert info.value.path == str(image)
    image.unlink()
    with pytest.raises(InputError, match="missing") as info:
        open_scene(fresh)
    assert info.value.path == str(image)


def edit_first_left(entry, key, value):
    if entry["camera_name"] == "left" and entry["frame_number"] == 1:
        *parents, name = key.split(".")
        target = entry
        for part in parents:
            target = target[part]
        if value is None:
            del target[name]
        else:
            target[name] = value


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("viewpoint.R", None, "missing key 'viewpoint.R'"),
        ("frame_timestamp", None, "missing key 'frame_timestamp'"),
        ("viewpoint.intrinsics_format", "ndc_norm_image_bounds", "expected 'ndc_isotropic'"),
        ("viewpoint.T", [0.0, 1.0], r"viewpoint.T: expected shape \[3\]"),
        ("viewpoint.R", np.diag([1.0, 1.0, -1.0]).tolist(), "determinant"),
        ("viewpoint.T", [0.0, "x", 1.0], "not numeric"),
        ("viewpoint.focal_length", [float("nan"), 1.0], "non-finite"),
        ("image.size", [H, W + 2], "different image.size"),
        ("depth.scale_adjustment", 2.0, "scale_adjustment"),
        ("frame_number", 7, "frame_number must run"),
    ],
)
def test_bad_annotations_raise_naming_the_file_and_key(fresh, key, value, needle):
    entries = read_entries(fresh.split_dir)
    for entry in entries:
        edit_first_left(entry, key, value)
    write_annotations(fresh.split_dir, entries)
    reader = DynamicReplicaReader(fresh.root)
    assert reader.scene_names() == [f"train/{SEQ}_left", f"train/{SEQ}_right"]  # listing still works
    for _ in range(2):  # raised on every open, not only the first
        with pytest.raises(InputError, match=needle) as info:
            reader.open_scene(f"train/{SEQ}_left")
        assert info.value.path == str(fresh.split_dir / "frame_annotations_train.jgz")
    reader.open_scene(f"train/{SEQ}_right")  # the other camera is unaffected


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda e: e.pop("camera_name"), "missing key 'camera_name'"),
        (lambda e: e.update(camera_name="centre"), "expected one of"),
    ],
)
def test_bad_camera_names_raise_when_listing(fresh, change, needle):
    entries = read_entries(fresh.split_dir)
    change(entries[3])
    write_annotations(fresh.split_dir, entries)
    with pytest.raises(InputError, match=needle) as info:
        DynamicReplicaReader(fresh.root).scene_names()
    assert info.value.path == str(fresh.split_dir / "frame_annotations_train.jgz")


def test_missing_or_corrupt_annotation_file(fresh):
    path = fresh.split_dir / "frame_annotations_train.jgz"
    path.write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(InputError, match="cannot read gzipped JSON") as info:
        DynamicReplicaReader(fresh.root).scene_names()
    assert info.value.path == str(path)
    with gzip.open(path, "wt") as file:
        json.dump({"frames": []}, file)
    with pytest.raises(InputError, match="JSON list"):
        DynamicReplicaReader(fresh.root).scene_names()
    path.unlink()
    with pytest.raises(InputError, match="missing") as info:
        DynamicReplicaReader(fresh.root).scene_names()
    assert info.value.path == str(path)


def rewrite_tracks(fixture, t, **changes):
    path = fixture.split_dir / f"{SEQ}_left" / "trajectories" / f"{t:06d}.pth"
    data = torch.load(path, weights_only=True)
    data.update(changes)
    torch.save({k: v for k, v in data.items() if v is not None}, path)
    return path


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"traj_3d_world": None}, "missing key 'traj_3d_world'"),
        ({"verts_inds_vis": None}, "missing key 'verts_inds_vis'"),
        ({"verts_inds_vis": torch.ones(5, dtype=torch.uint8)}, r"expected bool \[5\], got torch.uint8"),
        ({"traj_3d_world": torch.zeros(5, 2)}, r"expected float \[N, 3\]"),
        ({"traj_3d_world": [[0.0, 0.0, 0.0]] * 5}, "expected a tensor"),
        ({"traj_3d_world": torch.zeros(4, 3), "verts_inds_vis": torch.ones(4, dtype=torch.bool)}, "4 tracks"),
    ],
)
def test_bad_track_files_raise_naming_them(fresh, changes, needle):
    path = rewrite_tracks(fresh, 2, **changes)
    scene = open_scene(fresh)
    scene.tracks([0, 1])  # other frames are fine
    with pytest.raises(InputError, match=needle) as info:
        scene.tracks([0, 2])
    assert info.value.path == str(path)


def test_missing_or_corrupt_track_file(fresh):
    path = fresh.split_dir / f"{SEQ}_left" / "trajectories" / "000004.pth"
    path.write_bytes(b"PK\x03\x04 broken")
    scene = open_scene(fresh)
    with pytest.raises(InputError, match="cannot read") as info:
        scene.tracks([4])
    assert info.value.path == str(path)
    path.unlink()
    with pytest.raises(InputError, match="missing") as info:
        scene.tracks([4])
    assert info.value.path == str(path)


def test_end_to_end_shards_hold_the_known_depth_and_cameras(dataset, tmp_path):
    out = tmp_path / "out"
    overrides = {"clips": {"frames_per_clip": T, "stride": T, "frame_step": 1, "max_short_side": None}}
    args = ["--dataset", "dynamic_replica", "--root", str(dataset.root), "--out", str(out)]
    assert main([*args, "--manifest", "none", "--no-progress", *cli_overrides(overrides)]) == 0
    samples = list(wds.WebDataset(sorted(glob.glob(str(out / "train" / "*.tar"))), shardshuffle=False))
    records = {record.meta.scene: record for record in map(decode_record, samples)}
    assert sorted(records) == [f"train/{SEQ}_left", f"train/{SEQ}_right"]
    for camera in ("left", "right"):
        record = records[f"train/{SEQ}_{camera}"]
        R, T_ = dataset.R[camera], dataset.T[camera]
        valid = record.depth > 0
        assert valid.mean() > 0.9 and record.meta.metric
        np.testing.assert_allclose(record.depth[valid], dataset.depth[camera][valid], rtol=2e-3)
        np.testing.assert_allclose(record.K, np.tile(K_PX, (T, 1, 1)), atol=1e-4)
        np.testing.assert_allclose(record.c2w[:, :3, :3], R * [-1.0, -1.0, 1.0], atol=1e-5)
        np.testing.assert_allclose(record.c2w[:, :3, 3], -np.einsum("ti,tji->tj", T_, R), atol=1e-5)
    left, right = records[f"train/{SEQ}_left"], records[f"train/{SEQ}_right"]
    assert left.track_xyz.shape == (dataset.tracks.shape[1] - 1, T, 3) and right.track_xyz is None
    np.testing.assert_array_equal(left.track_visible, dataset.visible[:, 1:].T)
