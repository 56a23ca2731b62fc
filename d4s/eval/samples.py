"""Samples (scene x trajectory): planning, seeds, cameras, and the settings and files that decide whether a sample
is already done (caching)."""

from __future__ import annotations

import hashlib
import logging
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from d4s.eval.config import (
    LATENTS,
    ORBIT,
    PAPER_TRAJECTORIES,
    REAL_CAMERA_SAMPLES,
    SCENE,
    SCORING_SETTINGS,
    SEED_MULTIPLIER,
    WEIGHT_FREE_VERSION,
    EvalConfig,
)
from d4s.eval.scenes import Scene
from d4s.generation import DEFAULT_SCENE_SCALE
from d4s.utils.fileio import as_json, reusable_record

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ samples
@dataclass(frozen=True)
class Sample:
    """One generation: ``scene`` along ``trajectory`` (a paper trajectory, ``orbit`` or ``scene``) with ``seed``."""

    scene: str
    trajectory: str
    seed: int

    def folder(self, out: Path) -> Path:
        return out / "samples" / self.scene / self.trajectory


def sample_seed(base_seed: int, scene: str, trajectory: str) -> int:
    """The seed of sample ``(scene, trajectory)``: ``(base * 1000003 + crc32("scene/trajectory")) mod 2^31``."""
    return (base_seed * SEED_MULTIPLIER + zlib.crc32(f"{scene}/{trajectory}".encode())) % 2**31


def plan_samples(scenes: list[Scene], config: EvalConfig) -> list[Sample]:
    """Every sample of the run, scene by scene: the trajectories, the orbit, and the real cameras where there are."""
    samples = []
    for scene in scenes:
        names = list(config.metrics.trajectories)
        if config.metrics.orbit:
            names.append(ORBIT)
        if config.metrics.reconstruction and scene.video is not None:
            names.append(SCENE)
        if config.metrics.latent_reconstruction and scene.video is not None:
            names.append(LATENTS)
        samples.extend(
            Sample(scene.name, name, sample_seed(config.generation.seed, scene.name, name)) for name in names
        )
    return samples


def sample_cameras(sample: Sample, scene: Scene, config: EvalConfig) -> tuple[Tensor, Tensor, float]:
    """``(c2w [T, 4, 4], K [T, 3, 3], scene_scale)`` of a sample's generation."""
    from d4s.geometry.trajectories import make_trajectory

    T = config.generation.frames
    scale = config.generation.scene_scale or scene.focus() or DEFAULT_SCENE_SCALE
    if sample.trajectory in REAL_CAMERA_SAMPLES:
        return scene.c2w.float(), scene.K_video.float(), scale
    degrees = config.metrics.orbit_degrees if sample.trajectory == ORBIT else 360.0
    c2w = make_trajectory(sample.trajectory, T, scale, orbit_degrees=degrees)
    return c2w, scene.K.float().expand(T, 3, 3).clone(), scale


def file_identity(path: Path, prefix: str) -> dict[str, Any]:
    """``{prefix: resolved path, prefix_bytes: size, prefix_mtime_ns: mtime}``: a file changed in place reads as
    another file."""
    stat = path.stat()
    return {prefix: str(path.resolve()), f"{prefix}_bytes": stat.st_size, f"{prefix}_mtime_ns": stat.st_mtime_ns}


def digest(*parts: Tensor | str | None) -> str:
    """A SHA-1 of tensors' bytes and strings (``None`` parts count as absent)."""
    digest = hashlib.sha1()
    for part in parts:
        if isinstance(part, Tensor):
            digest.update(part.detach().cpu().contiguous().numpy().tobytes())
        elif part is not None:
            digest.update(part.encode())
        digest.update(b"|")
    return digest.hexdigest()


def scene_fingerprint(scene: Scene, with_video: bool) -> str:
    """What a scene feeds a sample: its first image, caption and intrinsics, and for ``scene`` and ``latents`` samples
    its real video, cameras, depth and tracks (a changed source, field of view or prompt makes the sample stale)."""
    real = (scene.video, scene.c2w, scene.K_video, scene.depth, scene.track_xyz, scene.track_visible)
    if not with_video:
        real = ()
    return digest(scene.image, scene.caption, scene.K, *real)


def sample_settings(sample: Sample, scale: float, config: EvalConfig, scene: Scene | None = None) -> dict[str, Any]:
    """What decides a sample's render and weight-free metrics: checkpoint (path, size, mtime), generation settings,
    trajectory, seed, the scene's content (:func:`scene_fingerprint`, when ``scene`` is given) and the metric
    settings of ``SCORING_SETTINGS`` its kind uses (changing one generates again)."""
    kind = "paper" if sample.trajectory in PAPER_TRAJECTORIES else sample.trajectory
    settings = {
        **file_identity(Path(config.ckpt), "ckpt"),
        "scene_content": None if scene is None else scene_fingerprint(scene, sample.trajectory in REAL_CAMERA_SAMPLES),
        "model_config": config.model_config,
        "no_ema": config.no_ema,
        "weight_free_version": WEIGHT_FREE_VERSION,
        "generation": asdict(config.generation),
        "scene": sample.scene,
        "trajectory": sample.trajectory,
        "orbit_degrees": config.metrics.orbit_degrees if sample.trajectory == ORBIT else None,
        "seed": sample.seed,
        "scene_scale": scale,
        "metrics": {key: getattr(config.metrics, key) for key in SCORING_SETTINGS.get(kind, ())},
    }
    settings["generation"].pop("video_crf")
    return as_json(settings)


def completed(sample: Sample, settings: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """The cached ``metrics.json`` of a finished sample with the same settings, else ``None``."""
    folder = sample.folder(out)
    return reusable_record(folder / "metrics.json", settings, folder / "rgb.mp4")
