"""MultiCamVideo (ReCamMaster's dataset): ten synchronised Unreal Engine 5 videos per dynamic scene, metric cameras.

Layout (docs/datasets.md, "MultiCamVideo")::

    <root>/train/f{18,24,35,50}_aperture<N>/scene<K>/videos/cam01.mp4 .. cam10.mp4   81 frames, 15 fps, 1280x1280
                                                    /cameras/camera_extrinsics.json    poses of the 10 cameras

``camera_extrinsics.json`` is ``{"frame<i>": {"cam<XX>": "[a b c 0] [d e f 0] [g h i 0] [tx ty tz 1]"}}`` for
``i = 0 .. 80`` and ``XX = 01 .. 10``: an Unreal transform in the row-vector convention, whose transpose is the
camera-to-world matrix; translation in **centimetres**; Unreal axes for both the world and the camera (X forward,
Y right, Z up; **left-handed**). The dataset has no depth, masks, tracks or captions, and no intrinsics file: the
focal length is in the name of the ``f<mm>_aperture<N>`` folder. The release's ``val/10basic_trajectories`` folder
has no focal length in its path (and no scene level), so it is not read; every scene is in ``train``.

Scenes (names relative to ``train/``):

- ``"f18_aperture10/scene1/cam03"``: one camera's video, 81 frames at 15 fps (always listed);
- ``"f18_aperture10/scene1/frame12"``: the ten cameras at one time step (JSON key ``frame12``), frame ``k`` being
  frame 12 of ``cam{k+1:02d}.mp4``, listed only with the reader option ``multiview=True``. Its timestamps are all
  that time step's (``12 / 15`` s) and its ``fps`` stays the source's 15, which has no meaning across views. A
  clip window needs ``clips.frames_per_clip <= 10`` to fit one.

Conversion, done when a scene is opened (the camera file once per scene folder, kept for the next scenes):

- ``c2w``: transpose the stored matrix, take its camera axes to OpenCV (x = Unreal Y right, y = -Unreal Z down,
  z = Unreal X forward), negate the world Y axis (the world becomes X forward, Y **left**, Z up: right-handed) and
  divide the translation by 100 (metres). Taking only the camera axes to OpenCV (as ReCamMaster's loader does)
  leaves a reflection, det(R) = -1; with the world flip every pose is a proper rotation, which is checked
  (finite, orthonormal within 1e-3, det +1). Points keep their pixels: a point ``(X, Y, Z)`` cm in the Unreal
  world is ``(X, -Y, Z) / 100`` m in the converted world.
- ``K`` (**unverified**, docs/datasets.md): fx = fy = f_mm / 23.76 * W for the 23.76 mm square sensor, principal point
  at the image centre ``(W / 2, H / 2)`` (pixel centres at +0.5), i.e. :func:`d4s.geometry.intrinsics_from_fov`
  of the horizontal FoV ``2 atan(23.76 / (2 f_mm))``, with ``W`` and ``H`` those of the decoded
  frames, which must be square. Only the released focal lengths 18, 24, 35 and 50 mm are accepted.
- Frames: RGB uint8 decoded with :func:`d4s.utils.video.read_video`. The JSON must hold exactly
  ``frames_per_video`` (81) frames of exactly the ten cameras; a video shorter than the frames asked for is an
  InputError when they are read (counting a video's frames at open time would decode it whole).

Licence: the dataset card on Hugging Face (huggingface.co/datasets/KwaiVGI/MultiCamVideo-Dataset, README front
matter) says ``license: apache-2.0``; the 3D environments, characters and animations it was rendered from come from
Fab and Mixamo, whose own terms are not restated there.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from annotation.errors import InputError
from annotation.readers.base import Reader, Scene
from d4s.geometry import check_c2w, intrinsics_from_fov
from d4s.utils.video import read_video

FPS = 15.0
FRAMES_PER_VIDEO = 81
CAMERAS = tuple(f"cam{i:02d}" for i in range(1, 11))
FOCAL_LENGTHS_MM = (18.0, 24.0, 35.0, 50.0)  # the released f<mm>_aperture<N> folders
SENSOR_MM = 23.76  # square sensor width = height (unverified, docs/datasets.md)
CM_TO_M = 0.01
CACHED_CAMERA_FILES = 16  # converted camera files a reader keeps (10 + 81 scenes share one; ~52 KB each)
LICENCE = "Apache-2.0 (dataset card); rendered from Fab and Mixamo assets"

# Columns: the OpenCV camera axes x (right), y (down), z (forward) in Unreal camera axes (X forward, Y right, Z up).
_UNREAL_FROM_OPENCV_CAMERA = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
# Unreal world (X forward, Y right, Z up; left-handed) to the right-handed X forward, Y left, Z up.
_WORLD_FLIP = np.diag([1.0, -1.0, 1.0])
_FOCAL_FOLDER = re.compile(r"f(\d+(?:\.\d+)?)_aperture(\d+(?:\.\d+)?)")
_TRANSFORM = re.compile(r"\s*(?:\[[^\[\]]*\]\s*){4}")
_ROW = re.compile(r"\[([^\[\]]*)\]")
_VIEW_NAME = re.compile(r"frame(0|[1-9]\d*)")
_TRANSFORM_FORM = "'[a b c 0] [d e f 0] [g h i 0] [tx ty tz 1]'"


def focal_length_mm(folder: Path) -> float:
    """The focal length in millimetres from a ``f<mm>_aperture<N>`` folder name; InputError naming the folder."""
    match = _FOCAL_FOLDER.fullmatch(folder.name)
    if match is None:
        raise InputError(
            folder,
            "expected a folder named f<focal mm>_aperture<f-number> (e.g. f18_aperture10): the intrinsics "
            "come from the focal length in this name",
        )
    focal = float(match[1])
    if focal not in FOCAL_LENGTHS_MM:
        raise InputError(folder, f"focal length {focal:g} mm is not one of the released {FOCAL_LENGTHS_MM} mm")
    return focal


def pixel_intrinsics(focal_mm: float, width: int, height: int) -> np.ndarray:
    """``[3, 3]`` float32 pixel intrinsics of the 23.76 mm square sensor: fx = fy = f_mm / 23.76 * W, centred
    (the horizontal FoV ``2 atan(23.76 / (2 f_mm))``)."""
    fov_x = math.degrees(2.0 * math.atan(SENSOR_MM / (2.0 * focal_mm)))
    return intrinsics_from_fov(width, height, fov_x).numpy()


def parse_transform(path: Path, where: str, text: object) -> np.ndarray:
    """One stored Unreal transform string as the ``[4, 4]`` float64 matrix it prints (rows as written, cm).

    Raises InputError naming ``path`` and ``where`` (``"frame<i>/cam<XX>"``) unless ``text`` is four bracketed
    rows of four numbers whose last column is ``0 0 0 1``.
    """
    if not isinstance(text, str) or _TRANSFORM.fullmatch(text) is None:
        raise InputError(path, f"{where}: expected a string {_TRANSFORM_FORM}, got {text!r}")
    rows = [row.split() for row in _ROW.findall(text)]
    if any(len(row) != 4 for row in rows):
        raise InputError(path, f"{where}: expected four rows of four numbers {_TRANSFORM_FORM}, got {text!r}")
    try:
        matrix = np.array(rows, dtype=np.float64)
    except ValueError as error:
        raise InputError(path, f"{where}: not a number in {text!r} ({error})") from error
    if not np.array_equal(matrix[:, 3], [0.0, 0.0, 0.0, 1.0]):
        raise InputError(path, f"{where}: expected the last column 0 0 0 1 of {_TRANSFORM_FORM}, got {text!r}")
    return matrix


def read_extrinsics(path: Path, num_frames: int) -> np.ndarray:
    """The stored transforms of ``camera_extrinsics.json`` as ``[T, 10, 4, 4]`` float64 (row-vector, cm).

    The file must hold exactly the keys ``frame0 .. frame<T-1>``, each with exactly the cameras ``cam01 .. cam10``.
    Raises InputError naming the file.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise InputError(path, "camera file is missing") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(path, f"cannot read the camera JSON ({error})") from error
    expected = [f"frame{i}" for i in range(num_frames)]
    if not isinstance(data, dict) or set(data) != set(expected):
        got = sorted(data)[:5] if isinstance(data, dict) else type(data).__name__
        raise InputError(
            path,
            f"expected an object with exactly the keys frame0 .. frame{num_frames - 1} (one per video frame), "
            f"got {len(data) if isinstance(data, dict) else 0} keys, e.g. {got}",
        )
    transforms = np.zeros((num_frames, len(CAMERAS), 4, 4))
    for t, key in enumerate(expected):
        cameras = data[key]
        if not isinstance(cameras, dict) or set(cameras) != set(CAMERAS):
            got = sorted(cameras) if isinstance(cameras, dict) else cameras
            raise InputError(path, f"{key}: expected exactly the cameras {CAMERAS[0]} .. {CAMERAS[-1]}, got {got!r}")
        for c, camera in enumerate(CAMERAS):
            transforms[t, c] = parse_transform(path, f"{key}/{camera}", cameras[camera])
    return transforms


def unreal_to_opencv(path: Path, transforms: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world poses ``[..., 4, 4]`` float32 in metres from stored Unreal transforms ``[..., 4, 4]``.

    See the module doc for the axes; the result is checked to be finite rigid poses with det(R) = +1, else
    InputError naming ``path``.
    """
    c2w_unreal = np.swapaxes(transforms, -1, -2)
    c2w = np.zeros_like(c2w_unreal)
    c2w[..., :3, :3] = _WORLD_FLIP @ c2w_unreal[..., :3, :3] @ _UNREAL_FROM_OPENCV_CAMERA
    c2w[..., :3, 3] = c2w_unreal[..., :3, 3] @ _WORLD_FLIP * CM_TO_M
    c2w[..., 3, 3] = 1.0
    try:
        check_c2w(torch.from_numpy(c2w.reshape(-1, 4, 4)), "camera poses converted to OpenCV")
    except ValueError as error:
        raise InputError(path, str(error)) from error
    return c2w.astype(np.float32)


class MultiCamVideoScene(Scene):
    """One camera's video, or the ten cameras at one time step (see the module doc).

    ``views[k] = (video, t)``: frame ``k`` of the scene is frame ``t`` of ``video``. ``K [T,3,3]`` and
    ``c2w [T,4,4]`` are float32, in pixels and OpenCV metres; ``timestamps [T]`` seconds.
    """

    dataset = "multicamvideo"
    licence = LICENCE
    metric = True
    fps = FPS

    def __init__(
        self, name: str, views: list[tuple[Path, int]], focal_mm: float, c2w: np.ndarray, timestamps: np.ndarray
    ):
        self.name = name
        self._views = views
        missing = next((video for video, _ in views if not video.is_file()), None)
        if missing is not None:
            raise InputError(missing, "video is missing")
        first = self._decode(*views[0])[0]
        self.height, self.width = first.shape[:2]
        if self.height != self.width:
            raise InputError(
                views[0][0], f"frames are {self.width}x{self.height}; the square 23.76 mm sensor needs square frames"
            )
        self.K = np.repeat(pixel_intrinsics(focal_mm, self.width, self.height)[None], len(views), axis=0)
        self.c2w = c2w
        self.timestamps = timestamps

    @staticmethod
    def _decode(video: Path, *frames: int) -> np.ndarray:
        """Frames ``frames`` of ``video`` as uint8 RGB ``[t, H, W, 3]``; InputError naming the video."""
        try:
            return read_video(video, list(frames))
        except ValueError as error:
            raise InputError(video, str(error).removeprefix(f"{video}: ")) from error

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """RGB frames ``[t, H, W, 3]`` uint8 (each video is decoded once per call, from its first frame up to the
        last one needed: :func:`read_video` does not seek)."""
        wanted = [self._views[i] for i in indices]
        per_video: dict[Path, list[int]] = {}
        for video, t in wanted:
            per_video.setdefault(video, []).append(t)
        decoded = {}
        for video, times in per_video.items():
            frames = self._decode(video, *times)
            if frames.shape[1:3] != (self.height, self.width):
                height, width = frames.shape[1:3]
                raise InputError(video, f"frames are {width}x{height}, the scene's are {self.width}x{self.height}")
            decoded.update({(video, t): frame for t, frame in zip(times, frames)})
        return np.stack([decoded[view] for view in wanted])


class MultiCamVideoReader(Reader):
    """MultiCamVideo scenes under ``root/train/`` (see the module doc for names and conventions).

    Args:
        root: the dataset folder (holding ``train/``).
        multiview: also list the multi-view scenes ``"<focal>/<scene>/frame<i>"`` (the ten cameras at time ``i``).
        frames_per_video: frames of every video and camera file (81 in the release); a camera file with another
            count is an InputError.
    """

    name = "multicamvideo"
    licence = LICENCE

    def __init__(self, root: str | Path, multiview: bool = False, frames_per_video: int = FRAMES_PER_VIDEO):
        super().__init__(root)
        if not isinstance(multiview, bool):
            raise TypeError(f"multiview: expected true or false, got {multiview!r}")
        if isinstance(frames_per_video, bool) or not isinstance(frames_per_video, int) or frames_per_video < 1:
            raise ValueError(f"frames_per_video: expected a positive integer, got {frames_per_video!r}")
        self.multiview = multiview
        self.frames_per_video = frames_per_video
        self._c2w_cache: OrderedDict[Path, np.ndarray] = OrderedDict()

    def _scene_c2w(self, folder: Path) -> np.ndarray:
        """OpenCV poses ``[T, 10, 4, 4]`` of a scene folder's ten cameras, read, checked and converted once per
        folder (the last :data:`CACHED_CAMERA_FILES` folders are kept); InputError naming the camera file."""
        if folder in self._c2w_cache:
            self._c2w_cache.move_to_end(folder)
            return self._c2w_cache[folder]
        camera_file = folder / "cameras" / "camera_extrinsics.json"
        c2w = unreal_to_opencv(camera_file, read_extrinsics(camera_file, self.frames_per_video))
        c2w.flags.writeable = False  # shared by the folder's scenes, which take copies
        self._c2w_cache[folder] = c2w
        if len(self._c2w_cache) > CACHED_CAMERA_FILES:
            self._c2w_cache.popitem(last=False)
        return c2w

    def _scene_folders(self) -> list[str]:
        train = self.root / "train"
        if not train.is_dir():
            raise InputError(self.root, "no train/ folder of MultiCamVideo scenes (train/f18_aperture10/scene1/...)")
        return sorted(
            f"{focal.name}/{scene.name}"
            for focal in train.iterdir()
            if focal.is_dir() and not focal.name.startswith(".")
            for scene in focal.iterdir()
            if scene.is_dir() and not scene.name.startswith(".")
        )

    def scene_names(self) -> list[str]:
        """``"<focal>/<scene>/cam<XX>"`` for every scene folder and camera, plus ``"<focal>/<scene>/frame<i>"``
        with ``multiview``; sorted."""
        folders = self._scene_folders()
        names = [f"{folder}/{camera}" for folder in folders for camera in CAMERAS]
        if self.multiview:
            names += [f"{folder}/frame{i}" for folder in folders for i in range(self.frames_per_video)]
        return sorted(names)

    def _parse(self, name: str) -> tuple[Path, str]:
        """The scene folder of ``name`` and its last part (a camera or ``frame<i>``); ValueError if not a scene."""
        parts = name.split("/")
        view = _VIEW_NAME.fullmatch(parts[-1])
        known = parts[-1] in CAMERAS or (self.multiview and view is not None and int(view[1]) < self.frames_per_video)
        folder = self.root / "train" / "/".join(parts[:-1])
        if len(parts) != 3 or not known or not folder.is_dir():
            views = " or frame<i>" if self.multiview else ""
            raise ValueError(
                f"name: no MultiCamVideo scene {name!r} under {self.root} ('<focal>/<scene>/cam<XX>{views}')"
            )
        return folder, parts[-1]

    def split_of(self, name: str) -> str:
        """Always ``"train"``: the release's scenes are all under ``train/``."""
        self._parse(name)
        return "train"

    def open_scene(self, name: str) -> MultiCamVideoScene:
        """Read the scene folder's cameras (all ten, to check the file whole; cached per folder) and one frame for
        the size."""
        folder, last = self._parse(name)
        focal_mm = focal_length_mm(folder.parent)
        c2w = self._scene_c2w(folder)  # [T, 10, 4, 4]
        videos = [folder / "videos" / f"{camera}.mp4" for camera in CAMERAS]
        if last in CAMERAS:
            c = CAMERAS.index(last)
            views = [(videos[c], t) for t in range(self.frames_per_video)]
            return MultiCamVideoScene(name, views, focal_mm, c2w[:, c].copy(), np.arange(self.frames_per_video) / FPS)
        t = int(last.removeprefix("frame"))
        views = [(video, t) for video in videos]
        return MultiCamVideoScene(name, views, focal_mm, c2w[t].copy(), np.full(len(CAMERAS), t / FPS))
