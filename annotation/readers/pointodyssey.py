"""PointOdyssey (v1.1 or later): synthetic metric videos with depth, instance masks and long 3D point tracks.

Layout::

    <root>/{train,val,test}/<seq>/rgbs/rgb_00000.jpg      RGB frames, 30 fps
                                  depths/depth_00000.png  uint16 PNG, metres = v / 65535 * 1000 (0 = invalid)
                                  masks/mask_00000.png    instance colours (black = background)
                                  anno.npz                float16 arrays, see below

``anno.npz``: ``trajs_2d [T,N,2]`` pixels, ``trajs_3d [T,N,3]`` world metres, ``visibs [T,N]``,
``valids [T,N]``, ``intrinsics [T,3,3]`` pixels, ``extrinsics [T,4,4]`` world-to-camera in OpenCV axes.
Tracks may hold NaN/inf; they are dropped where asked for. Scene names are ``"<split>/<seq>"``.

Conversion, done once when a scene is opened: ``c2w`` is the inverse of ``extrinsics`` after projecting the
float16-rounded rotation onto the nearest rotation; ``K`` is ``intrinsics`` as stored; arrays are cast from
float16 to float32.

Licence: the authors' release notes (github.com/y-zheng18/point_odyssey, README, "Download") put the dataset
under CC BY-NC-SA 4.0; the code there is MIT, which is also what the Hugging Face mirror's card says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from annotation.readers.base import ImageFileScene, SplitFolderReader
from annotation.readers.images import check_size, load_frames, load_image, load_png16, stack_maps
from annotation.readers.native import cameras_from_w2c, read_npz_arrays

FPS = 30.0
DEPTH_SCALE = 1000.0 / 65535.0  # metres per PNG16 unit
LICENCE = "CC-BY-NC-SA-4.0"
_CAMERA_SHAPES = {"intrinsics": ("T", 3, 3), "extrinsics": ("T", 4, 4)}
_TRACK_SHAPES = {"trajs_2d": ("T", "N", 2), "trajs_3d": ("T", "N", 3), "visibs": ("T", "N"), "valids": ("T", "N")}
FLOAT16_ROTATION_ATOL = 1e-2  # orthonormality error of rotations stored as float16
_TRACK_CHUNK = 4096  # tracks per step when measuring motion, to bound temporary memory


def moving_tracks(xyz: np.ndarray, valid: np.ndarray, threshold: float) -> np.ndarray:
    """Which tracks move in the world: ``[N]`` bool from positions ``xyz [T,N,3]`` and ``valid [T,N]``.

    A track moves when the diagonal of the box spanned by its valid, finite positions exceeds ``threshold``
    metres plus the storage step of ``xyz``'s dtype at the track's magnitude (float16 stores 20 m to within
    about 1.6 cm, so rounding must not read as motion).
    """
    moving = np.zeros(xyz.shape[1], bool)
    for start in range(0, xyz.shape[1], _TRACK_CHUNK):
        part = xyz[:, start : start + _TRACK_CHUNK]
        seen = valid[:, start : start + _TRACK_CHUNK] & np.isfinite(part).all(-1)
        high = np.max(part, axis=0, where=seen[..., None], initial=-np.inf)
        low = np.min(part, axis=0, where=seen[..., None], initial=np.inf)
        ever = seen.any(axis=0)
        high, low = np.where(ever[:, None], high, 0), np.where(ever[:, None], low, 0)
        step = np.spacing(np.maximum(np.abs(high), np.abs(low)))  # in xyz's dtype
        extent = np.linalg.norm((high.astype(np.float64) - low), axis=-1)
        moving[start : start + _TRACK_CHUNK] = extent > threshold + np.linalg.norm(step.astype(np.float64), axis=-1)
    return moving


def colour_ids(rgb: np.ndarray) -> np.ndarray:
    """Instance colours ``[..., 3]`` uint8 packed into ints ``[...]`` (``0xRRGGBB``; black is 0)."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@dataclass(frozen=True)
class _Tracks:
    """Track arrays of a sequence as stored (float16 kept to halve memory): ``uv [T,N,2]``, ``xyz [T,N,3]``,
    ``visible [T,N]`` and ``valid [T,N]`` bool."""

    uv: np.ndarray
    xyz: np.ndarray
    visible: np.ndarray
    valid: np.ndarray


class PointOdysseyScene(ImageFileScene):
    """One PointOdyssey sequence (see the module doc for files and conventions).

    Dynamic masks: the masks hold instance colours without a dynamic flag, so the flag is derived once per
    scene. A track *moves* when its world positions over the whole scene span more than ``motion_threshold``
    metres (see :func:`moving_tracks`). In every frame, each visible, valid track votes for the instance colour
    under its 2D position (pixel ``floor(u), floor(v)``). An instance colour is dynamic when more than
    ``moving_fraction`` of its votes come from moving tracks; black (background) is always static, as is a
    colour no track falls on. Deriving the flags reads every mask of the scene once.
    """

    dataset = "pointodyssey"
    licence = LICENCE
    metric = True
    fps = FPS
    has_depth = True
    has_dynamic_mask = True
    has_tracks = True

    def __init__(self, folder: Path, name: str, motion_threshold: float, moving_fraction: float):
        self.name = name
        self.folder = folder
        self._motion_threshold = motion_threshold
        self._moving_fraction = moving_fraction
        anno = read_npz_arrays(self._anno_path, _CAMERA_SHAPES)
        self.K, self.c2w = cameras_from_w2c(
            self._anno_path, anno["intrinsics"], anno["extrinsics"], atol=FLOAT16_ROTATION_ATOL
        )
        self.timestamps = np.arange(len(self.c2w)) / FPS
        self._require_frame_files("anno.npz")
        self.height, self.width = load_image(self._rgb_path(0)).shape[:2]

    @property
    def _anno_path(self) -> Path:
        return self.folder / "anno.npz"

    def _rgb_path(self, t: int) -> Path:
        return self.folder / "rgbs" / f"rgb_{t:05d}.jpg"

    def _depth_path(self, t: int) -> Path:
        return self.folder / "depths" / f"depth_{t:05d}.png"

    def _mask_path(self, t: int) -> Path:
        return self.folder / "masks" / f"mask_{t:05d}.png"

    def depth(self, indices: Sequence[int]) -> np.ndarray:
        """z-depth ``[t, H, W]`` float32 metres decoded from PNG16 (``v * 1000 / 65535``; 0 stays 0 = invalid)."""
        paths = [self._depth_path(t) for t in indices]
        raw = [check_size(path, load_png16(path), self.size) for path in paths]
        raw = stack_maps(raw, self.size, np.uint16)
        return raw.astype(np.float32) * np.float32(DEPTH_SCALE)

    @cached_property
    def _tracks(self) -> _Tracks:
        anno = read_npz_arrays(self._anno_path, _TRACK_SHAPES, self.num_frames)
        return _Tracks(anno["trajs_2d"], anno["trajs_3d"], anno["visibs"].astype(bool), anno["valids"].astype(bool))

    def tracks(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``xyz [N, t, 3]`` float32 world metres and ``visible [N, t]`` bool over the frames ``indices``.

        Only tracks that are valid and finite in every one of these frames are returned.
        """
        frames = np.asarray(indices, dtype=np.int64)
        xyz = self._tracks.xyz[frames].astype(np.float32)  # [t, N, 3]
        keep = np.isfinite(xyz).all(axis=(0, 2)) & self._tracks.valid[frames].all(axis=0)
        visible = self._tracks.visible[frames][:, keep]
        return np.ascontiguousarray(xyz[:, keep].transpose(1, 0, 2)), np.ascontiguousarray(visible.T)

    def _votes(self, t: int, moving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Instance colours under the visible, valid tracks of frame ``t`` ``[k]`` and whether each track moves."""
        ids = colour_ids(load_frames([self._mask_path(t)], self.size)[0])
        uv = self._tracks.uv[t].astype(np.float32)
        on = self._tracks.visible[t] & self._tracks.valid[t] & np.isfinite(uv).all(-1)
        on[on] = (uv[on] >= 0).all(-1) & (uv[on, 0] < self.width) & (uv[on, 1] < self.height)
        pixels = np.floor(uv[on]).astype(np.int64)
        return ids[pixels[:, 1], pixels[:, 0]], moving[on]

    @cached_property
    def _dynamic_colours(self) -> np.ndarray:
        """Packed instance colours judged dynamic (the rule is in the class docstring)."""
        moving = moving_tracks(self._tracks.xyz, self._tracks.valid, self._motion_threshold)
        votes, moving_votes = Counter(), Counter()
        for t in range(self.num_frames):
            colours, is_moving = self._votes(t, moving)
            votes.update(Counter(colours.tolist()))
            moving_votes.update(Counter(colours[is_moving].tolist()))
        dynamic = [c for c, n in votes.items() if c != 0 and moving_votes[c] > self._moving_fraction * n]
        return np.array(sorted(dynamic), dtype=np.int32)

    def dynamic_mask(self, indices: Sequence[int]) -> np.ndarray:
        """``[t, H, W]`` bool: pixels whose instance colour is dynamic (see the class docstring)."""
        masks = load_frames([self._mask_path(t) for t in indices], self.size)
        return np.isin(colour_ids(masks), self._dynamic_colours)


class PointOdysseyReader(SplitFolderReader):
    """PointOdyssey sequences under ``root/{train,val,test}/``.

    Args:
        root: the dataset folder.
        motion_threshold: metres a track must move over its scene to count as moving (dynamic-mask rule).
        moving_fraction: share of an instance colour's track votes that must move for it to be dynamic.
    """

    name = "pointodyssey"
    licence = LICENCE

    def __init__(self, root: str | Path, motion_threshold: float = 0.01, moving_fraction: float = 0.5):
        super().__init__(root)
        if self.root is None:
            raise ValueError("root: PointOdyssey needs the folder that holds train/, val/ and test/")
        if not (np.isfinite(motion_threshold) and motion_threshold >= 0):
            raise ValueError(f"motion_threshold: must be a non-negative number of metres, got {motion_threshold}")
        if not 0 <= moving_fraction < 1:
            raise ValueError(f"moving_fraction: must lie in [0, 1), got {moving_fraction}")
        self.motion_threshold = motion_threshold
        self.moving_fraction = moving_fraction

    def open_scene(self, name: str) -> PointOdysseyScene:
        """Read the sequence's cameras from ``anno.npz`` (tracks and frames are read lazily)."""
        return PointOdysseyScene(self.folder(name), name, self.motion_threshold, self.moving_fraction)
