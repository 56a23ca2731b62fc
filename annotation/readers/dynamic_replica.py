"""Dynamic Replica: synthetic metric stereo videos of people and animals in scanned rooms, with 3D tracks.

Layout (docs/datasets.md, "Dynamic Replica")::

    <root>/{train,valid,test}/frame_annotations_<split>.jgz      gzipped JSON list of frame annotations
                             <seq>_{left,right}/images/<seq>-0000.png         RGB frames
                                               depths/<seq>_0000.geometric.png  PNG16 whose bits are float16 m
                                               trajectories/000000.pth        tracks, left camera only

Each frame annotation (PyTorch3D / Implicitron style) must hold ``sequence_name``, ``camera_name`` (``left`` or
``right``), ``frame_number``, ``frame_timestamp`` (seconds), ``image.path`` and ``image.size`` (``[H, W]``),
``depth.path`` (paths relative to the split folder) and ``viewpoint.R [3,3]``, ``viewpoint.T [3]``,
``viewpoint.focal_length [2]``, ``viewpoint.principal_point [2]``, ``viewpoint.intrinsics_format``
(``ndc_isotropic``). A missing key or a value of the wrong shape is an InputError naming the file, the entry
and the key. The ``real`` split (real footage, no ground truth) is not read. Scene names are
``"<split folder>/<seq>_<camera>"``; the ``valid`` folder is the ``val`` split.

Tracks (unverified key names, docs/datasets.md): ``trajectories/<frame_number:06d>.pth`` in the left camera's folder
is a ``torch.save`` dict with ``traj_3d_world [N,3]`` float world points and ``verts_inds_vis [N]`` bool; the
same N mesh vertices in every frame. Only the left camera has them, so only its scenes declare ``has_tracks``.

Reading: a split's annotation file is read when a scene of that split is first listed or opened, and each
entry is checked and parsed then; the reader keeps only each scene's stacked arrays (:class:`SceneAnnotations`),
not the JSON objects. Conversion, done once when a scene is opened:

- Poses: PyTorch3D row-vector convention ``X_cam = X_world R + T`` with camera axes +X left, +Y up, +Z forward.
  Negating columns 0, 1 of ``R`` and entries 0, 1 of ``T`` gives the OpenCV axes (x right, y down); the
  world-to-camera rotation is then the transpose, ``R_cv = (R diag(-1,-1,1))^T``, ``t_cv = diag(-1,-1,1) T``.
  ``c2w`` is its rigid inverse (checked finite, orthonormal, det +1). Skipping the axis flip, as a widely used
  loader does, mirrors every projection through the principal point.
- Intrinsics (``ndc_isotropic``): ``s = min(W, H) / 2``, ``f_px = f * s``, ``pp_px = (W/2, H/2) - pp * s``.
- Depth: the 16-bit PNG's raw bits are float16 metres (0 = invalid); +inf is read as invalid, NaN or negative
  values mean the file is not in this encoding and are an InputError.
- Timestamps are ``frame_timestamp``; fps is the inverse of their median step.
- Dynamic masks are not read: the pipeline derives them from optical flow (the ``masks/`` folder holds
  foreground masks whose encoding is unverified, and the right camera has no tracks to derive them from).

Licence: not confirmed. The dataset is downloaded after accepting a licence agreement on
dynamic-stereo.github.io whose text could not be checked here; the README of github.com/facebookresearch/
dynamic_stereo puts the code under CC-BY-NC. Treat the data as non-commercial until the agreement is read.
"""

from __future__ import annotations

import gzip
import json
import pickle
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from annotation.errors import InputError
from annotation.readers.base import ImageFileScene, Reader
from annotation.readers.images import check_size, load_png16, stack_maps
from d4s.geometry.cameras import check_c2w, check_intrinsics, rigid_inverse

LICENCE = "unverified (Dynamic Replica licence agreement; code CC-BY-NC)"
SPLIT_FOLDERS = {"train": "train", "valid": "val", "test": "test"}  # folder name -> project split
CAMERAS = ("left", "right")
TRACK_CAMERA = "left"
INTRINSICS_FORMAT = "ndc_isotropic"
_P3D_TO_CV = np.diag([-1.0, -1.0, 1.0])  # PyTorch3D camera axes (+X left, +Y up) to OpenCV (x right, y down)


def annotation_path(split_dir: Path) -> Path:
    """``<split_dir>/frame_annotations_<split>.jgz``."""
    return split_dir / f"frame_annotations_{split_dir.name}.jgz"


def read_annotations(path: Path) -> list[dict[str, Any]]:
    """The frame annotations of a split: a gzipped JSON list of objects. Raises InputError naming ``path``."""
    if not path.is_file():
        raise InputError(path, "frame annotation file is missing")
    try:
        with gzip.open(path, "rt", encoding="utf8") as file:
            entries = json.load(file)
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise InputError(path, f"cannot read gzipped JSON ({error})") from error
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise InputError(path, "expected a JSON list of frame annotation objects")
    return entries


def _field(path: Path, index: int, entry: dict, key: str) -> Any:
    """``entry[a][b]`` for ``key = "a.b"``; a missing key is an InputError naming the file, entry and key."""
    value = entry
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise InputError(path, f"frame annotation {index}: missing key {key!r}")
        value = value[part]
    return value


def _array(path: Path, index: int, entry: dict, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """A numeric field as float64 of exactly ``shape``; anything else is an InputError."""
    value = _field(path, index, entry, key)
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(path, f"frame annotation {index}: {key} is not numeric ({value!r})") from error
    if array.shape != shape:
        raise InputError(
            path, f"frame annotation {index}: {key}: expected shape {list(shape)}, got {list(array.shape)}"
        )
    return array


@dataclass(frozen=True)
class FrameAnnotation:
    """One parsed frame annotation in the native conventions (paths relative to the split folder).

    ``size`` is ``(H, W)`` pixels; ``R [3,3]`` and ``T [3]`` are PyTorch3D (row vectors, +X left, +Y up);
    ``focal [2]`` and ``principal [2]`` are ``ndc_isotropic`` NDC values.
    """

    number: int
    timestamp: float
    image: Path
    size: tuple[int, int]
    depth: Path
    R: np.ndarray
    T: np.ndarray
    focal: np.ndarray
    principal: np.ndarray

    @classmethod
    def parse(cls, path: Path, index: int, entry: dict) -> FrameAnnotation:
        """Check and parse entry ``index`` of the annotation file ``path``; raises InputError naming them."""
        number = _field(path, index, entry, "frame_number")
        size = _field(path, index, entry, "image.size")
        if not isinstance(number, int) or number < 0:
            raise InputError(path, f"frame annotation {index}: frame_number must be an integer >= 0, got {number!r}")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(n, int) and n > 0 for n in size)):
            raise InputError(path, f"frame annotation {index}: image.size must be [H, W] positive ints, got {size!r}")
        fmt = _field(path, index, entry, "viewpoint.intrinsics_format")
        if fmt != INTRINSICS_FORMAT:
            raise InputError(
                path, f"frame annotation {index}: intrinsics_format {fmt!r}, expected {INTRINSICS_FORMAT!r}"
            )
        scale = entry["depth"].get("scale_adjustment", 1.0) if isinstance(entry.get("depth"), dict) else 1.0
        if scale not in (None, 1.0):  # Implicitron's DepthAnnotation default is 1.0
            raise InputError(path, f"frame annotation {index}: depth.scale_adjustment {scale!r} is not 1 (unsupported)")
        return cls(
            number=number,
            timestamp=float(_array(path, index, entry, "frame_timestamp", ())),
            image=Path(str(_field(path, index, entry, "image.path"))),
            size=(size[0], size[1]),
            depth=Path(str(_field(path, index, entry, "depth.path"))),
            R=_array(path, index, entry, "viewpoint.R", (3, 3)),
            T=_array(path, index, entry, "viewpoint.T", (3,)),
            focal=_array(path, index, entry, "viewpoint.focal_length", (2,)),
            principal=_array(path, index, entry, "viewpoint.principal_point", (2,)),
        )


@dataclass(frozen=True)
class SceneAnnotations:
    """The parsed frame annotations of one sequence and camera, stacked in file order: what the reader keeps per
    scene instead of the annotation file's JSON objects (a few hundred bytes a frame). Fields as in
    :class:`FrameAnnotation`, with a leading frame axis; paths as strings relative to the split folder."""

    numbers: np.ndarray  # [T] int64
    timestamps: np.ndarray  # [T] float64
    sizes: np.ndarray  # [T, 2] int64, (H, W)
    images: tuple[str, ...]
    depths: tuple[str, ...]
    R: np.ndarray  # [T, 3, 3]
    T: np.ndarray  # [T, 3]
    focal: np.ndarray  # [T, 2]
    principal: np.ndarray  # [T, 2]

    @classmethod
    def stack(cls, frames: Sequence[FrameAnnotation]) -> SceneAnnotations:
        return cls(
            numbers=np.array([f.number for f in frames], np.int64),
            timestamps=np.array([f.timestamp for f in frames], np.float64),
            sizes=np.array([f.size for f in frames], np.int64).reshape(-1, 2),
            images=tuple(str(f.image) for f in frames),
            depths=tuple(str(f.depth) for f in frames),
            R=np.stack([f.R for f in frames]),
            T=np.stack([f.T for f in frames]),
            focal=np.stack([f.focal for f in frames]),
            principal=np.stack([f.principal for f in frames]),
        )

    def frames(self) -> list[FrameAnnotation]:
        """The per-frame records back, in file order."""
        return [
            FrameAnnotation(
                number=int(self.numbers[i]),
                timestamp=float(self.timestamps[i]),
                image=Path(self.images[i]),
                size=(int(self.sizes[i, 0]), int(self.sizes[i, 1])),
                depth=Path(self.depths[i]),
                R=self.R[i],
                T=self.T[i],
                focal=self.focal[i],
                principal=self.principal[i],
            )
            for i in range(len(self.numbers))
        ]


def index_split(path: Path, folder: str) -> dict[str, SceneAnnotations | InputError]:
    """Scene name -> its parsed annotations, from the split's annotation file ``path``.

    A missing ``sequence_name`` or ``camera_name``, or an unknown camera, is raised here (the entry cannot be
    placed). Any other bad entry makes its scene an InputError naming the file, entry and key, raised when that
    scene is opened, so that the rest of the split stays usable. The JSON objects are dropped as they are parsed.
    """
    entries: list[Any] = read_annotations(path)
    groups: dict[str, list[FrameAnnotation]] = defaultdict(list)
    errors: dict[str, InputError] = {}
    for i, entry in enumerate(entries):
        entries[i] = None  # release the JSON object once parsed
        sequence, camera = _field(path, i, entry, "sequence_name"), _field(path, i, entry, "camera_name")
        if camera not in CAMERAS:
            raise InputError(path, f"frame annotation {i}: camera_name {camera!r}, expected one of {CAMERAS}")
        name = f"{folder}/{sequence}_{camera}"
        if name in errors:
            continue
        try:
            groups[name].append(FrameAnnotation.parse(path, i, entry))
        except InputError as error:
            errors[name] = InputError(error.path, error.reason)  # a fresh one: no traceback holding the entries
            groups.pop(name, None)
    return {**{name: SceneAnnotations.stack(frames) for name, frames in groups.items()}, **errors}


def intrinsics_from_ndc(focal: np.ndarray, principal: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixel ``K [3,3]`` float64 from ``ndc_isotropic`` ``focal [2]`` and ``principal [2]`` for ``size = (H, W)``."""
    height, width = size
    s = min(width, height) / 2.0
    (fx, fy), (cx, cy) = focal * s, np.array([width / 2.0, height / 2.0]) - principal * s
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def w2c_from_pytorch3d(R: np.ndarray, T: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera ``[..., 4, 4]`` float64 from PyTorch3D ``R [..., 3, 3]``, ``T [..., 3]``
    (``X_cam = X_world R + T``, camera +X left, +Y up): flip camera x and y, transpose the rotation."""
    w2c = np.zeros((*R.shape[:-2], 4, 4))
    w2c[..., :3, :3] = np.swapaxes(R @ _P3D_TO_CV, -1, -2)
    w2c[..., :3, 3] = T @ _P3D_TO_CV
    w2c[..., 3, 3] = 1.0
    return w2c


class DynamicReplicaScene(ImageFileScene):
    """One camera of one Dynamic Replica sequence (see the module doc for files and conventions).

    Args:
        split_dir: the split folder the annotation paths are relative to.
        name: ``"<split folder>/<seq>_<camera>"``.
        frames: the parsed annotations of this sequence and camera, any order.
        anno_path: the annotation file, named in errors about the frames' metadata.
    """

    dataset = "dynamic_replica"
    licence = LICENCE
    metric = True
    has_depth = True

    def __init__(self, split_dir: Path, name: str, frames: Sequence[FrameAnnotation], anno_path: Path):
        self.name = name
        self.split_dir = split_dir
        self._frames = sorted(frames, key=lambda frame: frame.number)
        numbers = [frame.number for frame in self._frames]
        if numbers != list(range(len(numbers))):
            raise InputError(anno_path, f"{name}: frame_number must run 0..{len(numbers) - 1}, got {numbers[:8]}...")
        sizes = {frame.size for frame in self._frames}
        if len(sizes) != 1:
            raise InputError(anno_path, f"{name}: frames of different image.size {sorted(sizes)}")
        self.height, self.width = sizes.pop()
        self.timestamps = np.array([frame.timestamp for frame in self._frames])
        steps = np.diff(self.timestamps)
        if len(steps) == 0 or not (steps > 0).all():
            raise InputError(anno_path, f"{name}: frame_timestamp must increase over at least two frames")
        self.fps = float(1.0 / np.median(steps))
        self.K, self.c2w = self._cameras(anno_path)
        self._require_frame_files(anno_path.name)

    def _cameras(self, anno_path: Path) -> tuple[np.ndarray, np.ndarray]:
        """``K [T,3,3]`` pixels and OpenCV ``c2w [T,4,4]``, both float32, checked."""
        K = np.stack([intrinsics_from_ndc(f.focal, f.principal, f.size) for f in self._frames])
        w2c = w2c_from_pytorch3d(np.stack([f.R for f in self._frames]), np.stack([f.T for f in self._frames]))
        try:
            check_intrinsics(torch.from_numpy(K), f"{self.name}: intrinsics")
            check_c2w(torch.from_numpy(w2c), f"{self.name}: viewpoint R, T (world-to-camera)")
        except ValueError as error:
            raise InputError(anno_path, str(error)) from error
        return K.astype(np.float32), rigid_inverse(torch.from_numpy(w2c)).float().numpy()

    def _rgb_path(self, t: int) -> Path:
        return self.split_dir / self._frames[t].image

    def _depth_path(self, t: int) -> Path:
        return self.split_dir / self._frames[t].depth

    def _depth(self, t: int) -> np.ndarray:
        """z-depth ``[H, W]`` float32 metres of frame ``t``: the PNG16's bits read as float16 (+inf -> 0)."""
        path = self._depth_path(t)
        raw = check_size(path, load_png16(path), self.size)
        metres = np.frombuffer(raw.tobytes(), np.float16).reshape(raw.shape).astype(np.float32)
        if np.isnan(metres).any() or (metres < 0).any():
            raise InputError(path, "NaN or negative depth: expected a PNG16 whose bits are float16 metres")
        metres[np.isinf(metres)] = 0.0
        return metres

    def depth(self, indices: Sequence[int]) -> np.ndarray:
        """z-depth ``[t, H, W]`` float32 metres (0 = invalid)."""
        maps = [self._depth(t) for t in indices]
        return stack_maps(maps, self.size, np.float32)


class DynamicReplicaLeftScene(DynamicReplicaScene):
    """The left camera of a sequence: as :class:`DynamicReplicaScene`, plus the per-frame 3D tracks."""

    has_tracks = True

    def _track_path(self, t: int) -> Path:
        """``<seq>_left/trajectories/<frame_number:06d>.pth`` (the camera folder is the image folder's parent)."""
        frame = self._frames[t]
        return self.split_dir / frame.image.parent.parent / "trajectories" / f"{frame.number:06d}.pth"

    def _read_tracks(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """``traj_3d_world [N,3]`` float32 world metres and ``verts_inds_vis [N]`` bool of frame ``t``."""
        path = self._track_path(t)
        if not path.is_file():
            raise InputError(path, "trajectory file is missing")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError) as error:
            raise InputError(path, f"cannot read with torch.load(weights_only=True) ({error})") from error
        if not isinstance(data, dict):
            raise InputError(path, f"expected a dict of tensors, got {type(data).__name__}")
        for key in ("traj_3d_world", "verts_inds_vis"):
            if key not in data:
                raise InputError(path, f"missing key {key!r} (keys: {sorted(map(str, data))})")
            if not isinstance(data[key], torch.Tensor):
                raise InputError(path, f"{key}: expected a tensor, got {type(data[key]).__name__}")
        xyz, visible = data["traj_3d_world"], data["verts_inds_vis"]
        if xyz.ndim != 2 or xyz.shape[1] != 3 or not xyz.is_floating_point():
            raise InputError(path, f"traj_3d_world: expected float [N, 3], got {xyz.dtype} {list(xyz.shape)}")
        if visible.shape != (xyz.shape[0],) or visible.dtype != torch.bool:
            raise InputError(
                path, f"verts_inds_vis: expected bool [{xyz.shape[0]}], got {visible.dtype} {list(visible.shape)}"
            )
        return xyz.float().numpy(), visible.numpy()

    def tracks(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``xyz [N, t, 3]`` float32 world metres and ``visible [N, t]`` bool over the frames ``indices``.

        Tracks that are non-finite in any of these frames are left out; the others keep their visibility.
        """
        per_frame = [self._read_tracks(t) for t in indices]
        if not per_frame:
            return np.zeros((0, 0, 3), np.float32), np.zeros((0, 0), bool)
        count = len(per_frame[0][0])
        for t, (xyz, _) in zip(indices, per_frame):
            if len(xyz) != count:
                raise InputError(self._track_path(t), f"{len(xyz)} tracks, but frame {indices[0]} has {count}")
        xyz = np.stack([frame_xyz for frame_xyz, _ in per_frame], axis=1)  # [N, t, 3]
        visible = np.stack([frame_visible for _, frame_visible in per_frame], axis=1)
        keep = np.isfinite(xyz).all(axis=(1, 2))
        return np.ascontiguousarray(xyz[keep]), np.ascontiguousarray(visible[keep])


class DynamicReplicaReader(Reader):
    """Dynamic Replica sequences under ``root/{train,valid,test}/``, one scene per sequence and camera."""

    name = "dynamic_replica"
    licence = LICENCE

    def __init__(self, root: str | Path):
        super().__init__(root)
        if self.root is None:
            raise ValueError("root: Dynamic Replica needs the folder that holds train/, valid/ and test/")
        self._splits: dict[str, dict[str, SceneAnnotations | InputError]] = {}  # split folder -> scenes, lazily

    @cached_property
    def _folders(self) -> list[str]:
        """The split folders present under the root."""
        folders = [folder for folder in SPLIT_FOLDERS if (self.root / folder).is_dir()]
        if not folders:
            raise InputError(self.root, "no train/, valid/ or test/ folder of Dynamic Replica sequences")
        return folders

    def _split(self, folder: str) -> dict[str, SceneAnnotations | InputError]:
        """The scenes of one split folder, its annotation file read on first use (only compact arrays are kept)."""
        if folder not in self._splits:
            self._splits[folder] = index_split(annotation_path(self.root / folder), folder)
        return self._splits[folder]

    def scene_names(self) -> list[str]:
        """``"<split folder>/<seq>_<camera>"`` for every sequence and camera in the annotation files, sorted."""
        return sorted(name for folder in self._folders for name in self._split(folder))

    def _lookup(self, name: str) -> SceneAnnotations | InputError:
        """The scene's annotations (or the InputError of its bad entry); reads only its split's file."""
        folder = name.partition("/")[0]
        scenes = self._split(folder) if folder in self._folders else {}
        if name not in scenes:
            raise ValueError(
                f"name: no Dynamic Replica scene {name!r} under {self.root} (expected '<split>/<seq>_left')"
            )
        return scenes[name]

    def split_of(self, name: str) -> str:
        """``train``, ``val`` (the ``valid`` folder) or ``test``."""
        self._lookup(name)
        return SPLIT_FOLDERS[name.partition("/")[0]]

    def open_scene(self, name: str) -> DynamicReplicaScene:
        """Convert the scene's parsed frame annotations (images, depth and tracks are read lazily)."""
        annotations = self._lookup(name)
        if isinstance(annotations, InputError):
            raise InputError(annotations.path, annotations.reason)
        split_dir = self.root / name.partition("/")[0]
        cls = DynamicReplicaLeftScene if name.endswith(f"_{TRACK_CAMERA}") else DynamicReplicaScene
        return cls(split_dir, name, annotations.frames(), annotation_path(split_dir))
