"""Generating 4D scenes and writing them out, the library behind ``python -m d4s.generate`` (a thin wrapper over
this module) and the demo; the evaluation protocol shares the inputs (:func:`collect_jobs`, :func:`input_image`).

:func:`generate_scene` makes one scene from a :class:`Job` (image, prompt, folder) under typed
:class:`GenerationSettings` (the sampling among them: :class:`~d4s.diffusion.SamplingConfig`) with a
:class:`~d4s.pipeline.Diff4SplatPipeline`, and writes the files the ``d4s.generate`` module docstring lists.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from d4s.diffusion.sampler import SamplingConfig
from d4s.export import BULLET_TIME_DEGREES, focus_depth, follow_times, render_sequence, save_render
from d4s.gaussians.io import save_ply_sequence, save_scene
from d4s.geometry.cameras import DEFAULT_FOV_DEGREES, intrinsics_from_fov, resize_intrinsics
from d4s.geometry.crop import crop_box
from d4s.geometry.trajectories import CameraPath, load_camera_path, make_trajectory
from d4s.utils.cli import parse_trajectory
from d4s.utils.fileio import atomic_output, write_json
from d4s.utils.image import IMAGE_SUFFIXES, load_photo
from d4s.utils.timing import StageTimer, peak_memory

DEFAULT_SCENE_SCALE = 2.0  # metres: a room-sized scene (the paper gives no trajectory scale)
DONE_FILE = "timings.json"  # written last: a folder without it is unfinished
SETTINGS_FILE = "generation.json"
#: ``--dtype`` / ``generation.dtype``: the DiT precision by name (``auto``: bfloat16 on CUDA, float32 on the CPU)
DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: dict[DTypeName, torch.dtype | None] = {
    "auto": None,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class Job:
    """One scene to generate: its image, prompt and output folder."""

    image: Path
    prompt: str
    out: Path


def collect_jobs(image: Path, prompt: str, out: Path) -> list[Job]:
    """One job for an image file; one per image for a folder or a .txt list (``path[<TAB>prompt]`` per line,
    relative to the list's folder), each writing to ``out/<image stem>`` (``<stem>_<position>`` where stems repeat)."""
    if image.is_dir():
        entries = [(path, prompt) for path in sorted(image.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
        if not entries:
            raise ValueError(f"{image}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    elif image.suffix.lower() == ".txt":
        if not image.is_file():
            raise FileNotFoundError(f"image list not found: {image}")
        entries = []
        for line in image.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                path, _, own_prompt = line.partition("\t")
                entries.append((image.parent / path.strip(), own_prompt.strip() or prompt))
        if not entries:
            raise ValueError(f"{image}: the list names no images")
    else:
        return [Job(image, prompt, out)]
    stems = [path.stem for path, _ in entries]
    names = [stem if stems.count(stem) == 1 else f"{stem}_{i}" for i, stem in enumerate(stems, start=1)]
    return [Job(path, text, out / name) for (path, text), name in zip(entries, names)]


def input_image(photo: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """The condition image ``[3, H, W]`` in ``[0, 1]``: the photo resized to cover ``size`` and centre-cropped."""
    crop = crop_box(photo.shape[:2], size).resize_image(photo)
    return torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0


@dataclass(frozen=True)
class GenerationSettings:
    """What :func:`generate_scene` makes of one image (the ``python -m d4s.generate`` options of the same names).

    ``trajectory``: a named trajectory (:data:`d4s.utils.cli.NAMED_TRAJECTORIES`) or a camera file (.json,
    RealEstate10K .txt), ``frames`` of it (``4k + 1``; 49 in the paper) at ``size`` ``(H, W)`` pixels; ``sampling``
    (App. C.1). ``scene_scale``: metres to a named trajectory's focus (default :data:`DEFAULT_SCENE_SCALE`), the
    factor on a camera file's translations (default 1). The input image's intrinsics: ``intrinsics`` (fx, fy, cx, cy
    in its own pixels), else ``fov`` (horizontal degrees), else the camera file's, else
    :data:`~d4s.geometry.cameras.DEFAULT_FOV_DEGREES`. Novel views: a bullet-time orbit of ``orbit_degrees`` at
    ``bullet_time`` (default: the middle frame) and ``novel_trajectory`` (default: ``spiral``, or ``forward`` when
    generating along ``spiral``). Output: videos at ``fps`` rendered by ``backend``, per-time .ply files (``ply``),
    the field thinned to every ``gaussian_stride``-th Gaussian per row and column above ``min_opacity``,
    ``compress``-ed ``scene.npz``.
    """

    trajectory: str = "spiral"
    frames: int = 49
    size: tuple[int, int] = (512, 512)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    scene_scale: float | None = None
    fov: float | None = None
    intrinsics: tuple[float, float, float, float] | None = None
    bullet_time: int | None = None
    orbit_degrees: float = BULLET_TIME_DEGREES
    novel_trajectory: str | None = None
    fps: float = 12.0
    backend: str = "auto"
    ply: bool = True
    gaussian_stride: int = 1
    min_opacity: float = 0.0
    compress: bool = False

    @cached_property
    def camera_file(self) -> CameraPath | None:
        """The trajectory's camera file, read once (``None`` for a named trajectory)."""
        path = parse_trajectory(self.trajectory)[1]
        return None if path is None else load_camera_path(path)

    def cameras(self) -> torch.Tensor:
        """The generation cameras ``c2w [frames, 4, 4]``."""
        name, path = parse_trajectory(self.trajectory)
        scale = self.scene_scale or (1.0 if path is not None else DEFAULT_SCENE_SCALE)
        return make_trajectory(name, self.frames, scale, path=path)

    def second_trajectory(self) -> str:
        """The named trajectory of the second novel view."""
        if self.novel_trajectory is not None:
            return self.novel_trajectory
        return "forward" if parse_trajectory(self.trajectory)[0] == "spiral" else "spiral"

    def input_intrinsics(self, source: tuple[int, int]) -> torch.Tensor:
        """Intrinsics ``[3, 3]`` of the model frame cut from a photo of ``source (H, W)`` pixels. A camera file's pixel
        intrinsics belong to its own frame size, which is fitted to the model frame the way the photo is (cover, then
        centre-crop), so no axis is stretched."""
        box = crop_box(source, self.size)
        if self.intrinsics is not None:
            fx, fy, cx, cy = self.intrinsics
            return box.intrinsics(torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]))
        camera_file = self.camera_file if self.fov is None else None
        if camera_file is not None and camera_file.K is not None:
            K = camera_file.K[0].float()
            if camera_file.image_size in (None, (1, 1)):  # normalised (RealEstate10K) or unsized: the photo's own
                return box.intrinsics(resize_intrinsics(K, camera_file.image_size or source, source))
            return crop_box(camera_file.image_size, self.size).intrinsics(K)
        fov = DEFAULT_FOV_DEGREES if self.fov is None else self.fov
        return box.intrinsics(intrinsics_from_fov(source[1], source[0], fov))


def clear_outputs(out: Path, keep_ply: bool) -> None:
    """Mark ``out`` incomplete and remove outputs an earlier run wrote that this one may not replace."""
    (out / DONE_FILE).unlink(missing_ok=True)
    for stale in out.glob("novel_*"):
        if stale.is_file():
            stale.unlink()
    if not keep_ply and (out / "ply").is_dir():
        shutil.rmtree(out / "ply")


def denoising_bar() -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """``(progress, close)``: a tqdm bar of the denoising steps, opened at the first step (a prompt that fails to
    encode leaves no empty bar behind)."""
    bars: list[tqdm] = []

    def progress(step: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="denoising", unit="step", leave=False))
        bars[0].update(1)

    def close() -> None:
        for bar in bars:
            bar.close()

    return progress, close


def generate_scene(
    pipeline, job: Job, settings: GenerationSettings, record: dict[str, Any], photo: np.ndarray | None = None
) -> dict:
    """Generate and write one scene with a :class:`~d4s.pipeline.Diff4SplatPipeline`; returns its timings.

    ``record``: what ``generation.json`` stores as the run's ``settings`` (what a caller compares to resume).
    ``photo``: the job's image already decoded (else it is read here). The scene itself is on disk before any
    rendering starts; ``timings.json`` is written last.
    """
    from d4s.pipeline import thin_field  # diffusers: imported here, so the CLI's --help and checks answer at once

    size, frames = settings.size, settings.frames
    photo = load_photo(job.image) if photo is None else photo
    image, K = input_image(photo, size), settings.input_intrinsics(photo.shape[:2])
    c2w = settings.cameras()
    pipeline.check_inputs(image, c2w, K)
    start = time.perf_counter()
    if pipeline.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pipeline.device)
    progress, close_bar = denoising_bar()
    try:
        result = pipeline.generate(image, c2w, K, job.prompt, settings.sampling, progress)
    finally:
        close_bar()
    scene = thin_field(result.field, result.grid, settings.gaussian_stride, settings.min_opacity)
    timer = StageTimer(pipeline.device)
    with timer("writing"):
        job.out.mkdir(parents=True, exist_ok=True)
        clear_outputs(job.out, keep_ply=settings.ply)
        cpu_scene = scene.to("cpu")
        save_scene(cpu_scene, job.out / "scene.npz", compress=settings.compress)
        with atomic_output(job.out / "input.png") as tmp:
            Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp, format="PNG")
        if settings.ply:
            save_ply_sequence(cpu_scene, job.out / "ply")
    with timer("rendering"):
        main = render_sequence(scene, c2w, K, follow_times(frames, frames), size, settings.backend, desc="rendering")
    with timer("writing"):
        save_render(main, job.out, fps=settings.fps)
    focus = focus_depth(scene.at(0))  # the input view's depth: the scale of the novel trajectories
    bullet = frames // 2 if settings.bullet_time is None else settings.bullet_time
    novel_name = settings.second_trajectory()
    orbit = make_trajectory("orbit", frames, focus, orbit_degrees=settings.orbit_degrees)
    novel_views = {
        "bullet_time": (orbit, [bullet] * frames),
        novel_name: (make_trajectory(novel_name, frames, focus), follow_times(frames, frames)),
    }
    for name, (novel_c2w, times) in novel_views.items():
        with timer("rendering"):
            render = render_sequence(scene, novel_c2w, K, times, size, settings.backend, desc=name)
        with timer("writing"):
            names = (f"novel_{name}.mp4", f"novel_{name}_depth.mp4", None, f"novel_{name}_cameras.json")
            save_render(render, job.out, *names, fps=settings.fps)
    details = {"focus_depth": focus, "bullet_time": bullet, "novel_trajectory": novel_name}
    write_json(job.out / SETTINGS_FILE, {"settings": record, **details})
    timings = {
        **result.timings,
        **timer.seconds,
        "total": time.perf_counter() - start,
        "gaussians": scene.num_gaussians,
        "device": str(pipeline.device),
        "dtype": str(pipeline.dtype).removeprefix("torch."),
        **peak_memory(pipeline.device),
    }
    write_json(job.out / DONE_FILE, timings)
    return timings
