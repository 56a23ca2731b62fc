"""Spring: synthetic 1080p stereo videos with metric disparity ground truth and cameras (left camera only).

Layout::

    <root>/{train,test}/<seq>/frame_left/frame_left_0001.png    RGB frames, 1-based, 1920x1080 in the release
                              disp1_left/disp1_left_0001.dsp5    HDF5, key "disparity", at 2x the frame size
                              cam_data/intrinsics.txt            one line per frame: fx fy cx cy (pixels)
                              cam_data/extrinsics.txt            one line per frame: 16 values, a row-major 4x4
                                                                 world-to-camera matrix, OpenCV axes

Other folders (``frame_right``, ``disp1_right``, ``disp2_*``, ``flow_*``, ``maps``) are not read: the right
camera would only add a second view of the same scene, and flow ground truth is not used by the pipeline.
Scene names are ``"<split>/<seq>"``. The test split ships no disparity (the benchmark withholds it), so its
scenes fail to open with an InputError naming the missing ``disp1_left/`` folder.

Conventions (``docs/datasets.md``, "Spring"): the disparity ground truth is stored at twice the frame
resolution (3840x2160 for 1920x1080 frames) with values in pixels of the 1080p frames; depth = fx * B / d with
the stereo baseline B = 0.065 m; NaN marks invalid pixels. The extrinsics are read as world-to-camera in OpenCV
axes; this convention is **unverified** in official text (third-party loaders invert them the same
way), so the reader checks every matrix is rigid (bottom row 0 0 0 1, orthonormal rotation, det +1) and fails
loudly otherwise. The frame rate is not stated in the sources checked: 60 fps is assumed (**unverified**;
override it with the reader option ``fps``).

Conversion, done once when a scene is opened: ``K`` is built from ``intrinsics.txt`` as stored (pixels of the
frames returned); ``c2w`` is the inverse of the stored world-to-camera matrix after projecting its rotation onto
the nearest rotation (:func:`annotation.readers.native.cameras_from_w2c`, orthonormal within 1e-4 before). Depth, read lazily per frame:
the disparity is subsampled ``[::2, ::2]`` (shape checked to be exactly 2H x 2W), then
``depth = fx * 0.065 / disparity`` in float32 metres with that frame's fx; NaN, infinite, zero or negative
disparity gives depth 0 (invalid). Spring has moving objects but no dynamic masks and no point tracks
(``has_dynamic_mask`` and ``has_tracks`` are False: use flow-based masks and tracks).

Licence: not confirmed. The Spring authors' RobustSpring derivative (Hugging Face card jeschmalfuss/RobustSpring)
is CC BY 4.0, and the Blender open movie "Spring" it is rendered from is CC BY 4.0 (cloud.blender.org/spring), but
the licence of the Spring data release itself (spring-benchmark.org, DaRUS doi:10.18419/darus-3376) could not be
read here; check it before redistributing shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from annotation.errors import InputError
from annotation.readers.base import ImageFileScene, SplitFolderReader
from annotation.readers.images import load_image, stack_maps
from annotation.readers.native import cameras_from_w2c, pinhole_intrinsics, read_text_table

SPLITS = ("train", "test")
FPS = 60.0  # unverified, see the module doc
BASELINE = 0.065  # metres between the left and right cameras (docs/datasets.md)
DISPARITY_KEY = "disparity"
TEXT_ROTATION_ATOL = 1e-4  # orthonormality error allowed in the text extrinsics (rounded decimals)
LICENCE = "CC-BY-4.0 (unconfirmed, see annotation/readers/spring.py)"


def read_disparity(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The ``disparity`` array of a ``.dsp5`` file subsampled to ``size = (H, W)``: ``[H, W]`` as stored (float).

    The stored array must be exactly ``[2H, 2W]`` (Spring's ground truth is at twice the frame resolution) with a
    floating-point dtype. Raises InputError naming the file.
    """
    if not path.is_file():
        raise InputError(path, "disparity file is missing")
    try:
        with h5py.File(path, "r") as file:
            if DISPARITY_KEY not in file:
                raise InputError(path, f"no HDF5 dataset {DISPARITY_KEY!r} (found {sorted(file.keys())})")
            dataset = file[DISPARITY_KEY]
            if not isinstance(dataset, h5py.Dataset):
                raise InputError(path, f"{DISPARITY_KEY!r} is an HDF5 group, expected a dataset")
            expected = (2 * size[0], 2 * size[1])
            if dataset.shape != expected:
                raise InputError(
                    path,
                    f"{DISPARITY_KEY!r} has shape {list(dataset.shape)}, expected {list(expected)} "
                    f"(twice the {size[1]}x{size[0]} frames)",
                )
            if not np.issubdtype(dataset.dtype, np.floating):
                raise InputError(path, f"{DISPARITY_KEY!r} has dtype {dataset.dtype}, expected floating point")
            return dataset[()][::2, ::2]  # one contiguous read: strided HDF5 reads are twice as slow
    except OSError as error:
        raise InputError(path, f"cannot read as HDF5 ({error})") from error


def disparity_to_depth(disparity: np.ndarray, fx: float) -> np.ndarray:
    """z-depth ``[H, W]`` float32 metres ``fx * 0.065 / disparity``; NaN, inf or non-positive disparity gives 0."""
    disparity = disparity.astype(np.float64)
    valid = np.isfinite(disparity) & (disparity > 0)
    depth = np.zeros(disparity.shape, np.float64)
    depth[valid] = fx * BASELINE / disparity[valid]
    depth[~np.isfinite(depth)] = 0.0
    return depth.astype(np.float32)


class SpringScene(ImageFileScene):
    """One Spring sequence, left camera (see the module doc for files and conventions)."""

    dataset = "spring"
    licence = LICENCE
    metric = True
    has_depth = True

    def __init__(self, folder: Path, name: str, fps: float):
        self.name = name
        self.folder = folder
        self.fps = fps
        cam_data = folder / "cam_data"
        intrinsics = read_text_table(cam_data / "intrinsics.txt", 4, "fx fy cx cy")
        w2c = read_text_table(cam_data / "extrinsics.txt", 16, "a row-major 4x4 world-to-camera matrix").reshape(
            -1, 4, 4
        )
        if len(intrinsics) != len(w2c):
            raise InputError(
                cam_data / "intrinsics.txt", f"{len(intrinsics)} lines, but extrinsics.txt has {len(w2c)} frames"
            )
        if (intrinsics[:, :2] <= 0).any():
            line = int(np.argmax((intrinsics[:, :2] <= 0).any(axis=1))) + 1
            raise InputError(cam_data / "intrinsics.txt", f"line {line}: focal lengths fx, fy must be positive")
        self._fx = intrinsics[:, 0]
        K = pinhole_intrinsics(intrinsics)
        self.K, self.c2w = cameras_from_w2c(cam_data / "extrinsics.txt", K, w2c, atol=TEXT_ROTATION_ATOL)
        self.timestamps = np.arange(len(w2c)) / fps
        self._check_files()
        self.height, self.width = load_image(self._rgb_path(0)).shape[:2]

    def _check_files(self) -> None:
        """Every frame and disparity file of the ``num_frames`` camera lines exists, and no extra frame does."""
        frames = sorted((self.folder / "frame_left").glob("frame_left_*.png"))
        if len(frames) > self.num_frames:
            raise InputError(
                self.folder / "frame_left", f"{len(frames)} frames, but cam_data has {self.num_frames} camera lines"
            )
        if not (self.folder / "disp1_left").is_dir():
            raise InputError(self.folder / "disp1_left", "disparity folder is missing (no depth ground truth)")
        for t in range(self.num_frames):
            for path, what in ((self._rgb_path(t), "frame image"), (self._disparity_path(t), "disparity file")):
                if not path.is_file():
                    raise InputError(path, f"{what} is missing (cam_data has {self.num_frames} frames)")

    def _rgb_path(self, t: int) -> Path:
        return self.folder / "frame_left" / f"frame_left_{t + 1:04d}.png"

    def _disparity_path(self, t: int) -> Path:
        return self.folder / "disp1_left" / f"disp1_left_{t + 1:04d}.dsp5"

    def depth(self, indices: Sequence[int]) -> np.ndarray:
        """z-depth ``[t, H, W]`` float32 metres from the 2x disparity (see the module doc; 0 = invalid)."""
        depth = [disparity_to_depth(read_disparity(self._disparity_path(t), self.size), self._fx[t]) for t in indices]
        return stack_maps(depth, self.size, np.float32)


class SpringReader(SplitFolderReader):
    """Spring sequences under ``root/{train,test}/``.

    Args:
        root: the dataset folder (the one holding ``train/`` and ``test/``).
        fps: frame rate of the sequences (60 by default, unverified; see the module doc).
    """

    name = "spring"
    licence = LICENCE

    def __init__(self, root: str | Path, fps: float = FPS):
        super().__init__(root)
        if not (np.isfinite(fps) and fps > 0):
            raise ValueError(f"fps: must be a positive number of frames per second, got {fps}")
        self.fps = float(fps)

    def open_scene(self, name: str) -> SpringScene:
        """Read the sequence's cameras from ``cam_data/`` (frames and disparity are read lazily)."""
        return SpringScene(self.folder(name), name, self.fps)
