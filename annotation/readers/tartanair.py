"""TartanAir (v1): synthetic, static, metric AirSim trajectories with ground-truth depth and camera poses.

Layout (docs/datasets.md, "TartanAir (v1)"; the official ``tartanair_tools`` README and ``data_type.md``)::

    <root>/<ENV>/{Easy,Hard}/P0xx/image_left/000000_left.png             RGB, 640x480
                                  depth_left/000000_left_depth.npy       z-depth, metres (sky ~1e4)
                                  pose_left.txt                          one line per frame: tx ty tz qx qy qz qw
                                  image_right/, depth_right/, pose_right.txt   the right camera (0.25 m baseline)

Segmentation (``seg_*``) and flow (``flow/``) are not read. Scene names are ``"<ENV>/<Easy|Hard>/<P0xx>"`` for
the left camera and ``"<ENV>/<Easy|Hard>/<P0xx>/right"`` for the right one (only when the reader is asked for it).

Native conventions: a pose line is the camera-to-world pose of the camera in **NED** axes (x forward, y right,
z down) for both the camera body and the world, translation in metres, the quaternion scalar-last (xyzw).
Intrinsics are fixed and stored nowhere: fx = fy = 320, cx = 320, cy = 240 px for 640x480 frames.

Conversion, done once when a scene is opened:

- quaternions are reordered to wxyz and turned into rotations (:func:`d4s.geometry.quat_to_rotmat`); a line whose
  quaternion is not unit-norm (within ``1e-3``) or holds a non-finite value is an InputError;
- both frames are re-expressed in OpenCV-style axes by conjugating with the axis permutation ``P`` (OpenCV
  x = NED y, y = NED z, z = NED x; ``det P = +1``): ``c2w = P c2w_ned P^T``. The world of a scene is therefore
  x = east, y = down, z = north of the NED world; the result is checked with :func:`check_c2w`;
- ``K`` is defined for the frame size read: the native K for 640x480, scaled by ``W / 640`` and ``H / 480``
  for a 4:3 resize of the frames (focal lengths stay square). Any other aspect ratio is an InputError (it is not
  TartanAir v1: v2 frames are 640x640). The principal point is taken as stated, in continuous pixel coordinates
  (``cx = W / 2`` is the image centre with pixel centres at ``+0.5``); whether AirSim means a half-pixel offset
  is **unverified**;
- depth is loaded as float32 metres; the dtype must be float32 (what loaders use) or float16 (the docs call the
  maps "16-bit", **unverified**); anything else, or a shape other than the frames', is an InputError. Values
  ``>= max_depth`` (sky, ~1e4; default 1000 m), non-finite or non-positive become 0 (invalid).

Frame rate: v1 does not state one; v2 documents 10 Hz, which is the default ``fps`` here (**unverified** for v1,
a reader option). Scenes are treated as static (mostly static, docs/datasets.md): no dynamic masks and no tracks; the
annotate config derives both from optical flow.

Splits: TartanAir v1 has no official train/val/test split. Whole environments go to one split (trajectories of
one environment share geometry), by a hash of the environment name: ``u = sha256(ENV)`` read as a number in
[0, 1); ``u < test_fraction`` is test, ``u < test_fraction + val_fraction`` is val, the rest is train.

Licence: the official ``castacks/tartanair_tools`` README licenses only the code (BSD-3-Clause). Third-party
dataset summaries report CC BY 4.0 for the data; this could not be confirmed on an official page here, so check
tartanair.org before redistributing.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from annotation.errors import InputError
from annotation.readers.base import ImageFileScene, Reader
from annotation.readers.images import load_image, stack_maps
from annotation.readers.native import read_text_table
from d4s.geometry import check_c2w, quat_to_rotmat, resize_intrinsics

FPS = 10.0  # v2's documented rate; v1 states none (unverified)
MAX_DEPTH = 1000.0  # metres; the sky is ~1e4
LICENCE = "CC-BY-4.0"  # reported by third parties, not confirmed on an official page (module doc)
NATIVE_SIZE = (480, 640)  # (H, W) of the frames the native intrinsics belong to
NATIVE_K = np.array([[320.0, 0.0, 320.0], [0.0, 320.0, 240.0], [0.0, 0.0, 1.0]])
CAMERAS = ("left", "right")
LEVELS = ("Easy", "Hard")
DEPTH_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
QUATERNION_ATOL = 1e-3  # allowed | |q| - 1 | of a stored quaternion
# Rows: OpenCV axes in NED coordinates (x_cv = y_ned, y_cv = z_ned, z_cv = x_ned).
NED_TO_OPENCV = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
_TRAJECTORY = re.compile(r"P\d{3}")


def c2w_from_ned_poses(path: Path, poses: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world ``[T, 4, 4]`` float32 metres from NED pose lines ``[T, 7]`` (xyzw quaternions).

    See the module doc for the conversion. Raises InputError naming ``path`` for a quaternion that is not
    unit-norm or a pose that does not come out as a proper rigid transform.
    """
    norms = np.linalg.norm(poses[:, 3:], axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > QUATERNION_ATOL)
    if bad.size:
        raise InputError(
            path, f"line {bad[0] + 1}: quaternion norm {norms[bad[0]]:.6g}, expected a unit quaternion (qx qy qz qw)"
        )
    wxyz = torch.from_numpy(poses[:, [6, 3, 4, 5]])
    c2w_ned = np.tile(np.eye(4), (len(poses), 1, 1))
    c2w_ned[:, :3, :3] = quat_to_rotmat(wxyz).numpy()
    c2w_ned[:, :3, 3] = poses[:, :3]
    permute = np.eye(4)
    permute[:3, :3] = NED_TO_OPENCV
    c2w = permute @ c2w_ned @ permute.T
    try:
        check_c2w(torch.from_numpy(c2w), f"poses converted from NED ({path.name})")
    except ValueError as error:
        raise InputError(path, str(error)) from error
    return c2w.astype(np.float32)


def intrinsics_for(path: Path, height: int, width: int) -> np.ndarray:
    """``K [3, 3]`` float64 pixels for frames of ``height x width``: the native K scaled to a 4:3 size.

    Raises InputError naming the frame ``path`` when the frames are not 4:3 (640x480 or a resize of it).
    """
    if width * NATIVE_SIZE[0] != height * NATIVE_SIZE[1]:
        raise InputError(path, f"frame is {width}x{height}; TartanAir v1 frames are 640x480 (or a 4:3 resize)")
    return resize_intrinsics(torch.from_numpy(NATIVE_K), NATIVE_SIZE, (height, width)).numpy()


def load_depth(path: Path, size: tuple[int, int], max_depth: float) -> np.ndarray:
    """A ``.npy`` depth map as float32 z-depth metres ``[H, W]`` (``size = (H, W)``); ``>= max_depth``, non-finite
    and non-positive values become 0 (invalid). Raises InputError naming ``path`` for a missing or unreadable
    file, a dtype other than float32/float16, or a shape other than ``size``."""
    try:
        raw = np.load(path, allow_pickle=False)
    except FileNotFoundError as error:
        raise InputError(path, "depth file is missing") from error
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise InputError(path, f"cannot read depth .npy ({error})") from error
    if not isinstance(raw, np.ndarray):
        raw.close()
        raise InputError(path, "expected a single .npy array of depth in metres, got an .npz archive")
    if raw.dtype not in DEPTH_DTYPES:
        raise InputError(path, f"depth dtype {raw.dtype}, expected float32 (or float16) metres")
    if raw.shape != tuple(size):
        raise InputError(path, f"depth shape {list(raw.shape)}, expected [H, W] = {list(size)} like the frames")
    depth = raw.astype(np.float32)
    invalid = ~np.isfinite(depth) | (depth <= 0) | (depth >= max_depth)
    depth[invalid] = 0.0
    return depth


class TartanAirScene(ImageFileScene):
    """One camera of one TartanAir trajectory (see the module doc for files and conventions)."""

    dataset = "tartanair"
    licence = LICENCE
    metric = True
    has_depth = True

    def __init__(self, folder: Path, name: str, camera: str, fps: float, max_depth: float):
        self.folder = folder
        self.name = name
        self.camera = camera
        self.fps = fps
        self._max_depth = max_depth
        pose_path = folder / f"pose_{camera}.txt"
        self.c2w = c2w_from_ned_poses(pose_path, read_text_table(pose_path, 7, "tx ty tz qx qy qz qw"))
        self.timestamps = np.arange(len(self.c2w)) / fps
        images = folder / f"image_{camera}"
        count = len(list(images.glob(f"*_{camera}.png")))
        if count != self.num_frames:
            raise InputError(images, f"{count} '*_{camera}.png' frames, but {pose_path.name} has {self.num_frames}")
        self._require_frame_files(pose_path.name)
        self.height, self.width = load_image(self._rgb_path(0)).shape[:2]
        K = intrinsics_for(self._rgb_path(0), self.height, self.width)
        self.K = np.tile(K, (self.num_frames, 1, 1)).astype(np.float32)

    def _rgb_path(self, t: int) -> Path:
        return self.folder / f"image_{self.camera}" / f"{t:06d}_{self.camera}.png"

    def _depth_path(self, t: int) -> Path:
        return self.folder / f"depth_{self.camera}" / f"{t:06d}_{self.camera}_depth.npy"

    def depth(self, indices: Sequence[int]) -> np.ndarray:
        """z-depth ``[t, H, W]`` float32 metres; sky (``>= max_depth``) and non-finite values are 0 (invalid)."""
        maps = [load_depth(self._depth_path(t), self.size, self._max_depth) for t in indices]
        return stack_maps(maps, self.size, np.float32)


class TartanAirReader(Reader):
    """TartanAir v1 trajectories under ``root/<ENV>/{Easy,Hard}/P0xx/``.

    Args:
        root: the folder that holds the environment folders.
        fps: frame rate to assume (v1 states none; 10 Hz is v2's, unverified for v1).
        max_depth: depth at or beyond this many metres is invalid (the sky is ~1e4 m).
        cameras: which cameras become scenes: ``["left"]`` or ``["left", "right"]``.
        val_fraction, test_fraction: shares of the environment-name hash range that go to val and test.
    """

    name = "tartanair"
    licence = LICENCE

    def __init__(
        self,
        root: str | Path,
        fps: float = FPS,
        max_depth: float = MAX_DEPTH,
        cameras: Sequence[str] = ("left",),
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
    ):
        super().__init__(root)
        if not (np.isfinite(fps) and fps > 0):
            raise ValueError(f"fps: must be a positive number of frames per second, got {fps}")
        if not (np.isfinite(max_depth) and max_depth > 0):
            raise ValueError(f"max_depth: must be a positive number of metres, got {max_depth}")
        unknown = sorted(set(cameras) - set(CAMERAS))
        if not cameras or unknown:
            raise ValueError(f"cameras: choose from {list(CAMERAS)}, got {list(cameras)}")
        if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction <= 1):
            raise ValueError(
                f"val_fraction, test_fraction: must be >= 0 and sum to <= 1, got {val_fraction}, {test_fraction}"
            )
        self.fps = float(fps)
        self.max_depth = float(max_depth)
        self.cameras = [camera for camera in CAMERAS if camera in cameras]
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    def _trajectories(self) -> list[str]:
        """``"<ENV>/<level>/<P0xx>"`` of every trajectory folder, sorted."""
        levels = [
            env / level
            for env in (self.root.iterdir() if self.root.is_dir() else [])
            if env.is_dir() and not env.name.startswith(".")
            for level in LEVELS
            if (env / level).is_dir()
        ]
        found = sorted(
            f"{level.parent.name}/{level.name}/{folder.name}"
            for level in levels
            for folder in level.iterdir()
            if folder.is_dir() and _TRAJECTORY.fullmatch(folder.name)
        )
        if not found:
            raise InputError(self.root, "no TartanAir trajectory folders <ENV>/{Easy,Hard}/P0xx/")
        return found

    def scene_names(self) -> list[str]:
        """One name per trajectory and camera (``.../P0xx`` left, ``.../P0xx/right`` right), sorted."""
        return sorted(
            trajectory if camera == "left" else f"{trajectory}/{camera}"
            for trajectory in self._trajectories()
            for camera in self.cameras
        )

    def _parse(self, name: str) -> tuple[Path, str]:
        """The trajectory folder and camera of a scene name."""
        parts = name.split("/")
        camera = parts.pop() if len(parts) == 4 and parts[3] == "right" else "left"
        folder = self.root.joinpath(*parts)
        if (
            len(parts) != 3
            or parts[1] not in LEVELS
            or not _TRAJECTORY.fullmatch(parts[2])
            or camera not in self.cameras
            or not folder.is_dir()
        ):
            raise ValueError(
                f"name: no TartanAir scene {name!r} under {self.root} with cameras {self.cameras} "
                "(expected '<ENV>/<Easy|Hard>/<P0xx>' or '.../<P0xx>/right')"
            )
        return folder, camera

    def split_of(self, name: str) -> str:
        """The split of the scene's environment, by a hash of the environment name (module doc)."""
        self._parse(name)
        env = name.split("/")[0]
        u = int.from_bytes(hashlib.sha256(env.encode()).digest()[:8], "big") / 2**64
        if u < self.test_fraction:
            return "test"
        return "val" if u < self.test_fraction + self.val_fraction else "train"

    def open_scene(self, name: str) -> TartanAirScene:
        """Read the scene's poses and check its frames exist (frames and depth are read lazily)."""
        folder, camera = self._parse(name)
        return TartanAirScene(folder, name, camera, self.fps, self.max_depth)
