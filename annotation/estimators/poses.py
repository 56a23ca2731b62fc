"""Cameras and depth from MegaSaM: ingest its final output, or run the official pipeline from a local checkout.

MegaSaM works on frames resized to about 384x512 pixels of area (``h1 x w1``) and cropped to multiples of 8
(top-left crop); its intrinsics belong to the uncropped ``h1 x w1`` image. Its output is **not metric**: depth and
translations share one unknown per-video scale (recover it by aligning to a metric reference).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from annotation.clip import Clip
from annotation.errors import InputError
from annotation.estimators.base import DepthEstimate, PoseEstimate, PoseEstimator
from annotation.estimators.depth import megasam_scene_name, read_npz, resample_maps
from d4s.geometry.cameras import check_c2w, check_intrinsics, resize_intrinsics
from d4s.utils.fileio import atomic_output

MEGASAM_REPO = "https://github.com/mega-sam/mega-sam"
# The official demo scripts (mono_depth_scripts/run_mono-depth_demo.sh, tools/evaluate_demo.sh,
# cvd_opt/cvd_opt_demo.sh) for one scene, run from the checkout's root. Placeholders: {python} (interpreter of
# the MegaSaM environment), {checkout} (its absolute path), {frames} (folder of the clip's frames as PNG),
# {scene} (the clip's MegaSaM scene name: its key, unless that holds "_opt", see megasam_scene_name). Each is
# shell-quoted before substitution; commands run through /bin/sh, with the Hugging Face hub offline.
MEGASAM_STEPS = (
    (
        "{python} Depth-Anything/run_videos.py --encoder vitl"
        " --load-from Depth-Anything/checkpoints/depth_anything_vitl14.pth --localhub"
        " --img-path {frames} --outdir Depth-Anything/video_visualization/{scene}"
    ),
    (
        'PYTHONPATH="$PYTHONPATH":{checkout}/UniDepth {python} UniDepth/scripts/demo_mega-sam.py'
        " --scene-name {scene} --img-path {frames} --outdir UniDepth/outputs"
    ),
    (
        "{python} camera_tracking_scripts/test_demo.py --datapath={frames} --weights=checkpoints/megasam_final.pth"
        " --scene_name {scene} --mono_depth_path {checkout}/Depth-Anything/video_visualization"
        " --metric_depth_path {checkout}/UniDepth/outputs --disable_vis"
    ),
    (
        "{python} cvd_opt/preprocess_flow.py --datapath={frames} --model=cvd_opt/raft-things.pth"
        " --scene_name {scene} --mixed_precision"
    ),
    "{python} cvd_opt/cvd_opt.py --scene_name {scene} --w_grad 2.0 --w_normal 5.0",
)
# Files the default steps need, relative to the checkout, and how to get each (MegaSaM README).
MEGASAM_WEIGHTS = {
    "checkpoints/megasam_final.pth": f"it ships in the repository: git clone --recursive {MEGASAM_REPO}",
    "Depth-Anything/checkpoints/depth_anything_vitl14.pth": (
        "download it from https://huggingface.co/spaces/LiheYoung/Depth-Anything/blob/main/checkpoints/"
        "depth_anything_vitl14.pth"
    ),
    "cvd_opt/raft-things.pth": f"download raft-things.pth from the RAFT checkpoint folder linked in {MEGASAM_REPO}",
    # run_videos.py --localhub builds DINOv2 from this folder (relative to the checkout, where the steps run) instead
    # of fetching its code through torch.hub; its weights come from depth_anything_vitl14.pth
    "torchhub/facebookresearch_dinov2_main/hubconf.py": (
        "clone DINOv2's code there: git clone https://github.com/facebookresearch/dinov2 "
        "torchhub/facebookresearch_dinov2_main (in the checkout)"
    ),
}
# Hugging Face models the default steps load by name, at the revision they pin (UniDepth/scripts/demo_mega-sam.py:
# UniDepthV2.from_pretrained(..., revision=...)); the steps run with HF_HUB_OFFLINE=1, so each must be in the Hugging
# Face cache of this machine beforehand, at that revision
MEGASAM_HUB_MODELS = {"lpiccinelli/unidepth-v2-vitl14": "1d0d3c52f60b5164629d279bb9a7546458e6dcc4"}
_PLACEHOLDERS = ("python", "checkout", "frames", "scene")
_ERROR_TAIL_CHARS = 4000


def megasam_resolution(size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """MegaSaM's working sizes for frames of ``size = (H, W)``: resized ``(h1, w1)``, cropped to multiples of 8.

    Same arithmetic as the official ``test_demo.py`` and ``preprocess_flow.py``:
    ``h1 = int(H * sqrt(384 * 512 / (H * W)))``, cropped size ``(h1 - h1 % 8, w1 - w1 % 8)``.
    """
    height, width = size
    scale = np.sqrt((384 * 512) / (height * width))
    h1, w1 = int(height * scale), int(width * scale)
    return (h1, w1), (h1 - h1 % 8, w1 - w1 % 8)


def load_megasam_output(path: Path, clip: Clip) -> PoseEstimate:
    """Read ``<scene>_sgd_cvd_hr.npz`` (``depths [T,h,w]``, ``intrinsic [3,3]`` px, ``cam_c2w [T,4,4]`` OpenCV).

    The output must come from the clip's own frames at the clip's resolution, so its maps have MegaSaM's cropped
    working size (:func:`megasam_resolution`). Returns cameras with ``K`` at the clip's resolution and MegaSaM's
    depth resampled to it with nearest sampling (the cropped-off right and bottom strips are 0 = invalid).
    Raises :class:`InputError` naming ``path`` when the file is missing or corrupt, its length is not the clip's,
    its size does not match, or its poses are not finite rigid transforms.
    """
    arrays = read_npz(path, ("depths", "intrinsic", "cam_c2w"))
    depths, K, c2w = arrays["depths"], arrays["intrinsic"], arrays["cam_c2w"]
    num = clip.num_frames
    if depths.ndim != 3 or depths.shape[0] != num or c2w.shape != (num, 4, 4) or K.shape != (3, 3):
        raise InputError(
            path,
            f"expected depths [T={num}, h, w], intrinsic [3, 3], cam_c2w [T={num}, 4, 4] for clip {clip.key}; got "
            f"{list(depths.shape)}, {list(K.shape)}, {list(c2w.shape)}",
        )
    resized, cropped = megasam_resolution(clip.size)
    if depths.shape[1:] != cropped:
        raise InputError(
            path,
            f"maps are {depths.shape[1]}x{depths.shape[2]}, but MegaSaM works at {cropped[0]}x{cropped[1]} on "
            f"{clip.size[0]}x{clip.size[1]} frames: it ran on frames of another size than the clip's",
        )
    K_t = torch.from_numpy(K.astype(np.float64))
    try:
        check_c2w(torch.from_numpy(c2w.astype(np.float64)), "cam_c2w")
        check_intrinsics(K_t, "intrinsic")
    except ValueError as error:
        raise InputError(path, str(error)) from error
    K_clip = resize_intrinsics(K_t, resized, clip.size).numpy().astype(np.float32)
    depth = DepthEstimate(
        values=resample_maps(depths, clip.size, "nearest", covers=resized),
        space="depth",
        metric=False,
        source="megasam",
    )
    return PoseEstimate(
        c2w=c2w.astype(np.float32),
        K=np.repeat(K_clip[None], num, axis=0),
        metric=False,
        source="megasam",
        depth=depth,
    )


class MegaSaM(PoseEstimator):
    """MegaSaM cameras and depth for a clip, ingested from ``<outputs_dir>/outputs_cvd/<clip.key>_sgd_cvd_hr.npz``.

    With ``checkout`` (a clone of the official repository with its weights and compiled extensions) a missing
    output is produced by running ``steps`` (command templates, default :data:`MEGASAM_STEPS`, the official
    demo pipeline) with the clip's frames written as PNG into a temporary folder named after the clip's scene name
    (:func:`megasam_scene_name`; under ``work_dir`` when given). The steps write their results inside the checkout,
    under that name (UniDepth's metric depth stays in ``<checkout>/UniDepth/outputs/<scene>/``, see
    :class:`MetricDepthReference`); the final file is copied to ``outputs_dir`` under the clip's key, which defaults
    to the checkout itself. ``python`` is the interpreter of the MegaSaM environment (one executable).
    ``required_files`` (relative to the checkout, with how to get each) and ``hub_models`` (Hugging Face models at
    the revisions the steps pin) are checked when the estimator is built, before any clip.
    """

    name = "megasam"

    def __init__(
        self,
        outputs_dir: str | Path | None = None,
        checkout: str | Path | None = None,
        python: str = "python",
        steps: Sequence[str] = MEGASAM_STEPS,
        required_files: Mapping[str, str] = MEGASAM_WEIGHTS,
        hub_models: Mapping[str, str] = MEGASAM_HUB_MODELS,
        work_dir: str | Path | None = None,
    ):
        if outputs_dir is None and checkout is None:
            raise ValueError("megasam: give outputs_dir (saved outputs), checkout (run the pipeline), or both")
        for template in steps:
            try:
                template.format(**dict.fromkeys(_PLACEHOLDERS, ""))
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(
                    f"megasam: step template {template!r} is not valid ({error!r}); placeholders are "
                    + ", ".join("{" + name + "}" for name in _PLACEHOLDERS)
                ) from error
        self.checkout = None if checkout is None else Path(checkout).resolve()
        self.outputs_dir = Path(outputs_dir) if outputs_dir is not None else self.checkout
        self.python = python
        self.steps = tuple(steps)
        self.required_files = dict(required_files)
        self.hub_models = dict(hub_models)
        self.work_dir = None if work_dir is None else Path(work_dir)
        if self.checkout is not None:  # a pipeline that cannot run offline is refused before the first clip
            self._check_checkout()

    def output_path(self, clip: Clip) -> Path:
        """Where the clip's final MegaSaM output is read from (and cached to)."""
        return self.outputs_dir / "outputs_cvd" / f"{clip.key}_sgd_cvd_hr.npz"

    def estimate(self, clip: Clip) -> PoseEstimate:
        """Cameras (``metric=False``) with MegaSaM's depth in the same scale; see :func:`load_megasam_output`."""
        path = self.output_path(clip)
        if not path.is_file():
            if self.checkout is None:
                raise InputError(
                    path,
                    f"no saved MegaSaM output; run the official pipeline ({MEGASAM_REPO}) on the clip's frames with "
                    f"scene name {megasam_scene_name(clip.key)} and save its result under this name, or set checkout "
                    "to run it",
                )
            self._run(clip, path)
        return load_megasam_output(path, clip)

    def _run(self, clip: Clip, destination: Path) -> None:
        """Run every step on the clip's frames (as the scene :func:`megasam_scene_name`), offline, then copy the
        final output to ``destination``."""
        scene = megasam_scene_name(clip.key)
        with tempfile.TemporaryDirectory(prefix="megasam-", dir=self.work_dir) as tmp:
            frames = Path(tmp).resolve() / scene
            write_frames(clip.frames, frames)
            values = {"python": self.python, "checkout": str(self.checkout), "frames": str(frames), "scene": scene}
            quoted = {name: shlex.quote(value) for name, value in values.items()}
            for template in self.steps:
                _run_step(template.format(**quoted), self.checkout)
        produced = self.checkout / "outputs_cvd" / f"{scene}_sgd_cvd_hr.npz"
        if not produced.is_file():
            raise InputError(produced, "the MegaSaM steps finished without writing this file; check the step templates")
        if produced != destination.resolve():
            with atomic_output(destination) as tmp_file:
                shutil.copyfile(produced, tmp_file)

    def _check_checkout(self) -> None:
        if not (self.checkout / "camera_tracking_scripts" / "test_demo.py").is_file():
            raise InputError(self.checkout, f"not a MegaSaM checkout; git clone --recursive {MEGASAM_REPO}")
        for relative, how in self.required_files.items():
            if not (self.checkout / relative).is_file():
                raise InputError(self.checkout / relative, f"missing MegaSaM weights: {how}")
        cache = hub_cache()
        for model, revision in self.hub_models.items():
            if not (cache / f"models--{model.replace('/', '--')}" / "snapshots" / revision / "config.json").is_file():
                raise InputError(
                    cache,
                    f"{model} at revision {revision} is not in this Hugging Face cache, and the MegaSaM steps run "
                    f"offline; on a machine online, with the same HF_HOME: huggingface-cli download {model} "
                    f"--revision {revision}",
                )


def write_frames(frames: np.ndarray, directory: Path) -> None:
    """Write RGB ``frames [T, H, W, 3]`` uint8 as ``directory/00000.png, 00001.png, ...`` (lossless, sorted by name)."""
    directory.mkdir(parents=True)
    for index, frame in enumerate(frames):
        path = directory / f"{index:05d}.png"
        if not cv2.imwrite(str(path), np.ascontiguousarray(frame[..., ::-1])):
            raise OSError(f"{path}: could not write the frame")


def hub_cache() -> Path:
    """The Hugging Face hub cache the steps will read (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``~/.cache/huggingface/hub``), read from the environment when called."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _run_step(command: str, cwd: Path) -> None:
    """Run one shell command in ``cwd`` with the Hugging Face hub offline; ``RuntimeError`` with the command and the
    end of its output if it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        command, shell=True, check=False, cwd=cwd, env=env, capture_output=True, text=True, errors="replace"
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-_ERROR_TAIL_CHARS:]
        raise RuntimeError(f"megasam: step failed with exit code {result.returncode} in {cwd}:\n{command}\n{output}")
