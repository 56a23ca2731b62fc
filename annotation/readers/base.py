"""What every dataset reader provides: a list of scenes, each a lazy frame sequence in the project conventions.

A reader converts its dataset's conventions once, when a scene is opened: OpenCV camera axes, camera-to-world
4x4 poses, metres where the dataset is metric, intrinsics in pixels of the frames it returns. Bad input raises
:class:`annotation.errors.InputError` naming the file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np

from annotation.errors import InputError
from annotation.readers.images import load_frames

SPLITS = ("train", "val", "test")


class Scene(ABC):
    """One scene (a video or a path of frames) of ``num_frames`` frames of size ``height x width``.

    Attributes set by the reader: ``dataset``, ``name``, ``fps``, ``height``, ``width``, ``K [T,3,3]`` (pixels),
    ``c2w [T,4,4]`` (OpenCV camera-to-world; ``None`` when the dataset has no poses), ``timestamps [T]``
    (seconds), ``metric`` (poses and depth in metres), ``licence`` and ``caption``. Per-frame data is loaded
    only when asked for, for the frame indices asked for.
    """

    has_depth: ClassVar[bool] = False
    has_dynamic_mask: ClassVar[bool] = False
    has_tracks: ClassVar[bool] = False

    dataset: str
    name: str
    fps: float
    height: int
    width: int
    K: np.ndarray
    c2w: np.ndarray | None
    timestamps: np.ndarray
    metric: bool
    licence: str = ""
    caption: str = ""

    @property
    def num_frames(self) -> int:
        return len(self.timestamps)

    @abstractmethod
    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """RGB frames ``[t, H, W, 3]`` uint8."""

    def depth(self, indices: Sequence[int]) -> np.ndarray:
        """z-depth ``[t, H, W]`` float32 metres (0 = invalid); only when ``has_depth``."""
        raise NotImplementedError(f"{self.dataset} has no depth")

    def dynamic_mask(self, indices: Sequence[int]) -> np.ndarray:
        """Dynamic-object masks ``[t, H, W]`` bool; only when ``has_dynamic_mask``."""
        raise NotImplementedError(f"{self.dataset} has no dynamic masks")

    def tracks(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """3D tracks over the frames: ``xyz [N, t, 3]`` world metres, ``visible [N, t]`` bool; only when
        ``has_tracks``. A position may be non-finite only where the track is not visible (the shard schema's rule:
        a dataset need not know where a hidden point is)."""
        raise NotImplementedError(f"{self.dataset} has no tracks")


class ImageFileScene(Scene):
    """A scene whose frames are image files, one per frame, all ``height x width``: subclasses name the file of
    frame ``t`` (:meth:`_rgb_path`); :meth:`frames` loads and checks them."""

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of every frame."""
        return self.height, self.width

    @abstractmethod
    def _rgb_path(self, t: int) -> Path:
        """The image file of frame ``t`` (0-based)."""

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """RGB frames ``[t, H, W, 3]`` uint8."""
        return load_frames([self._rgb_path(t) for t in indices], self.size)

    def _require_frame_files(self, listed_by: str) -> None:
        """Raise InputError naming the first of the ``num_frames`` frame images that is missing; ``listed_by``
        names the file that lists the frames (for the message)."""
        missing = next((path for path in map(self._rgb_path, range(self.num_frames)) if not path.is_file()), None)
        if missing is not None:
            raise InputError(missing, f"frame image is missing ({listed_by} lists {self.num_frames} frames)")


class Reader(ABC):
    """A dataset on disk (or generated, for toy4d): scene names, their splits, and scenes to open."""

    name: ClassVar[str]
    licence: ClassVar[str]
    needs_root: ClassVar[bool] = True  # False for generated datasets (toy4d)

    def __init__(self, root: str | Path | None):
        if root is None and self.needs_root:
            raise ValueError(f"{self.name}: the dataset root is required (--root PATH)")
        self.root = None if root is None else Path(root)

    @abstractmethod
    def scene_names(self) -> list[str]:
        """All scene names, sorted (a stable order, so work splits the same way on every machine)."""

    @abstractmethod
    def split_of(self, name: str) -> str:
        """The split (one of :data:`SPLITS`) the scene belongs to."""

    @abstractmethod
    def open_scene(self, name: str) -> Scene:
        """Open one scene, reading its small metadata (cameras, timestamps) now and frames lazily."""


class SplitFolderReader(Reader):
    """A dataset laid out as ``root/<split>/<sequence>/`` with ``split`` one of :data:`SPLITS`: scene names are
    ``"<split>/<sequence>"`` and a scene's split is its folder's."""

    def scene_names(self) -> list[str]:
        """``"<split>/<sequence>"`` for every sequence folder, sorted."""
        if not any((self.root / split).is_dir() for split in SPLITS):
            raise InputError(
                self.root, f"no {', '.join(f'{split}/' for split in SPLITS)} folder of {self.name} sequences"
            )
        return sorted(
            f"{split}/{folder.name}"
            for split in SPLITS
            if (self.root / split).is_dir()
            for folder in (self.root / split).iterdir()
            if folder.is_dir() and not folder.name.startswith(".")
        )

    def folder(self, name: str) -> Path:
        """The folder of scene ``name``; ValueError naming the expected form when there is no such scene."""
        split, _, sequence = name.partition("/")
        if split not in SPLITS or not sequence or "/" in sequence or not (self.root / name).is_dir():
            raise ValueError(
                f"name: no {self.name} sequence {name!r} under {self.root} (expected '<split>/<sequence>')"
            )
        return self.root / name

    def split_of(self, name: str) -> str:
        """The split folder the sequence is in."""
        return self.folder(name).parent.name


class SplitFileReader(Reader):
    """A dataset of one file per clip, ``root/<split>/<clip><clip_suffix>`` (``split`` one of :data:`SPLITS`):
    scene names are the clip names, unique across splits, and a clip's split is its file's folder."""

    clip_suffix: ClassVar[str]  # ".txt", ".npz", ...

    @cached_property
    def _clip_files(self) -> dict[str, Path]:
        if not any((self.root / split).is_dir() for split in SPLITS):
            raise InputError(self.root, f"no train/ or test/ folder (nor val/) of {self.name} {self.clip_suffix} files")
        files: dict[str, Path] = {}
        for split in SPLITS:
            for path in sorted((self.root / split).glob(f"*{self.clip_suffix}")):
                if path.stem in files:
                    raise InputError(path, f"clip {path.stem!r} is also in {files[path.stem]}; a clip has one split")
                files[path.stem] = path
        return files

    def clip_file(self, name: str) -> Path:
        """The file of clip ``name``; ValueError when there is no such clip."""
        if name not in self._clip_files:
            raise ValueError(f"name: no {self.name} clip {name!r} under {self.root}")
        return self._clip_files[name]

    def scene_names(self) -> list[str]:
        """Clip names of every split, sorted."""
        return sorted(self._clip_files)

    def split_of(self, name: str) -> str:
        """The split folder the clip's file is in."""
        return self.clip_file(name).parent.name
