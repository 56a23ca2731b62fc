"""Stereo4D: metric cameras and 3D world tracks from VR180 stereo videos; the frames are produced by the user.

Layout::

    <root>/{train,test}/<name>.npz      one clip (``<name>`` = ``<video_id>_<first frame timestamp>``), see below
    <frames_root>/<name>/00000.png      its rectified left-eye 60 degree perspective frames, one per timestamp,
                                        named by the 0-based frame index (or .jpg)
    <frames_root>/<name>.mp4            or the video whose i-th frame is frame i (the authors' ``rectify.py``
                                        writes ``<name>-left_rectified.mp4``: rename it)

``frames_root`` defaults to ``<root>/frames`` (see :mod:`annotation.readers.frames`); the split is the folder the
npz is in. Stereo4D has no validation split.

The npz (docs/datasets.md, "Stereo4D"; keys, shapes and the ragged layout as the authors' ``load_dataset_npz`` in
github.com/Stereo4d/stereo4d-code reads them; dtypes are not documented, so only their kind is checked):

- ``name`` and ``video_id``: strings (``name`` must equal the file's stem);
- ``timestamps [T]``: frame times in the source video, microseconds, strictly increasing;
- ``camera2world [T, 3, 4]``: camera-to-world ``[R | t]`` of the rectified camera, OpenCV axes, metres;
- ``track_lengths [N]``, ``track_indices [M]``, ``track_coordinates [M, 3]``: ragged 3D world tracks. Track ``i``
  owns the ``track_lengths[i]`` consecutive entries after those of tracks ``0..i-1`` (so ``M`` is the sum of the
  lengths); each entry is a frame index in ``[0, T)`` (at most once per track) and the world point in metres;
- ``rectified2rig [2, 3, 3]``: left and right rectification rotations; ``fov_bounds [4]``: yaw and tilt bounds
  (degrees) of the VR180 frame. Both only serve to make the frames; they are checked, not used.

Conversion, done once when a scene is opened: ``c2w`` is ``camera2world`` completed to 4x4 (already OpenCV,
metres; checked to be finite rigid poses with det +1). There are no stored intrinsics: the crops have a 60 degree
horizontal field of view, so ``fx = fy = 0.5 * W / tan(30 deg)`` (443.4 px at the native 512x512) with the
principal point at the centre ``(W/2, H/2)`` (pixel centres at +0.5, as the authors' crop code samples them).
Frames must be square: any uniform resize of the 512x512 crops keeps that field of view. Timestamps become
seconds and ``fps`` is one over the median timestamp step. Cameras and tracks are metric (the VR180 rigs' 63 mm
baseline fixes the scale), but there is no per-pixel depth and no dynamic mask: the tracks, projected into each
frame, are the sparse metric oracle for aligning a relative depth estimate.

Tracks: expanded (for the frames asked for) to ``[N, t, 3]`` with NaN where a track is absent; a point is visible
where it is present and finite (a stored non-finite point counts as absent). :meth:`Stereo4DScene.tracks` keeps the tracks present in at least one of the frames asked for and
leaves NaN, not visible, where they are absent (the shard schema allows NaN exactly where not visible), so
visibility survives instead of every partial track being dropped.

Unverified (no real sample was at hand; the checks above are strict so a mismatch fails loudly): the dtypes;
``name`` and ``video_id`` stored as numpy strings (an object array is refused, pickles are not loaded); and that
``camera2world`` is the left eye's camera (the frames to supply are left-eye crops on that assumption).

Licence: the authors' README (github.com/Stereo4d/stereo4d-code, "Download Stereo4D dataset") releases the
annotations under CC BY 4.0; the frames come from YouTube videos, under their owners' terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from annotation.errors import InputError
from annotation.readers.base import Scene, SplitFileReader
from annotation.readers.frames import open_frames
from annotation.readers.native import read_npz_arrays
from d4s.geometry.cameras import check_c2w, intrinsics_from_fov

SPLITS = ("train", "test")
FOV_X_DEGREES = 60.0
LICENCE = "CC-BY-4.0 (annotations); frames from YouTube, see the videos' terms"
_SHAPES = {  # "T", "N", "M" are sizes that must agree across keys
    "name": (),
    "video_id": (),
    "timestamps": ("T",),
    "camera2world": ("T", 3, 4),
    "track_lengths": ("N",),
    "track_indices": ("M",),
    "track_coordinates": ("M", 3),
    "rectified2rig": (2, 3, 3),
    "fov_bounds": (4,),
}
_KINDS = {  # numpy dtype kinds accepted, and how to say so
    "name": ("U", "a string"),
    "video_id": ("U", "a string"),
    "timestamps": ("iuf", "real numbers"),
    "camera2world": ("f", "floats"),
    "track_lengths": ("iu", "integers"),
    "track_indices": ("iu", "integers"),
    "track_coordinates": ("f", "floats"),
    "rectified2rig": ("f", "floats"),
    "fov_bounds": ("f", "floats"),
}


def read_clip(path: Path) -> dict[str, np.ndarray]:
    """Every array of a Stereo4D npz, with keys, shapes (:func:`~annotation.readers.native.read_npz_arrays`) and
    dtype kinds checked, and ``name`` checked against the file name (see the module doc).

    Raises InputError naming the file and what was expected.
    """
    arrays = read_npz_arrays(path, _SHAPES)
    for key, (kinds, what) in _KINDS.items():
        if arrays[key].dtype.kind not in kinds:
            raise InputError(path, f"{key}: expected {what}, got dtype {arrays[key].dtype}")
    if str(arrays["name"]) != path.stem:
        raise InputError(path, f"name: {str(arrays['name'])!r} differs from the file name {path.stem!r}")
    return arrays


def check_ragged_tracks(path: Path, lengths: np.ndarray, indices: np.ndarray, num_frames: int) -> np.ndarray:
    """The track id of every ragged entry ``[M]`` int64, after checking the layout against ``T = num_frames``.

    ``lengths [N]`` must be in ``[0, T]`` and sum to ``M = len(indices)``; every frame index must lie in
    ``[0, T)`` and appear at most once per track. Raises InputError naming ``path``.
    """
    lengths, indices = lengths.astype(np.int64), indices.astype(np.int64)
    if len(lengths) and (lengths.min() < 0 or lengths.max() > num_frames):
        got = f"{lengths.min()}..{lengths.max()}"
        raise InputError(path, f"track_lengths: expected values in [0, {num_frames}] (T), got {got}")
    if int(lengths.sum()) != len(indices):
        raise InputError(
            path,
            f"track_lengths sum to {int(lengths.sum())}, but track_indices and track_coordinates hold {len(indices)} "
            "entries (the ragged layout needs them equal)",
        )
    if len(indices) and (indices.min() < 0 or indices.max() >= num_frames):
        got = f"{indices.min()}..{indices.max()}"
        raise InputError(path, f"track_indices: expected frame indices in [0, {num_frames}) (T), got {got}")
    track_ids = np.repeat(np.arange(len(lengths)), lengths)
    if len(np.unique(track_ids * num_frames + indices)) != len(indices):
        raise InputError(path, "track_indices: a track lists the same frame twice")
    return track_ids


class Stereo4DScene(Scene):
    """One Stereo4D clip: cameras and tracks from its npz, frames from a folder or a video (see the module doc)."""

    dataset = "stereo4d"
    licence = LICENCE
    metric = True
    has_tracks = True

    def __init__(self, path: Path, frames_root: Path):
        self.path = path
        self.name = path.stem
        clip = read_clip(path)
        timestamps_us = clip["timestamps"].astype(np.float64)
        steps = np.diff(timestamps_us)
        if len(steps) == 0 or not np.isfinite(timestamps_us).all() or (steps <= 0).any():
            raise InputError(path, "timestamps: expected at least two finite, strictly increasing values")
        self.timestamps = timestamps_us / 1e6
        self.fps = float(1.0 / np.median(np.diff(self.timestamps)))
        self.c2w = self._cameras(clip["camera2world"])
        self._track_ids = check_ragged_tracks(path, clip["track_lengths"], clip["track_indices"], self.num_frames)
        self._track_frames = clip["track_indices"].astype(np.int64)
        self._track_xyz = clip["track_coordinates"].astype(np.float32)
        stems = [f"{t:05d}" for t in range(self.num_frames)]
        self._frames = open_frames(frames_root, self.name, stems, expected_from="the npz has timestamps for")
        self.height, self.width = (int(n) for n in self._frames.size)
        if self.height != self.width:
            raise InputError(
                self._frames.source,
                f"frames are {self.width}x{self.height}; Stereo4D crops are square (512x512, 60 deg horizontal FoV)",
            )
        K = intrinsics_from_fov(self.width, self.height, FOV_X_DEGREES, dtype=torch.float64).numpy()
        self.K = np.repeat(K[None], self.num_frames, axis=0).astype(np.float32)

    def _cameras(self, camera2world: np.ndarray) -> np.ndarray:
        """``c2w [T, 4, 4]`` float32 from stored ``[T, 3, 4]``, checked to be finite rigid poses (det +1)."""
        c2w = np.tile(np.eye(4), (len(camera2world), 1, 1))
        c2w[:, :3] = camera2world
        try:
            check_c2w(torch.from_numpy(c2w), "camera2world")
        except ValueError as error:
            raise InputError(self.path, str(error)) from error
        return c2w.astype(np.float32)

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """RGB frames ``[t, H, W, 3]`` uint8."""
        return self._frames.read(indices)

    def tracks(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``xyz [N, t, 3]`` float32 world metres and ``visible [N, t]`` bool over the frames ``indices``.

        Only tracks present (finite) in at least one of these frames are returned, in stored order; ``xyz`` is
        NaN exactly where ``visible`` is False (the track is absent there, see the module doc).
        """
        frames = np.asarray(indices, dtype=np.int64)
        unique, inverse = np.unique(frames, return_inverse=True)
        column = np.full(self.num_frames, -1, np.int64)
        column[unique] = np.arange(len(unique))
        entry_column = column[self._track_frames]
        hit = (entry_column >= 0) & np.isfinite(self._track_xyz).all(axis=-1)
        kept, rows = np.unique(self._track_ids[hit], return_inverse=True)
        xyz = np.full((len(kept), len(unique), 3), np.nan, np.float32)
        xyz[rows, entry_column[hit]] = self._track_xyz[hit]
        xyz = np.ascontiguousarray(xyz[:, inverse])
        return xyz, np.isfinite(xyz).all(axis=-1)


class Stereo4DReader(SplitFileReader):
    """Stereo4D clips under ``root/{train,test}/*.npz`` and their frames under ``frames_root`` (see the module doc).

    Scene names are the npz stems; a name found in both splits is an InputError. Clips whose frames are missing
    are still listed; opening them raises InputError.
    """

    name = "stereo4d"
    clip_suffix = ".npz"
    licence = LICENCE

    def __init__(self, root: str | Path, frames_root: str | Path | None = None):
        super().__init__(root)
        if self.root is None:
            raise ValueError("root: Stereo4D needs the folder that holds train/ and test/ npz files")
        self.frames_root = self.root / "frames" if frames_root is None else Path(frames_root)

    def open_scene(self, name: str) -> Stereo4DScene:
        """Read and check the clip's npz and find its frames (read lazily)."""
        return Stereo4DScene(self.clip_file(name), self.frames_root)
