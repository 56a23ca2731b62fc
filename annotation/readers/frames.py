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

import av
import numpy as np

from annotation.errors import InputError
from annotation.readers.images import load_frames, load_image

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
    """Frames of one video file, decoded lazily with PyAV: it must hold exactly ``num_frames`` frames.

    Opening reads the container's metadata and decodes only the first frame (for ``size = (H, W)``); ``read``
    decodes forward from where the last read stopped, so windows read in increasing order cost one pass over the
    video, and keeps only the frames from the smallest index of the latest request on (at most one window's span of
    ``[H, W, 3]`` uint8 frames is held, never the whole video). A request for a frame the decoder has passed and no
    longer holds restarts decoding from frame 0.

    Length check: when the container states a frame count (mp4 does) that differs from ``num_frames``, opening
    raises InputError; when it states none, a video that is too short raises InputError naming the file when a
    missing frame is first asked for, and a longer one is not detected. A file that cannot be opened, holds no
    video or fails to decode (truncated, corrupt) raises InputError naming it, at open or at the read that meets
    the damage.
    """

    def __init__(self, path: Path, num_frames: int, expected_from: str):
        self.source = path
        self.num_frames = num_frames
        self._expected_from = expected_from
        self._container = None
        self._decoder = None
        self._next = 0  # index of the frame the decoder yields next
        self._held: dict[int, np.ndarray] = {}  # decoded frames kept for the next request, by index
        self._start()
        stated = self._container.streams.video[0].frames
        if stated and stated != num_frames:
            self._wrong_length(stated)
        self.size = self._decode_until(0)[0].shape[:2]

    def _error(self, reason: str) -> InputError:
        return InputError(self.source, reason)

    def _wrong_length(self, count: int):
        self.close()
        raise self._error(f"video holds {count} frames, {self._expected_from} {self.num_frames} (truncated?)")

    def _start(self) -> None:
        """(Re)open the container and position the decoder at frame 0."""
        self.close()
        try:
            self._container = av.open(str(self.source))
        except av.error.FFmpegError as error:
            raise self._error(f"cannot decode video ({error})") from error
        if not self._container.streams.video:
            self.close()
            raise self._error("the file holds no video stream")
        self._decoder = self._container.decode(video=0)
        self._next = 0

    def _decode_until(self, last: int, keep_from: int = 0) -> dict[int, np.ndarray]:
        """Decode forward through frame ``last``, adding the decoded frames from ``keep_from`` on to ``self._held``
        (earlier ones are decoded and dropped); returns it."""
        while self._next <= last:
            try:
                frame = next(self._decoder)
            except StopIteration:
                self._wrong_length(self._next)
            except (av.error.FFmpegError, IndexError) as error:
                self.close()
                raise self._error(f"cannot decode video ({error})") from error
            if self._next >= keep_from:
                self._held[self._next] = frame.to_ndarray(format="rgb24")
            self._next += 1
        return self._held

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 RGB ``[t, H, W, 3]`` for frame ``indices`` (each in ``[0, num_frames)``, any order)."""
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0 or max(indices) >= self.num_frames:
            raise IndexError(f"frame indices must be non-empty and in [0, {self.num_frames}), got {indices}")
        first = min(indices)
        missing = [i for i in indices if i not in self._held]
        if any(i < self._next for i in missing) or (missing and self._decoder is None):
            self._held.clear()  # a frame already passed and dropped (or the file closed): start again from frame 0
            self._start()
        self._held = {i: f for i, f in self._held.items() if i >= first}
        held = self._decode_until(max(indices), keep_from=first)
        frames = np.stack([held[i] for i in indices])
        if self.num_frames - 1 in held:
            self.close()  # every frame has been decoded: nothing more to read from the file
        return frames

    def close(self) -> None:
        """Release the open file (a later ``read`` reopens it)."""
        if self._container is not None:
            self._container.close()
        self._container = self._decoder = None


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
