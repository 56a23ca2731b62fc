"""MatrixCity: a static synthetic city rendered in Unreal Engine, with metric camera poses and EXR depth.

Layout (``docs/datasets.md``, "MatrixCity"; the official loaders ``scripts/load_aerial.py`` and
``scripts/load_street.py`` of github.com/city-super/MatrixCity read the same per-block files)::

    <root>/{small_city,big_city}/{aerial,street}/{train,train_dense,test}/<block>/
        transforms.json    camera_angle_x (radians) and frames[i] = {frame_index, rot_mat}
        0000.png ...       RGB frames (aerial 1920x1080, street 1000x1000), named frame_index.zfill(4)
    <depth_root>/{small_city,big_city}_depth/{aerial,street}/{train,train_dense,test}/<block>_depth/
        0000.exr ...       linear z-depth in centimetres, one EXR per frame

``depth_root`` defaults to ``<root>`` (the Hugging Face release keeps ``small_city_depth/`` beside
``small_city/``). The depth tree below it is only partly verified: a missing depth folder is an InputError naming
the folder looked for, so a different unpacking shows at once (pass the right ``depth_root``). Scene names are
``"<city>/<view>/<split>/<block>"``; ``train`` and ``train_dense`` belong to the train split, ``test`` to test.

Frames are sampled along camera paths (street every 5 m, dense every 1 m), not filmed: a block's frames, ordered
by frame number, are one scene and its clips are path segments. The frame rate is nominal (:data:`NOMINAL_FPS`);
timestamps are ``frame position / NOMINAL_FPS``. A block may hold several paths one after the other (unverified);
a clip across such a jump fails the reprojection check of quality control. The released data has no dynamic
objects (unverified, docs/datasets.md), so there are no dynamic masks and no tracks.

The frame key of ``transforms.json`` is ``frame_index`` (an int, as the official loaders read it); a NeRF-style
``file_path`` naming ``NNNN.png`` is accepted too. Any other layout is an InputError naming the file.

Conversion, done once when a scene is opened:

- ``rot_mat`` is an OpenGL camera-to-world matrix (camera x right, y up, z back) whose rotation block is stored
  divided by 100 (the export quirk, MatrixCityPlugin/docs/Export-Camere-Poses.md): multiply it by 100, set the
  last row to ``[0, 0, 0, 1]`` (its first three entries must be 0), keep the translation (metres), then negate
  the camera y and z columns for OpenCV axes. The rotation must be orthonormal with det +1 (within 1e-3); it is
  then projected onto the nearest rotation.
- ``K``: ``fx = fy = 0.5 * W / tan(0.5 * camera_angle_x)``, principal point ``(W/2, H/2)``, with ``W, H`` the
  size of the PNG frames.
- Depth: EXR centimetres / 100, float32 metres. 0 stays 0 (invalid); non-finite values are invalid; in a HALF
  (float16) EXR, values >= 65504 (the float16 maximum, where far/sky saturates) are invalid too. A FLOAT EXR (the
  float32 release, preferred for aerial views) keeps every finite positive value. Negative depth is an error.
  The EXR must hold one channel, or R, G, B (and A) with equal R, G, B (the official loader reads channel 0
  through OpenCV; which of the two the release holds is unverified).

Licence: the Hugging Face dataset card (huggingface.co/datasets/BoDai/MatrixCity) says CC BY-NC 4.0; the
rendering plugin and scripts on GitHub are Apache-2.0.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import OpenEXR
import torch

from annotation.errors import InputError
from annotation.readers.base import ImageFileScene, Reader
from annotation.readers.images import check_size, load_image, stack_maps
from d4s.geometry.cameras import check_c2w, intrinsics_from_fov

LICENCE = "CC-BY-NC-4.0"
NOMINAL_FPS = 10.0  # frames are path samples, not video: a nominal rate for timestamps and clip metadata
CITIES = ("small_city", "big_city")
VIEWS = ("aerial", "street")
SPLIT_OF = {"train": "train", "train_dense": "train", "test": "test"}  # split folder -> project split
ROTATION_STORAGE_SCALE = 100.0  # rot_mat's rotation block is stored divided by this
METRES_PER_CM = 0.01
HALF_SATURATION = 65504.0  # float16 maximum: far/sky in the float16 depth release
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # right-multiply a c2w to flip the camera y and z axes
_FRAME_FILE = re.compile(r"(\d+)\.png")


def _frame_stem(path: Path, i: int, frame: dict) -> str:
    """The file stem (``"0012"``) of entry ``i`` of ``frames``, from ``frame_index`` or else ``file_path``."""
    if "frame_index" in frame:
        index = frame["frame_index"]
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise InputError(path, f"frames[{i}].frame_index: expected a non-negative int, got {index!r}")
        return str(index).zfill(4)
    if "file_path" in frame:
        name = Path(str(frame["file_path"])).name
        match = _FRAME_FILE.fullmatch(name)
        if match is None:
            raise InputError(path, f"frames[{i}].file_path: expected a file named NNNN.png, got {frame['file_path']!r}")
        return match.group(1)
    raise InputError(path, f"frames[{i}]: expected a 'frame_index' (or 'file_path') key, got keys {sorted(frame)}")


def read_transforms(path: Path) -> tuple[float, list[str], np.ndarray]:
    """``camera_angle_x`` (radians), frame stems and the stored ``rot_mat [T,4,4]`` float64 of a ``transforms.json``,
    ordered by frame number. Raises InputError naming the file for anything missing, malformed or duplicated."""
    if not path.is_file():
        raise InputError(path, "transforms.json is missing")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(path, f"cannot parse JSON ({error})") from error
    if not isinstance(meta, dict) or "camera_angle_x" not in meta or "frames" not in meta:
        got = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise InputError(path, f"expected an object with 'camera_angle_x' and 'frames', got {got}")
    angle = meta["camera_angle_x"]
    if isinstance(angle, bool) or not isinstance(angle, (int, float)) or not 0 < angle < math.pi:
        raise InputError(path, f"camera_angle_x: expected radians in (0, pi), got {angle!r}")
    frames = meta["frames"]
    if not isinstance(frames, list) or not frames or not all(isinstance(f, dict) for f in frames):
        raise InputError(path, "frames: expected a non-empty list of objects")
    stems, matrices = [], []
    for i, frame in enumerate(frames):
        stems.append(_frame_stem(path, i, frame))
        try:
            matrix = np.array(frame["rot_mat"], dtype=np.float64)
        except KeyError as error:
            raise InputError(path, f"frames[{i}]: missing 'rot_mat'") from error
        except (TypeError, ValueError) as error:
            raise InputError(path, f"frames[{i}].rot_mat: expected a 4x4 matrix of numbers ({error})") from error
        if matrix.shape != (4, 4):
            raise InputError(path, f"frames[{i}].rot_mat: expected a 4x4 matrix, got shape {list(matrix.shape)}")
        matrices.append(matrix)
    duplicates = sorted(stem for stem, count in Counter(stems).items() if count > 1)
    if duplicates:
        raise InputError(path, f"frames: frame {duplicates[0]} is listed more than once")
    order = sorted(range(len(stems)), key=lambda i: int(stems[i]))
    return float(angle), [stems[i] for i in order], np.stack([matrices[i] for i in order])


def opencv_c2w(path: Path, rot_mat: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world ``[T,4,4]`` float32 metres from stored ``rot_mat [T,4,4]`` (see the module doc)."""
    if not np.allclose(rot_mat[:, 3, :3], 0.0):
        raise InputError(path, "rot_mat: expected a last row [0, 0, 0, s]")
    c2w = rot_mat.copy()
    c2w[:, :3, :3] *= ROTATION_STORAGE_SCALE
    c2w[:, 3] = [0.0, 0.0, 0.0, 1.0]
    c2w = c2w @ GL_TO_CV
    try:
        check_c2w(torch.from_numpy(c2w), "rot_mat (rotation x100, OpenCV axes)")
    except ValueError as error:
        raise InputError(path, str(error)) from error
    U, _, Vh = np.linalg.svd(c2w[:, :3, :3])
    c2w[:, :3, :3] = U @ Vh
    return c2w.astype(np.float32)


def _depth_channel(path: Path, channels: dict) -> OpenEXR.Channel:
    """The one depth channel of an EXR: its only channel, or R of equal R, G, B (A allowed)."""
    names = sorted(channels)
    if len(names) == 1:
        return channels[names[0]]
    if set(names) in ({"R", "G", "B"}, {"R", "G", "B", "A"}):
        red = channels["R"].pixels
        if np.array_equal(red, channels["G"].pixels, equal_nan=True) and np.array_equal(
            red, channels["B"].pixels, equal_nan=True
        ):
            return channels["R"]
        raise InputError(path, "expected one depth channel; R, G and B differ")
    raise InputError(path, f"expected one depth channel (or equal R, G, B), got channels {names}")


def read_depth_exr(path: Path) -> np.ndarray:
    """An EXR of z-depth in centimetres as float32 metres ``[H, W]`` (0 = invalid, see the module doc)."""
    if not path.is_file():
        raise InputError(path, "depth file is missing")
    try:
        exr = OpenEXR.File(str(path), separate_channels=True)
        channels = exr.channels()
    except (RuntimeError, ValueError, OSError) as error:
        raise InputError(path, f"cannot read EXR ({error})") from error
    channel = _depth_channel(path, channels)
    if channel.type() not in (OpenEXR.HALF, OpenEXR.FLOAT):
        raise InputError(path, f"expected HALF or FLOAT depth pixels, got {channel.type().name}")
    cm = np.asarray(channel.pixels)
    if cm.ndim != 2:
        raise InputError(path, f"expected a [H, W] depth channel, got shape {list(cm.shape)}")
    if (cm < 0).any():
        raise InputError(path, f"negative depth (min {float(np.nanmin(cm))} cm); expected z-depth >= 0")
    valid = np.isfinite(cm) & (cm > 0)
    if channel.type() == OpenEXR.HALF:
        valid &= cm < HALF_SATURATION
    return np.where(valid, cm.astype(np.float32) * np.float32(METRES_PER_CM), np.float32(0.0))


class MatrixCityScene(ImageFileScene):
    """One MatrixCity block: its frames in frame-number order (see the module doc for files and conventions)."""

    dataset = "matrixcity"
    licence = LICENCE
    metric = True
    fps = NOMINAL_FPS
    has_depth = True

    def __init__(self, name: str, folder: Path, depth_folder: Path):
        self.name = name
        self.folder = folder
        self.depth_folder = depth_folder
        transforms = folder / "transforms.json"
        angle, self._stems, rot_mat = read_transforms(transforms)
        self.c2w = opencv_c2w(transforms, rot_mat)
        self.timestamps = np.arange(len(self._stems)) / NOMINAL_FPS
        self._require_frame_files("transforms.json")
        if not depth_folder.is_dir():
            raise InputError(
                depth_folder,
                "depth folder is missing (looked for <depth_root>/<city>_depth/<view>/<split>/<block>_depth/; "
                "set reader.depth_root to the folder that holds <city>_depth/)",
            )
        self.height, self.width = load_image(self._rgb_path(0)).shape[:2]
        K = intrinsics_from_fov(self.width, self.height, math.degrees(angle)).numpy()
        self.K = np.tile(K, (self.num_frames, 1, 1))

    def _rgb_path(self, t: int) -> Path:
        return self.folder / f"{self._stems[t]}.png"

    def _depth_path(self, t: int) -> Path:
        return self.depth_folder / f"{self._stems[t]}.exr"

    def depth(self, indices: Sequence[int]) -> np.ndarray:
        """z-depth ``[t, H, W]`` float32 metres from the EXR centimetres (0 = invalid, see the module doc)."""
        maps = [check_size(path, read_depth_exr(path), self.size) for path in map(self._depth_path, indices)]
        return stack_maps(maps, self.size, np.float32)


class MatrixCityReader(Reader):
    """MatrixCity blocks under ``root/{small_city,big_city}/{aerial,street}/{train,train_dense,test}/``.

    Args:
        root: the dataset folder that holds ``small_city/`` and/or ``big_city/``.
        depth_root: the folder that holds ``small_city_depth/`` and/or ``big_city_depth/`` (default: ``root``).
    """

    name = "matrixcity"
    licence = LICENCE

    def __init__(self, root: str | Path, depth_root: str | Path | None = None):
        super().__init__(root)
        if self.root is None:
            raise ValueError("root: MatrixCity needs the folder that holds small_city/ or big_city/")
        self.depth_root = self.root if depth_root is None else Path(depth_root)

    def scene_names(self) -> list[str]:
        """``"<city>/<view>/<split>/<block>"`` for every block folder, sorted."""
        if not any((self.root / city).is_dir() for city in CITIES):
            raise InputError(self.root, f"no {' or '.join(c + '/' for c in CITIES)} folder of MatrixCity renders")
        return sorted(
            f"{city}/{view}/{split}/{block.name}"
            for city in CITIES
            for view in VIEWS
            for split in SPLIT_OF
            if (self.root / city / view / split).is_dir()
            for block in (self.root / city / view / split).iterdir()
            if block.is_dir() and not block.name.startswith(".")
        )

    def _parts(self, name: str) -> tuple[str, str, str, str]:
        parts = name.split("/")
        if len(parts) != 4 or parts[0] not in CITIES or parts[1] not in VIEWS or parts[2] not in SPLIT_OF:
            raise ValueError(f"name: {name!r} is not '<city>/<view>/<split>/<block>' of MatrixCity")
        if not (self.root / name).is_dir():
            raise ValueError(f"name: no MatrixCity block {name!r} under {self.root}")
        return parts[0], parts[1], parts[2], parts[3]

    def split_of(self, name: str) -> str:
        """``train`` for the ``train`` and ``train_dense`` folders, ``test`` for ``test``."""
        return SPLIT_OF[self._parts(name)[2]]

    def open_scene(self, name: str) -> MatrixCityScene:
        """Read the block's ``transforms.json`` (frames and depth are read lazily)."""
        city, view, split, block = self._parts(name)
        depth_folder = self.depth_root / f"{city}_depth" / view / split / f"{block}_depth"
        return MatrixCityScene(name, self.root / name, depth_folder)
