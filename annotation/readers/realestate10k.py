"""RealEstate10K: camera files from the dataset, frames supplied by the user (the dataset ships no images).

Layout::

    <root>/{train,test}/<clip_id>.txt            camera files: a URL line, then one 19-field line per frame
    <frames_root>/<clip_id>/<timestamp>.png      one image per camera line (or .jpg), named by the line's
                                                 integer timestamp in microseconds
    <frames_root>/<clip_id>.mp4                  or a video whose i-th frame is the i-th camera line

``frames_root`` defaults to ``<root>/frames``; when a clip has both a folder and a video, the folder is used.
RealEstate10K has no validation split.

Conversion, done once when a scene is opened: ``c2w`` is the inverse of the stored world-to-camera ``[R | t]``
(OpenCV axes already); ``K`` is the normalised ``fx, fy, cx, cy`` times the width and height of the actual frames
(normalised intrinsics are those of a 1x1 image, see :mod:`d4s.geometry.cameras`); timestamps are seconds and
``fps`` is one over the median timestamp step. Poses come from SLAM, so the scale is arbitrary (``metric`` is
False) and there is no depth, mask or track.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from annotation.errors import InputError
from annotation.readers.base import Scene, SplitFileReader
from annotation.readers.frames import open_frames
from d4s.geometry.cameras import rigid_inverse
from d4s.geometry.trajectories import RealEstate10KCameras, parse_realestate10k_cameras

SPLITS = ("train", "test")
LICENCE = "CC-BY-4.0 (cameras); frames from YouTube, see the dataset's terms"


def read_cameras(path: Path) -> RealEstate10KCameras:
    """The camera lines of ``path``, with strictly increasing timestamps and at least two lines (to give an fps).

    Raises InputError naming the file (and the line, where one is at fault).
    """
    try:
        cameras = parse_realestate10k_cameras(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(path, str(error)) from error
    steps = np.diff(cameras.timestamps_us.numpy())
    if len(steps) == 0:
        raise InputError(path, "only one camera line; a clip needs at least two to define its frame rate")
    if (steps <= 0).any():
        line_no = cameras.line_numbers[int(np.argmax(steps <= 0)) + 1]
        raise InputError(path, f"line {line_no}: timestamps must increase strictly")
    return cameras


class RealEstate10KScene(Scene):
    """One RealEstate10K clip: cameras from its text file, frames from a folder or a video (see module doc)."""

    dataset = "realestate10k"
    licence = LICENCE
    metric = False

    def __init__(self, clip_id: str, camera_file: Path, frames_root: Path):
        cameras = read_cameras(camera_file)
        self.name = clip_id
        stems = [str(timestamp) for timestamp in cameras.timestamps_us.tolist()]
        self._frames = open_frames(frames_root, clip_id, stems, expected_from="the camera file")
        self.height, self.width = (int(n) for n in self._frames.size)
        self.timestamps = cameras.timestamps_us.numpy() / 1e6
        self.fps = float(1.0 / np.median(np.diff(self.timestamps)))
        self.c2w = rigid_inverse(cameras.w2c).float().numpy()
        self.K = self._pixel_intrinsics(cameras.intrinsics.numpy(), self.width, self.height)

    @staticmethod
    def _pixel_intrinsics(normalised: np.ndarray, width: int, height: int) -> np.ndarray:
        """``[T, 3, 3]`` float32 pixel intrinsics from normalised ``fx, fy, cx, cy`` ``[T, 4]``."""
        fx, fy, cx, cy = (normalised * [width, height, width, height]).T
        K = np.zeros((len(normalised), 3, 3), np.float32)
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = fx, fy, cx, cy, 1.0
        return K

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """RGB frames ``[t, H, W, 3]`` uint8."""
        return self._frames.read(indices)


class RealEstate10KReader(SplitFileReader):
    """RealEstate10K camera files under ``root`` and their frames under ``frames_root`` (see the module doc).

    Scene names are clip ids; a clip id found in both ``train/`` and ``test/`` is an InputError. Clips whose
    frames are missing are still listed; opening them raises InputError.
    """

    name = "realestate10k"
    clip_suffix = ".txt"
    licence = LICENCE

    def __init__(self, root: str | Path, frames_root: str | Path | None = None):
        super().__init__(root)
        if self.root is None:
            raise ValueError("root: RealEstate10K needs the folder that holds train/ and test/")
        self.frames_root = self.root / "frames" if frames_root is None else Path(frames_root)

    def open_scene(self, name: str) -> RealEstate10KScene:
        """Read the clip's cameras and find its frames (read lazily)."""
        return RealEstate10KScene(name, self.clip_file(name), self.frames_root)
