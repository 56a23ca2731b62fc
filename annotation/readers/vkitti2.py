"""Virtual KITTI 2: synthetic stereo driving videos (clones of five KITTI drives) with metric depth and cameras.

Layout (``docs/datasets.md``, "Virtual KITTI 2")::

    <root>/SceneXX/<variation>/intrinsic.txt                          per frame and camera: fx fy cx cy (pixels)
                               extrinsic.txt                          per frame and camera: 4x4 world-to-camera
                               frames/rgb/Camera_{0,1}/rgb_00000.jpg  RGB frames (1242x375 in the release)
                               frames/depth/Camera_{0,1}/depth_00000.png  uint16 PNG, z-depth in centimetres

``<variation>`` is ``clone``, ``fog``, ``rain``, ``15-deg-left`` ... (any folder name is accepted). Each camera of
each variation is its own scene, named ``"SceneXX/<variation>/Camera_k"``; the other modalities in ``frames/``
(segmentation, flow, scene flow) and ``pose.txt``, ``bbox.txt`` are not read.

Text files (space separated, one header line, then one row per frame and camera, frames counted from 0):

- ``intrinsic.txt``: header exactly ``frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]``.
- ``extrinsic.txt``: header exactly ``frame cameraID r1,1 r1,2 r1,3 t1 r2,1 ... t3 0 0 0 1``; the 16 values are
  the row-major 4x4 **world-to-camera** matrix in OpenCV camera axes (x right, y down, z forward), metres.

Headers, field counts and frame numbering are checked loudly: the format was read from the dataset's
documentation and third-party loaders, not from a sample in this repository.

Conversion, done once when a scene is opened: ``K`` is built from ``fx fy cx cy`` as stored; ``c2w`` is the
rigid inverse of the stored world-to-camera matrix (both are checked: finite, last row ``[0, 0, 0, 1]``,
orthonormal rotation with det +1). Depth is ``v / 100`` metres; ``65535`` (655.35 m, sky and anything farther)
becomes 0 = invalid. Timestamps are ``frame / 10`` s: the clones follow KITTI, recorded at 10 fps (the dataset
does not store timestamps).

Dynamic objects: cars move, but the reader gives no dynamic masks (``has_dynamic_mask`` is False; the annotate
config derives masks from optical flow). Splits: the release has no official split; every scene is ``train``
unless the reader options name it in ``val_scenes`` / ``test_scenes``.

Licence: commonly cited as CC BY-NC-SA 3.0 (the terms of the original Virtual KITTI); not confirmed against the
Virtual KITTI 2 download page (europe.naverlabs.com, "Proxy Virtual Worlds VKITTI 2"), so check it before use.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from annotation.errors import InputError
from annotation.readers.base import ImageFileScene, Reader
from annotation.readers.images import check_size, load_image, load_png16, stack_maps
from annotation.readers.native import pinhole_intrinsics, read_text_table
from d4s.geometry.cameras import check_c2w, check_intrinsics, rigid_inverse

FPS = 10.0  # KITTI's camera rate; Virtual KITTI 2 stores frame numbers only
DEPTH_SCALE = 0.01  # metres per PNG16 unit (centimetres)
DEPTH_SKY = 65535  # PNG16 value of sky / beyond 655.35 m: invalid
CAMERAS = ("Camera_0", "Camera_1")
LICENCE = "CC-BY-NC-SA-3.0 (as commonly cited; not confirmed against the official terms)"
INTRINSIC_HEADER = ("frame", "cameraID", "K[0,0]", "K[1,1]", "K[0,2]", "K[1,2]")
EXTRINSIC_HEADER = (
    "frame",
    "cameraID",
    *(f"r{row},{col}" if col <= 3 else f"t{row}" for row in (1, 2, 3) for col in (1, 2, 3, 4)),
    "0",
    "0",
    "0",
    "1",
)
_WORLD = re.compile(r"Scene\d\d")


def camera_rows(path: Path, table: np.ndarray, camera: int) -> np.ndarray:
    """The rows of ``table [N, C]`` for ``camera``, ordered by frame, without the frame and camera columns.

    The camera's frame numbers must be the integers ``0 .. T-1``, each once; raises InputError naming ``path``.
    """
    rows = table[table[:, 1] == camera]
    frames = rows[:, 0]
    if len(rows) == 0:
        raise InputError(path, f"no rows for cameraID {camera}")
    if not np.array_equal(np.sort(frames), np.arange(len(rows))):
        raise InputError(path, f"cameraID {camera}: frame numbers must be 0..{len(rows) - 1}, each once")
    return rows[np.argsort(frames)][:, 2:]


def cameras_from_tables(
    intrinsic_path: Path, intrinsic: np.ndarray, extrinsic_path: Path, extrinsic: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``K [T,3,3]`` pixels and OpenCV ``c2w [T,4,4]`` metres (float32) from one camera's table rows.

    ``intrinsic [T,4]`` holds ``fx fy cx cy``; ``extrinsic [T,16]`` the row-major world-to-camera matrices.
    Raises InputError naming the file whose values are not pinhole intrinsics or rigid poses.
    """
    if len(intrinsic) != len(extrinsic):
        raise InputError(extrinsic_path, f"{len(extrinsic)} frames, but intrinsic.txt has {len(intrinsic)}")
    K = pinhole_intrinsics(intrinsic)
    w2c = torch.from_numpy(extrinsic.reshape(-1, 4, 4))
    try:
        check_intrinsics(torch.from_numpy(K), "intrinsics")
    except ValueError as error:
        raise InputError(intrinsic_path, str(error)) from error
    try:
        check_c2w(w2c, "extrinsics (world-to-camera)")
        c2w = check_c2w(rigid_inverse(w2c), "camera-to-world")
    except ValueError as error:
        raise InputError(extrinsic_path, str(error)) from error
    return K.astype(np.float32), c2w.float().numpy()


class VKITTI2Scene(ImageFileScene):
    """One camera of one Virtual KITTI 2 drive and variation (see the module doc for files and conventions)."""

    dataset = "vkitti2"
    licence = LICENCE
    metric = True
    fps = FPS
    has_depth = True

    def __init__(self, folder: Path, camera: str, name: str):
        self.name = name
        self.folder = folder
        self.camera = camera
        index = CAMERAS.index(camera)
        intrinsic_path, extrinsic_path = folder / "intrinsic.txt", folder / "extrinsic.txt"
        intrinsic = camera_rows(
            intrinsic_path,
            read_text_table(intrinsic_path, len(INTRINSIC_HEADER), "a camera row", INTRINSIC_HEADER),
            index,
        )
        extrinsic = camera_rows(
            extrinsic_path,
            read_text_table(extrinsic_path, len(EXTRINSIC_HEADER), "a camera row", EXTRINSIC_HEADER),
            index,
        )
        self.K, self.c2w = cameras_from_tables(intrinsic_path, intrinsic, extrinsic_path, extrinsic)
        self.timestamps = np.arange(len(self.c2w)) / FPS
        self._require_frame_files("the camera files")
        self.height, self.width = load_image(self._rgb_path(0)).shape[:2]

    def _rgb_path(self, t: int) -> Path:
        return self.folder / "frames" / "rgb" / self.camera / f"rgb_{t:05d}.jpg"

    def _depth_path(self, t: int) -> Path:
        return self.folder / "frames" / "depth" / self.camera / f"depth_{t:05d}.png"

    def depth(self, indices: Sequence[int]) -> np.ndarray:
        """z-depth ``[t, H, W]`` float32 metres from PNG16 centimetres; sky (65535) and 0 become 0 = invalid."""
        paths = [self._depth_path(t) for t in indices]
        raw = [check_size(path, load_png16(path), self.size) for path in paths]
        raw = stack_maps(raw, self.size, np.uint16)
        return np.where(raw == DEPTH_SKY, 0, raw).astype(np.float32) * np.float32(DEPTH_SCALE)


class VKITTI2Reader(Reader):
    """Virtual KITTI 2 under ``root/SceneXX/<variation>/``, one scene per camera.

    Args:
        root: the dataset folder holding ``Scene01``, ``Scene02`` ...
        val_scenes: drives (``"Scene18"``) or drive variations (``"Scene18/fog"``) that form the val split.
        test_scenes: likewise for the test split. Everything else is ``train`` (the release has no split).
    """

    name = "vkitti2"
    licence = LICENCE

    def __init__(self, root: str | Path, val_scenes: Sequence[str] = (), test_scenes: Sequence[str] = ()):
        super().__init__(root)
        if self.root is None:
            raise ValueError("root: Virtual KITTI 2 needs the folder that holds Scene01, Scene02, ...")
        for option, entries in (("val_scenes", val_scenes), ("test_scenes", test_scenes)):
            if isinstance(entries, str) or not all(isinstance(e, str) for e in entries):
                raise ValueError(f"{option}: expected a list of 'SceneXX' or 'SceneXX/<variation>', got {entries!r}")
            bad = [e for e in entries if not _WORLD.fullmatch(e.split("/")[0]) or e.count("/") > 1]
            if bad:
                raise ValueError(f"{option}: entries must be 'SceneXX' or 'SceneXX/<variation>', got {bad}")
        both = sorted(set(val_scenes) & set(test_scenes))
        if both:
            raise ValueError(f"val_scenes and test_scenes both name {both}")
        self.val_scenes, self.test_scenes = frozenset(val_scenes), frozenset(test_scenes)

    def scene_names(self) -> list[str]:
        """``"SceneXX/<variation>/Camera_k"`` for every camera folder under ``frames/rgb/``, sorted."""
        names = sorted(
            f"{world.name}/{variation.name}/{camera}"
            for world in (self.root.iterdir() if self.root.is_dir() else ())
            if world.is_dir() and _WORLD.fullmatch(world.name)
            for variation in world.iterdir()
            if variation.is_dir()
            for camera in CAMERAS
            if (variation / "frames" / "rgb" / camera).is_dir()
        )
        if not names:
            raise InputError(self.root, "no SceneXX/<variation>/frames/rgb/Camera_{0,1} folders of Virtual KITTI 2")
        return names

    def _check_name(self, name: str) -> None:
        if name not in self.scene_names():
            raise ValueError(
                f"name: no Virtual KITTI 2 scene {name!r} under {self.root} (expected 'SceneXX/<variation>/Camera_k')"
            )

    def split_of(self, name: str) -> str:
        """``val`` or ``test`` when the drive or drive variation is listed in that option, else ``train``."""
        self._check_name(name)
        world, variation, _ = name.split("/")
        keys = {world, f"{world}/{variation}"}
        return "val" if keys & self.val_scenes else "test" if keys & self.test_scenes else "train"

    def open_scene(self, name: str) -> VKITTI2Scene:
        """Read the scene's cameras from ``intrinsic.txt`` and ``extrinsic.txt`` (frames and depth lazily)."""
        self._check_name(name)
        world, variation, camera = name.split("/")
        return VKITTI2Scene(self.root / world / variation, camera, name)
