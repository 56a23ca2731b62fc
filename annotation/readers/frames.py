"""Frames the user supplies for datasets that ship cameras but no images (RealEstate10K, Stereo4D).

A clip's frames live under a ``frames_root`` either as a folder of images, one per frame and named by a
per-frame stem the reader chooses (a timestamp, a zero-padded index), or as one video whose ``i``-th frame is
frame ``i``::

    <frames_root>/<clip>/<stem>.png     (or .jpg) one image per frame
    <frames_root>/<clip>.mp4            or a video; the folder wins when both exist

Every failure (no frames, a missing or corrupt image, a video of the wrong length) is an InputError naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from annotation.errors import InputError
from annotation.readers.images import load_frames, load_image
from d4s.utils.video import read_video

IMAGE_SUFFIXES = (".png", ".jpg")


class ImageFolder:
    """Frames stored as ``<folder>/<stem>.png`` (or ``.jpg``), one per entry of ``stems``; ``size = (H, W)`` is
    that of the first image, and every image read must match it."""

    def __init__(self, folder: Path, stems: Sequence[str]):
        self.paths = [self._find(folder, stem) for stem in stems]
        self.source = self.paths[0]
        self.size = load_image(self.paths[0]).shape[:2]

    @staticmethod
    def _find(folder: Path, stem: str) -> Path:
        for suffix in IMAGE_SUFFIXES:
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
        looked_for = ", ".join(IMAGE_SUFFIXES)
        raise InputError(folder / f"{stem}.png", f"frame image is missing (looked for {looked_for})")

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 RGB ``[t, H, W, 3]``."""
        return load_frames([self.paths[i] for i in indices], self.size)


class VideoFrames:
    """Frames of one video file, decoded once and kept; it must hold exactly ``num_frames`` frames."""

    def __init__(self, path: Path, num_frames: int, expected_from: str):
        try:
            self.frames = read_video(path)
        except ValueError as error:
            raise InputError(path, str(error).removeprefix(f"{path}: ")) from error
        if len(self.frames) != num_frames:
            raise InputError(path, f"video holds {len(self.frames)} frames, {expected_from} {num_frames} (truncated?)")
        self.source = path
        self.size = self.frames.shape[1:3]

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 RGB ``[t, H, W, 3]``."""
        return self.frames[np.asarray(indices, dtype=np.int64)]


def open_frames(
    frames_root: Path, clip_id: str, stems: Sequence[str], expected_from: str = "the clip has"
) -> ImageFolder | VideoFrames:
    """The clip's frame folder (images named ``stems``) if there is one, else its video of ``len(stems)`` frames.

    ``expected_from`` names where the frame count comes from in the error for a video of the wrong length
    (e.g. "the camera file"). Raises InputError when the clip has neither a folder nor a video.
    """
    folder, video = frames_root / clip_id, frames_root / f"{clip_id}.mp4"
    if folder.is_dir():
        return ImageFolder(folder, stems)
    if video.is_file():
        return VideoFrames(video, len(stems), expected_from)
    raise InputError(folder, f"no frames for clip {clip_id!r}: expected this folder or the video {video.name}")
