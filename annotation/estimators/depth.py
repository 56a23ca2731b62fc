"""Depth from Video Depth Anything (saved outputs or the official model) and metric depth references (UniDepth).

Helpers shared by the estimator adapters live here too: :func:`read_npz` (strict ``.npz`` reading) and
:func:`resample_maps` (per-frame maps back to the clip's resolution, invalid pixels kept invalid).
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from annotation.clip import Clip
from annotation.errors import InputError
from annotation.estimators.base import DepthEstimate, DepthEstimator
from d4s.utils.fileio import atomic_output

VDA_REPO = "https://github.com/DepthAnything/Video-Depth-Anything"
VDA_ENCODERS = ("vits", "vitb", "vitl")
# Per-encoder constructor arguments, as in the official run.py.
VDA_MODEL_CONFIGS = {
    "vits": {"encoder": "vits", "features": 64, "out_channels": [48, 96, 192, 384]},
    "vitb": {"encoder": "vitb", "features": 128, "out_channels": [96, 192, 384, 768]},
    "vitl": {"encoder": "vitl", "features": 256, "out_channels": [256, 512, 1024, 1024]},
}


def read_npz(path: Path, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (and those of ``optional`` that exist) of the ``.npz`` file ``path``.

    Raises :class:`InputError` naming ``path`` if it is missing, unreadable or lacks one of ``keys``.
    """
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with np.load(path) as data:
            missing = [key for key in keys if key not in data.files]
            if missing:
                raise InputError(path, f"missing array(s) {missing}; found {sorted(data.files)}")
            return {key: data[key] for key in keys + optional if key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise InputError(path, f"unreadable .npz ({error})") from error


def resample_maps(
    values: np.ndarray,
    size: tuple[int, int],
    mode: Literal["bilinear", "nearest"],
    covers: tuple[int, int] | None = None,
) -> np.ndarray:
    """Resample per-frame maps ``values [T, h, w]`` to the clip's ``size = (H, W)``: ``[T, H, W]`` float32.

    ``covers = (h1, w1)`` says that the maps are the top-left ``h x w`` crop of the clip frame resized to
    ``h1 x w1`` (MegaSaM crops its resized frames to a multiple of 8); by default they cover the whole frame
    (``h1 x w1 = h x w``). Pixel centres map as ``x_map + 0.5 = (u + 0.5) * w1 / W``. Non-finite or non-positive
    values are invalid; an output pixel is 0 (invalid) when it falls outside the maps or any map pixel it
    interpolates from is invalid.
    """
    values = np.asarray(values, dtype=np.float32)
    num, h, w = values.shape
    height, width = size
    h1, w1 = covers if covers is not None else (h, w)
    valid = np.isfinite(values) & (values > 0)
    if (h, w) == (h1, w1) == (height, width):
        return np.where(valid, values, 0.0).astype(np.float32)
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) * (h1 / height)  # map-pixel units, edges at integers
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) * (w1 / width)
    covered = (ys <= h)[:, None] & (xs <= w)[None, :]
    grid_y, grid_x = torch.meshgrid(2.0 * ys / h - 1.0, 2.0 * xs / w - 1.0, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1).float().expand(num, height, width, 2)
    stacked = torch.from_numpy(np.stack([np.where(valid, values, 0.0), valid], axis=1).astype(np.float32))
    sampled = torch.nn.functional.grid_sample(stacked, grid, mode=mode, padding_mode="border", align_corners=False)
    ok = (sampled[:, 1] >= 1.0 - 1e-4) & covered
    return torch.where(ok, sampled[:, 0], 0.0).numpy()


def _check_length(values: np.ndarray, clip: Clip, path: Path) -> None:
    if values.ndim != 3 or values.shape[0] != clip.num_frames:
        raise InputError(
            path, f"expected [T={clip.num_frames}, H, W] maps for clip {clip.key}, got {list(values.shape)}"
        )


class VideoDepthAnything(DepthEstimator):
    """Video Depth Anything: ingest saved outputs, or run the official model from a local checkout.

    Saved outputs are ``<outputs_dir>/<clip.key>_depths.npz`` (key ``depths`` ``[T, H, W]``, as written by the
    official ``run.py --save_npz``). With ``checkout`` the official model runs when no saved output exists; the
    result is then saved under ``outputs_dir`` (when given, with a ``metric`` flag that later reads check) so
    later runs ingest it: relative and metric models need different ``outputs_dir``. ``checkpoint`` defaults to
    ``<checkout>/checkpoints/{metric_}video_depth_anything_<encoder>.pth``, where the official ``run.py`` looks.

    Relative models give affine-invariant disparity (``space="disparity"``, ``metric=False``); metric models give
    metres (``space="depth"``, ``metric=True``). Maps are resized bilinearly to the clip's resolution.
    ``device`` is ``"cuda"`` or ``"cpu"`` (default: CUDA when available): the official code also passes it to
    ``torch.autocast(device_type=...)``, so pick a GPU with ``CUDA_VISIBLE_DEVICES``, not ``"cuda:1"``.
    """

    name = "vda"

    def __init__(
        self,
        outputs_dir: str | Path | None = None,
        checkout: str | Path | None = None,
        checkpoint: str | Path | None = None,
        encoder: Literal["vits", "vitb", "vitl"] = "vitl",
        metric: bool = False,
        input_size: int = 518,
        device: str | None = None,
        fp32: bool = False,
    ):
        if outputs_dir is None and checkout is None:
            raise ValueError("vda: give outputs_dir (saved outputs), checkout (run the model), or both")
        if encoder not in VDA_ENCODERS:
            raise ValueError(f"vda: encoder must be one of {VDA_ENCODERS}, got {encoder!r}")
        self.outputs_dir = None if outputs_dir is None else Path(outputs_dir)
        self.checkout = None if checkout is None else Path(checkout)
        prefix = "metric_video_depth_anything" if metric else "video_depth_anything"
        if checkpoint is None and self.checkout is not None:
            checkpoint = self.checkout / "checkpoints" / f"{prefix}_{encoder}.pth"
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.checkpoint_name = f"{prefix}_{encoder}.pth"
        self.encoder = encoder
        self.metric = metric
        self.input_size = input_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.fp32 = fp32
        self._model: torch.nn.Module | None = None
        if self.checkout is not None:  # a checkout that cannot run is refused before any clip
            _import_official_model(self.checkout)
            self._check_checkpoint()

    def saved_output(self, clip: Clip) -> Path | None:
        """Where this clip's saved output lives (``None`` without ``outputs_dir``)."""
        return None if self.outputs_dir is None else self.outputs_dir / f"{clip.key}_depths.npz"

    def estimate(self, clip: Clip) -> DepthEstimate:
        """Depth or disparity ``[T, H, W]`` at the clip's resolution (0 = invalid)."""
        path = self.saved_output(clip)
        if path is not None and path.is_file():
            values = self._read_saved(path, clip)
        elif self.checkout is not None:
            values = self._infer(clip)
            _check_length(values, clip, self.checkpoint)
            if path is not None:
                with atomic_output(path) as tmp:
                    np.savez_compressed(tmp, depths=values, metric=np.bool_(self.metric))
        else:
            raise InputError(
                path,
                f"no saved Video Depth Anything output; run the official run.py --save_npz ({VDA_REPO}) on the "
                "clip's frames and save it under this name, or set checkout to run the model",
            )
        return DepthEstimate(
            values=resample_maps(values, clip.size, "bilinear"),
            space="depth" if self.metric else "disparity",
            metric=self.metric,
            source=self.name,
        )

    def _read_saved(self, path: Path, clip: Clip) -> np.ndarray:
        """Saved ``depths [T, h, w]``; outputs this class saved also record ``metric``, which must match."""
        arrays = read_npz(path, ("depths",), optional=("metric",))
        if "metric" in arrays and bool(arrays["metric"]) != self.metric:
            kinds = {True: "metric depth", False: "relative disparity"}
            raise InputError(
                path,
                f"holds {kinds[bool(arrays['metric'])]} but this estimator is configured for {kinds[self.metric]}; "
                "give relative and metric models different outputs_dir",
            )
        _check_length(arrays["depths"], clip, path)
        return arrays["depths"]

    def _infer(self, clip: Clip) -> np.ndarray:
        """Run the official ``infer_video_depth`` on the clip's RGB frames: ``[T, H, W]`` float32."""
        model = self._load_model()
        depths, _ = model.infer_video_depth(
            clip.frames, clip.fps, input_size=self.input_size, device=self.device, fp32=self.fp32
        )
        return np.asarray(depths, dtype=np.float32)

    def _check_checkpoint(self) -> None:
        if not self.checkpoint.is_file():
            raise InputError(
                self.checkpoint,
                f"checkpoint not found; download {self.checkpoint_name} (relative: video_depth_anything_"
                "{vits,vitb,vitl}.pth, metric: metric_video_depth_anything_{vits,vitb,vitl}.pth) from the links "
                f"in {VDA_REPO} and pass its path as checkpoint",
            )

    def _load_model(self) -> torch.nn.Module:
        if self._model is None:
            model_class = _import_official_model(self.checkout)
            self._check_checkpoint()
            model = model_class(**VDA_MODEL_CONFIGS[self.encoder], metric=self.metric)
            model.load_state_dict(torch.load(self.checkpoint, map_location="cpu", weights_only=True), strict=True)
            self._model = model.to(self.device).eval()
        return self._model


def _import_official_model(checkout: Path) -> type:
    """``video_depth_anything.video_depth.VideoDepthAnything`` from ``checkout`` (put on ``sys.path``)."""
    module_file = checkout / "video_depth_anything" / "video_depth.py"
    if not module_file.is_file():
        raise InputError(
            module_file, f"not a Video Depth Anything checkout; git clone {VDA_REPO} and pass its root as checkout"
        )
    root = checkout.resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("video_depth_anything.video_depth")
    except ModuleNotFoundError as error:
        raise InputError(
            module_file,
            f"the checkout's code imports {error.name!r}, which this environment lacks; pip install {error.name} "
            "(the checkout's requirements.txt lists what it needs)",
        ) from error
    origin = Path(module.__file__).resolve()
    if root not in origin.parents:
        raise RuntimeError(
            f"vda: video_depth_anything is already imported from {origin}, not from {root}; "
            "use one checkout per process"
        )
    return module.VideoDepthAnything


def megasam_scene_name(key: str) -> str:
    """The scene name MegaSaM runs the clip ``key`` under: ``key`` itself, unless it contains ``_opt``, which MegaSaM's
    ``cvd_opt.py`` deletes from the name when it looks up the disparities (``scene_name.replace("_opt", "")``, mega-sam
    commit c83e41b); then ``key`` with each ``_opt`` written ``-opt`` and 8 hex digits of its SHA-1 (still unique)."""
    if "_opt" not in key:
        return key
    return f"{key.replace('_opt', '-opt')}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


class MetricDepthReference(DepthEstimator):
    """Per-frame metric depth files, one ``.npz`` per frame: a metric reference for scale alignment.

    Files are ``sorted(<outputs_dir>/<pattern>)`` with ``{key}`` = ``clip.key`` and ``{scene}`` = the name MegaSaM
    ran the clip under (:func:`megasam_scene_name`), each holding ``array [h, w]`` in metres
    at any resolution covering the whole frame. The defaults read UniDepth as MegaSaM's mono-depth step runs it
    (``UniDepth/outputs/<scene>/*.npz``, key ``depth``, long side 640 px): point ``outputs_dir`` at
    ``<mega-sam checkout>/UniDepth/outputs``. Maps are resized to the clip's resolution with nearest sampling, so
    no depth is invented across object boundaries.
    """

    name = "unidepth"

    def __init__(
        self, outputs_dir: str | Path, pattern: str = "{scene}/*.npz", array: str = "depth", source: str = "unidepth"
    ):
        self.outputs_dir = Path(outputs_dir)
        self.pattern = pattern
        self.array = array
        self.source = source

    def estimate(self, clip: Clip) -> DepthEstimate:
        """Metric z-depth ``[T, H, W]`` at the clip's resolution (0 = invalid)."""
        pattern = self.pattern.format(key=clip.key, scene=megasam_scene_name(clip.key))
        files = sorted(self.outputs_dir.glob(pattern))
        where = self.outputs_dir / pattern
        if not files:
            raise InputError(where, "no metric depth files for this clip (expected one .npz per frame)")
        if len(files) != clip.num_frames:
            raise InputError(where, f"found {len(files)} files, the clip has {clip.num_frames} frames")
        maps = [read_npz(path, (self.array,))[self.array] for path in files]
        shapes = {m.shape for m in maps}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise InputError(where, f"expected one [h, w] map per file, all the same size; got shapes {sorted(shapes)}")
        return DepthEstimate(
            values=resample_maps(np.stack(maps), clip.size, "nearest"), space="depth", metric=True, source=self.source
        )
