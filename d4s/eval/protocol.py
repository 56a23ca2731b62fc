"""The evaluation protocol (paper Sec. 4.2, Appendix D, Appendix E): generate a scene list along fixed camera
trajectories with one checkpoint, render every generation and score the renders.

Samples. Per scene (a captioned first frame, with its real video where the source has one):

- the paper's five trajectories ``spiral, forward, backward, upward, downward`` (Sec. 4.2: 32 scenes x 5 = 160
  samples), each scored by RPE (Table 3) and by the feature metrics of Tables 1-2;
- ``orbit``: a closed 360 degree orbit, scored by cycle PSNR (Appendix E, Table 6). The video compared is the
  generation's own (frame ``t`` shows scene time ``t`` from camera ``t``), so the first frame is time 0 and the last
  time ``T - 1`` from the same camera: the loop closes only if the deformation returns the scene to how it looked.
  (At one fixed time an explicit scene renders a closed loop identically, an infinite PSNR that says nothing.);
- ``scene`` (scenes with a real video only): the real cameras, re-expressed relative to frame 0, with the real
  intrinsics; the renders are compared with the real frames (PSNR, SSIM, LPIPS over frames ``1..T-1``, the views
  the model did not see) and depth (AbsRel, delta1 over all frames, after ``depth_alignment``; the Pearson
  correlation of Eq. 4), over the pixels the render covers (``depth_coverage``: their share of the valid real ones). Where the clip has 3D tracks, the generated deformation is compared with their motion
  (the quantity Eq. 5 trains): each track's Gaussian (the pixel-aligned one under it in a frame where it is visible)
  is displaced by the field to every other frame's time, against the track's true displacement, over the pairs
  that move at least ``motion_min_displacement``: cosine, end-point error and both magnitudes. The generator is also
  scored apart from the LDRM: the sampled latents against the real video's, per latent frame, beside frame 0's
  latents held still (:func:`generator_metrics`); and the render at ``t = 0`` against the input (``psnr_t0``). Ours,
  not the paper's.
- ``latents`` (scenes with a real video, ``metrics.latent_reconstruction``): no generation; the LDRM reads the real
  clip's VAE latents (:meth:`~d4s.pipeline.Diff4SplatPipeline.reconstruct`) and is scored as ``scene``. It measures
  the reconstruction model on its own, in particular motion: how an object moves after the first frame is not
  determined by that frame (toy4d's objects move in random directions), but it is in the video's latents.

Scene sources (``scenes`` in the config): annotated shards (``index`` + ``split``, or a ``shards`` pattern; each clip's
first ``frames`` frames at ``frame_step``, centre-cropped to the eval size, as the data pipeline reads them), and/or
``images``: a folder of images or a ``.txt`` list ``path<TAB>prompt`` (as ``d4s.generate --image`` reads it), which
have no real video and so only get the video-free metrics. Named trajectories use the first frame's intrinsics
(images: ``fov``) and ``scene_scale`` metres (``null``: the median real depth of frame 0, else 2 m as
``d4s.generate``).

Seeds. Sample ``(scene, trajectory)`` uses ``seed = (base seed * 1000003 + crc32("scene/trajectory")) mod 2^31``,
the same on every run and every machine.

Run folder. ``samples/<scene>/<trajectory>/``: ``rgb.mp4`` (the render, H.264 at ``video_crf``), ``cameras.json``,
``features.json`` (per-sample values of the weight-needing metrics and the weight paths and settings they came from;
others recompute them), ``i3d.npy`` (FVD features) and ``metrics.json``
(written last: the sample's settings and weight-free metrics, computed on the exact render). A re-run skips samples
whose ``metrics.json`` holds the same settings; when the configured weights change, the feature metrics of
``features.json`` are all computed again from ``rgb.mp4`` (no generation). ``real/<scene>/i3d_<T>x<H>x<W>.npy``: features of the real
clips. Each I3D cache records the weights file and the video content it came from, and is recomputed otherwise.
Every file is written atomically. The report (``d4s.eval.report``) is written from these files.

Weight-needing metrics load their networks from the local paths under ``weights`` (``d4s.eval.extractors``); a
missing path is reported as skipped with the file named, never replaced by a stand-in. ``random_init_consistency``
adds a frame consistency on a randomly initialised ResNet-18, marked in the report as not comparable to the paper.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor
from tqdm import tqdm

from d4s.data.schema import GENERIC_PROMPT
from d4s.utils.fileio import atomic_output, write_json

log = logging.getLogger(__name__)

PAPER_TRAJECTORIES = ("spiral", "forward", "backward", "upward", "downward")
ORBIT, SCENE, LATENTS = "orbit", "scene", "latents"
REAL_CAMERA_SAMPLES = (SCENE, LATENTS)  # rendered along the clip's own cameras and compared with its video
DEFAULT_SCENE_SCALE = 2.0  # metres, as d4s.generate
SEED_MULTIPLIER = 1_000_003
#: weight-needing metrics (report order) and the extractors (d4s.eval.extractors names) each needs
FEATURE_METRICS: dict[str, tuple[str, ...]] = {
    "fvd": ("i3d",),
    "kvd": ("i3d",),
    "clip_score": ("clip_b32",),
    "clip_aesthetic": ("clip_l14", "aesthetic"),
    "qalign": ("qalign",),
    "mast3r_matches": ("mast3r",),
    "subject_consistency": ("dino",),
    "background_consistency": ("clip_b32",),
}
RANDOM_CONSISTENCY = "random_init_consistency"
#: per kind of sample, the metric settings its cached weight-free metrics depend on
SCORING_SETTINGS = {
    "paper": ("rpe_delta", "rpe_align"),
    SCENE: ("depth_alignment", "motion_tracks", "motion_min_displacement", "lpips_net", "lpips_backbone"),
}
SCORING_SETTINGS[LATENTS] = SCORING_SETTINGS[SCENE]
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
#: the definition of the weight-free metrics a cached sample holds; raised when they change (2: the generator's
#: latent metrics and ``psnr_t0``), so older samples are generated and scored again
WEIGHT_FREE_VERSION = 2
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


# ------------------------------------------------------------------------------------------------------- config
@dataclass
class SceneConfig:
    """Where the scenes come from (module docstring). ``index``/``shards``: annotated shards (``split`` of an index);
    ``images``: a folder or ``.txt`` list of captioned images; ``prompt``: the caption of images listed without one;
    ``fov``: the images' horizontal field of view (degrees); ``max_scenes``: the first N scenes (shards first)."""

    index: str | None = "data/toy4d/index.json"
    shards: str | None = None
    split: str = "test"
    images: str | None = None
    prompt: str = ""
    fov: float = 60.0
    max_scenes: int = 32


@dataclass
class GenerationConfig:
    """How every sample is generated and rendered: ``frames`` (4k + 1) at ``height x width``, Euler ``steps``,
    ``guidance`` (Eq. 6's gamma_max, 0: none) on ``guidance_schedule`` (the unconditional pass skipped where
    ``gamma - 1 < guidance_skip_below``, :class:`~d4s.diffusion.Guidance`), the base ``seed``, ``scene_scale`` (metres;
    ``null``: module docstring), the real clips' ``frame_step``, the renderer ``backend``, the DiT ``dtype``
    (``auto``, ``float32``, ``bfloat16``) and the CRF of the cached ``rgb.mp4``."""

    frames: int = 49
    height: int = 512
    width: int = 512
    steps: int = 30
    guidance: float = 7.5
    guidance_schedule: str = "cosine"
    guidance_skip_below: float = 1e-3
    seed: int = 0
    scene_scale: float | None = None
    frame_step: int = 1
    backend: str = "auto"
    dtype: str = "auto"
    video_crf: int = 12


@dataclass
class MetricConfig:
    """Which samples and weight-free metrics run: the ``trajectories`` (the paper's five), the ``orbit`` (cycle PSNR,
    ``orbit_degrees`` 360), ``reconstruction`` along real cameras; RPE frame gap ``rpe_delta`` and alignment
    ``rpe_align`` (``none``: the estimate is metric through the render's depth and starts at the identity, as the
    generation trajectory; ``scale``/``sim3`` forgive a wrong scene scale); ``latent_reconstruction`` (the ``latents``
    samples); ``depth_alignment``
    (``median``, ``lstsq``, ``none``); ``motion_tracks`` per real clip and ``motion_min_displacement`` (metres) for the
    motion metrics; LPIPS (``lpips_net``) only with a local torchvision ``lpips_backbone``; MASt3R on
    ``mast3r_views`` generated views per sample; CLIP-Score as ``clip_score_scale * max(cos, 0)``."""

    trajectories: list[str] = field(default_factory=lambda: list(PAPER_TRAJECTORIES))
    orbit: bool = True
    orbit_degrees: float = 360.0
    reconstruction: bool = True
    latent_reconstruction: bool = False
    rpe_delta: int = 1
    rpe_align: str = "none"
    depth_alignment: str = "median"
    motion_tracks: int = 1024
    motion_min_displacement: float = 0.02
    lpips_net: str = "alex"
    lpips_backbone: str | None = None
    mast3r_views: int = 8
    clip_score_scale: float = 100.0


@dataclass
class WeightsConfig:
    """Local weight files of the feature networks (``d4s.eval.extractors``; ``null``: the metric is skipped).
    ``random_init_consistency``: also a frame consistency on a randomly initialised ResNet-18 (a smoke test of the
    code path, not comparable to the paper)."""

    i3d: str | None = None
    clip_b32: str | None = None
    clip_l14: str | None = None
    aesthetic: str | None = None
    dino: str | None = None
    qalign: str | None = None
    mast3r: str | None = None
    random_init_consistency: bool = False

    def paths(self) -> dict[str, str | None]:
        return {
            name: getattr(self, name)
            for name in ("i3d", "clip_b32", "clip_l14", "aesthetic", "dino", "qalign", "mast3r")
        }


@dataclass
class EvalConfig:
    """One evaluation run (``configs/eval.yaml``): the checkpoint (``ckpt``, optional ``model_config`` YAML, EMA
    weights unless ``no_ema``), the run folder ``out``, the ``device`` (``auto``: CUDA when visible) and the sections."""

    ckpt: str = "outputs/stage3/checkpoints/last.ckpt"
    model_config: str | None = None
    no_ema: bool = False
    out: str = "eval/stage3"
    device: str = "auto"
    scenes: SceneConfig = field(default_factory=SceneConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    metrics: MetricConfig = field(default_factory=MetricConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)

    def __post_init__(self) -> None:
        g, m = self.generation, self.metrics
        if g.frames < 2 or (g.frames - 1) % 4:
            raise ValueError(f"generation.frames: must be 4k + 1 (the VAE compresses time 4x), got {g.frames}")
        if min(g.height, g.width, g.steps, g.frame_step) < 1 or g.guidance < 0:
            raise ValueError("generation: height, width, steps and frame_step must be >= 1, guidance >= 0")
        if g.scene_scale is not None and not (math.isfinite(g.scene_scale) and g.scene_scale > 0):
            raise ValueError(f"generation.scene_scale: must be a positive number of metres, got {g.scene_scale}")
        unknown = [name for name in m.trajectories if name not in PAPER_TRAJECTORIES]
        if unknown:
            raise ValueError(f"metrics.trajectories: unknown {unknown}; choose from {', '.join(PAPER_TRAJECTORIES)}")
        if not 1 <= m.rpe_delta < g.frames:
            raise ValueError(f"metrics.rpe_delta: must lie in [1, {g.frames}), got {m.rpe_delta}")
        if g.dtype not in DTYPE_NAMES:
            raise ValueError(f"generation.dtype: expected one of {', '.join(DTYPE_NAMES)}, got {g.dtype!r}")
        if m.motion_tracks < 0 or not m.motion_min_displacement > 0:
            raise ValueError("metrics: motion_tracks must be >= 0 and motion_min_displacement a positive length")
        if self.scenes.max_scenes < 1:
            raise ValueError(f"scenes.max_scenes: must be >= 1, got {self.scenes.max_scenes}")


def _build(cls, values: Any, where: str):
    """A config dataclass from a YAML mapping; unknown keys are a ``ValueError`` naming them."""
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")  # noqa: TRY004 (a config error)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(values.keys() - known.keys())
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {', '.join(known)}")
    nested = {"scenes": SceneConfig, "generation": GenerationConfig, "metrics": MetricConfig, "weights": WeightsConfig}
    kwargs = {
        key: _build(nested[key], value, f"{where}.{key}") if cls is EvalConfig and key in nested else value
        for key, value in values.items()
    }
    return cls(**kwargs)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> EvalConfig:
    """The :class:`EvalConfig` of a YAML file (``None``: the defaults), with dotted ``overrides`` applied
    (``{"ckpt": ..., "scenes.max_scenes": 2}``). Raises ``FileNotFoundError`` / ``ValueError`` naming the problem."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"evaluation config not found: {path}")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
    for dotted, value in (overrides or {}).items():
        *parents, key = dotted.split(".")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = value
    return _build(EvalConfig, values, str(path or "config"))


# ------------------------------------------------------------------------------------------------------- scenes
@dataclass
class Scene:
    """One evaluation scene. ``image [3, H, W]`` in [0, 1] and its intrinsics ``K [3, 3]``; with a real video also
    ``video [T, 3, H, W]`` uint8, ``c2w [T, 4, 4]`` (frame 0 = identity), ``K_video [T, 3, 3]``, ``depth [T, H, W]``
    metres (0 = invalid) or ``None``, and ``track_xyz [N, T, 3]`` (first-camera frame, metres) with ``track_visible
    [N, T]``, or ``None``."""

    name: str
    caption: str
    image: Tensor
    K: Tensor
    video: Tensor | None = None
    c2w: Tensor | None = None
    K_video: Tensor | None = None
    depth: Tensor | None = None
    track_xyz: Tensor | None = None
    track_visible: Tensor | None = None

    def focus(self) -> float | None:
        """The median valid real depth of frame 0 (metres), or ``None``."""
        if self.depth is None:
            return None
        valid = self.depth[0][self.depth[0] > 0]
        return float(valid.float().median()) if valid.numel() else None


def _shard_scenes(
    config: SceneConfig, generation: GenerationConfig, limit: int, num_tracks: int = 0
) -> Iterator[Scene]:
    from d4s.data.clips import ClipConfig, ClipTooShort, sample_clip
    from d4s.data.shards import read_shard
    from d4s.data.sources import ShardSource, resolve_source

    source = ShardSource(name="eval", index=config.index, shards=config.shards, split=config.split)
    clip = ClipConfig(
        num_frames=generation.frames,
        frame_step=generation.frame_step,
        height=generation.height,
        width=generation.width,
        num_tracks=num_tracks,
    )
    count, skipped = 0, Counter()
    for shard in resolve_source(source):
        for raw in read_shard(shard.url, skipped):
            if count >= limit:
                return
            try:
                clip_sample = sample_clip(raw, clip, np.random.default_rng(0), random=False)
            except ClipTooShort as error:
                log.warning("scene %s skipped: %s", raw.get("__key__"), error)
                continue
            video = clip_sample.video
            count += 1
            yield Scene(
                name=_UNSAFE.sub("-", clip_sample.key),
                caption=clip_sample.caption,
                image=video[0].float() / 255.0,
                K=clip_sample.K[0],
                video=video,
                c2w=clip_sample.c2w,
                K_video=clip_sample.K,
                depth=None if clip_sample.depth is None else clip_sample.depth.float(),
                track_xyz=clip_sample.track_xyz,
                track_visible=clip_sample.track_visible,
            )


def _image_scenes(config: SceneConfig, generation: GenerationConfig, limit: int) -> Iterator[Scene]:
    from d4s.generation import collect_jobs, input_image
    from d4s.geometry.cameras import intrinsics_from_fov
    from d4s.geometry.crop import crop_box
    from d4s.utils.image import load_photo

    images = Path(config.images)
    if not images.exists():
        raise FileNotFoundError(f"scenes.images: not found: {images} (a folder of images or a .txt list)")
    size = (generation.height, generation.width)
    for job in collect_jobs(images, config.prompt, Path(""))[:limit]:
        photo = load_photo(job.image)
        K = crop_box(photo.shape[:2], size).intrinsics(intrinsics_from_fov(photo.shape[1], photo.shape[0], config.fov))
        yield Scene(name=_UNSAFE.sub("-", job.out.name), caption=job.prompt, image=input_image(photo, size), K=K)


def load_scenes(config: SceneConfig, generation: GenerationConfig, num_tracks: int = 0) -> list[Scene]:
    """The evaluation scenes: shard clips first, then images, at most ``max_scenes`` (module docstring), with up to
    ``num_tracks`` 3D tracks per clip that has them."""
    has_shards = config.index is not None or config.shards is not None
    if not has_shards and config.images is None:
        raise ValueError("scenes: no source; give scenes.index (or scenes.shards) and/or scenes.images")
    if config.index is not None and config.shards is not None:
        raise ValueError("scenes: give one of scenes.index and scenes.shards, not both")
    scenes: list[Scene] = []
    if has_shards:
        scenes.extend(_shard_scenes(config, generation, config.max_scenes, num_tracks))
    if config.images is not None and len(scenes) < config.max_scenes:
        scenes.extend(_image_scenes(config, generation, config.max_scenes - len(scenes)))
    if not scenes:
        raise ValueError("scenes: the configured sources hold no usable scene (clips too short for generation.frames?)")
    names = Counter(scene.name for scene in scenes)
    if len(names) < len(scenes):
        raise ValueError(f"scenes: repeated scene names {[n for n, c in names.items() if c > 1][:3]}")
    return scenes


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


def _file_identity(path: Path, prefix: str) -> dict[str, Any]:
    """``{prefix: resolved path, prefix_bytes: size, prefix_mtime_ns: mtime}``: a file changed in place reads as
    another file."""
    stat = path.stat()
    return {prefix: str(path.resolve()), f"{prefix}_bytes": stat.st_size, f"{prefix}_mtime_ns": stat.st_mtime_ns}


def _digest(*parts: Tensor | str | None) -> str:
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
    return _digest(scene.image, scene.caption, scene.K, *real)


def sample_settings(sample: Sample, scale: float, config: EvalConfig, scene: Scene | None = None) -> dict[str, Any]:
    """What decides a sample's render and weight-free metrics: checkpoint (path, size, mtime), generation settings,
    trajectory, seed, the scene's content (:func:`scene_fingerprint`, when ``scene`` is given) and the metric
    settings of ``SCORING_SETTINGS`` its kind uses (changing one generates again)."""
    kind = "paper" if sample.trajectory in PAPER_TRAJECTORIES else sample.trajectory
    settings = {
        **_file_identity(Path(config.ckpt), "ckpt"),
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
    return json.loads(json.dumps(settings))


def read_json(path: Path) -> Any:
    """A JSON file's content, or ``None`` when it is missing or unreadable (an unfinished sample)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def completed(sample: Sample, settings: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """The cached ``metrics.json`` of a finished sample with the same settings, else ``None``."""
    folder = sample.folder(out)
    cached = read_json(folder / "metrics.json")
    if isinstance(cached, dict) and cached.get("settings") == settings and (folder / "rgb.mp4").is_file():
        return cached
    return None


# ----------------------------------------------------------------------------------------- weight-free metrics
def _video(rgb: Tensor) -> Tensor:
    """``[F, H, W, 3]`` render -> ``[F, 3, H, W]``."""
    return rgb.permute(0, 3, 1, 2).contiguous()


def weight_free_metrics(
    sample: Sample, scene: Scene, rgb: Tensor, depth: Tensor, c2w: Tensor, K: Tensor, config: EvalConfig, lpips=None
) -> tuple[dict[str, float], dict[str, Any], dict[str, str]]:
    """The metrics of one render that need no downloaded weights.

    Args:
        rgb: ``[T, H, W, 3]`` in [0, 1]; depth: ``[T, H, W]`` metres; c2w, K: the generation cameras.
    Returns ``(metrics, curves, failures)``: scalars; per-pair RPE curves; metric -> reason where a metric could not
    be computed for this sample (e.g. too few features to estimate the poses).
    """
    from d4s.eval import metrics as m
    from d4s.eval.extractors.camera import estimate_poses
    from d4s.eval.poses import relative_pose_error

    values: dict[str, float] = {}
    curves: dict[str, Any] = {}
    failures: dict[str, str] = {}
    video = _video(rgb)
    if sample.trajectory in PAPER_TRAJECTORIES:
        frames = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
        estimate, stats = estimate_poses(frames, K[0], depth=depth, return_stats=True)  # metric: the render's depth
        estimate = torch.as_tensor(estimate).double()
        values["pose_unregistered"] = len(stats.failed_frames) / max(len(frames) - 1, 1)
        try:
            if len(stats.failed_frames) >= len(frames) - 1:  # an RPE of no estimate would only measure the reference
                raise ValueError(
                    f"no frame after the first could be registered ({len(frames)} frames, too few matches)"
                )
            rpe = relative_pose_error(estimate, c2w.double(), config.metrics.rpe_delta, config.metrics.rpe_align)
        except ValueError as error:
            failures["rpe"] = " ".join(str(error).split())
        else:
            values.update(
                rpe_trans=rpe["trans_mean"],  # means, as the paper's "Avg. RPE"; the RMSEs beside them
                rpe_trans_rmse=rpe["trans_rmse"],
                rpe_rot_deg=rpe["rot_mean_deg"],
                rpe_rot_rmse_deg=rpe["rot_rmse_deg"],
            )
            curves["rpe_trans"] = torch.as_tensor(rpe["per_pair_trans"]).tolist()
            curves["rpe_rot_deg"] = torch.as_tensor(rpe["per_pair_rot_deg"]).tolist()
    elif sample.trajectory == ORBIT:
        values["cycle_psnr"] = m.cycle_psnr(video)
    elif sample.trajectory in REAL_CAMERA_SAMPLES:
        real = scene.video.float() / 255.0
        values["psnr"] = m.psnr(video[1:], real[1:])
        values["psnr_t0"] = m.psnr(video[:1], real[:1])  # the input view at its own time
        values["ssim"] = m.ssim(video[1:], real[1:])
        if lpips is not None:
            device = next(lpips.parameters()).device
            with torch.no_grad():
                values["lpips"] = float(lpips(video[1:].to(device), real[1:].to(device)).mean())
        if scene.depth is not None:
            valid = (scene.depth > 0) & (depth > 0)  # pixels a render leaves empty have no depth to compare
            values["depth_coverage"] = float(valid.sum() / (scene.depth > 0).sum().clamp_min(1))  # their share
            if valid.any():
                try:
                    depth_values = m.depth_metrics(depth, scene.depth, valid, config.metrics.depth_alignment)
                    values.update(depth_abs_rel=depth_values["abs_rel"], depth_delta1=depth_values["delta1"])
                except ValueError as error:
                    failures["depth"] = str(error)
                try:
                    values["depth_corr"] = m.depth_correlation(depth, torch.where(valid, scene.depth, 0.0))
                except ValueError as error:
                    failures["depth_corr"] = str(error)
            else:
                failures["depth"] = "no pixel has both a valid real depth and a rendered one"
    return values, curves, failures


def generator_metrics(pipeline, latents: Tensor, scene: Scene, seed: int) -> dict[str, float]:
    """The generator apart from the LDRM: its sampled latents ``[T', C, h, w]`` against the real video's, per latent
    frame ``k``: ``latent_psnr_<k>``, and for ``k >= 1`` the still copy's ``still_latent_psnr_<k>`` (frame 0's real
    latents held at every time: what a generator that predicts no change scores). PSNR peak: the codec's value range
    (space to depth) or the real latents' spread (:func:`d4s.eval.metrics.latent_psnr`)."""
    from d4s.eval import metrics as m

    real = pipeline.encode_video(scene.video.float() / 255.0, seed)[0].cpu()
    data_range = pipeline.latent_range or float(real.max() - real.min())
    generated = m.latent_psnr(latents.float().cpu(), real, data_range)
    still = m.still_latent_psnr(real, data_range)
    values = {f"latent_psnr_{k}": value for k, value in enumerate(generated)}
    values.update({f"still_latent_psnr_{k}": value for k, value in enumerate(still) if k > 0})
    return values


def motion_metrics(field, grid: tuple[int, int, int], scene: Scene, min_displacement: float) -> dict[str, float]:
    """The generated deformation against the scene's 3D tracks (module docstring): ``motion_cosine``, ``motion_epe``,
    ``motion_predicted`` and ``motion_true`` (metres), ``motion_pairs``; empty when no tracked pair moves.

    Args:
        field: the generation's :class:`~d4s.gaussians.field.DeformableGaussianField`, ``T * h * w`` pixel-aligned
            Gaussians ordered (frame, row, column), deformed to each of the ``T`` frame times.
        grid: ``(T, h, w)``. scene: a clip with ``track_xyz``, ``track_visible`` and its real cameras.
    """
    from d4s.eval import metrics as m
    from d4s.losses import track_motion

    T, h, w = grid
    if scene.track_xyz is None or field.num_frames != T:
        return {}
    N = scene.track_xyz.shape[0]
    generator = torch.Generator().manual_seed(0)  # each track's source frame: the same on every run
    predicted, true, paired = track_motion(
        field.dmu[None].float().cpu(),
        (h, w),
        scene.track_xyz[None].float(),
        scene.track_visible[None],
        torch.ones(1, N, dtype=torch.bool),
        scene.c2w[None].float(),
        scene.K_video[None].float(),
        tuple(scene.video.shape[-2:]),
        torch.arange(T)[None],
        generator,
    )
    agreement = m.motion_agreement(predicted[paired], true[paired], min_displacement)
    return {} if agreement is None else {f"motion_{key}": float(value) for key, value in agreement.items()}


# ------------------------------------------------------------------------------------------------- generation
def generate_sample(pipeline, sample: Sample, scene: Scene, config: EvalConfig, settings: dict, lpips=None) -> dict:
    """Generate, render and score one sample; writes its folder (module docstring) and returns its ``metrics.json``."""
    from d4s.export import follow_times, render_sequence
    from d4s.diffusion.sampler import SamplingConfig
    from d4s.geometry.trajectories import save_camera_path
    from d4s.utils.video import write_video

    g = config.generation
    c2w, K, _ = sample_cameras(sample, scene, config)
    sampling = SamplingConfig(g.steps, g.guidance, g.guidance_schedule, g.guidance_skip_below, sample.seed)
    if sample.trajectory == LATENTS:
        result = pipeline.reconstruct(scene.video.float() / 255.0, c2w, K, sample.seed)
    else:
        result = pipeline.generate(scene.image, c2w, K, scene.caption, sampling)
    T, size = c2w.shape[0], (g.height, g.width)
    render = render_sequence(result.field, c2w, K, follow_times(T, T), size, g.backend)
    values, curves, failures = weight_free_metrics(sample, scene, render.rgb, render.depth, c2w, K, config, lpips)
    if sample.trajectory in REAL_CAMERA_SAMPLES:
        values.update(motion_metrics(result.field, result.grid, scene, config.metrics.motion_min_displacement))
    if sample.trajectory == SCENE:
        values.update(generator_metrics(pipeline, result.latents, scene, sample.seed))
    folder = sample.folder(Path(config.out))
    (folder / "metrics.json").unlink(missing_ok=True)  # unfinished until rewritten below
    (folder / "features.json").unlink(missing_ok=True)
    (folder / "i3d.npy").unlink(missing_ok=True)
    write_video(folder / "rgb.mp4", render.rgb, crf=g.video_crf)
    save_camera_path(folder / "cameras.json", c2w, K, size, render.times)
    document = {
        "settings": settings,
        "caption": scene.caption,
        "metrics": values,
        "curves": curves,
        "failures": failures,
        "timings": result.timings,
    }
    write_json(folder / "metrics.json", document)
    return document


# ---------------------------------------------------------------------------------------- weight-needing metrics
def _load_video(path: Path) -> Tensor:
    from d4s.utils.video import read_video

    return torch.from_numpy(read_video(path)).permute(0, 3, 1, 2).float() / 255.0


class _Extractors:
    """Feature networks loaded once each from the configured paths (on the CPU, as the extractors load); a failed
    load is remembered and raised again."""

    def __init__(self, weights: WeightsConfig, device: torch.device):
        self.paths, self.device = weights.paths(), device
        self.loaded: dict[str, Any] = {}

    def get(self, name: str):
        """The extractor, or raises the ``MissingWeights`` / ``ImportError`` its loader raised."""
        if name not in self.loaded:
            from d4s.eval.extractors import load_extractor

            try:
                self.loaded[name] = load_extractor(name, self.paths, device=self.device)
            except (FileNotFoundError, ImportError) as error:  # MissingWeights is a FileNotFoundError
                self.loaded[name] = error
        value = self.loaded[name]
        if isinstance(value, Exception):
            raise value
        return value


def _per_sample_value(
    metric: str, extractors: _Extractors, video: Tensor, scene: Scene, views: int, clip_scale: float
) -> float:
    """One sample's value of a per-sample feature metric (``video [T, 3, H, W]`` in [0, 1])."""
    from d4s.eval import metrics as m

    with torch.no_grad():
        if metric == "clip_score":
            from d4s.eval.extractors.clip import clip_score

            clip = extractors.get("clip_b32")
            image = clip.image_features(video)
            text = clip.text_features([scene.caption or GENERIC_PROMPT])  # what the generation used
            return float(clip_score(image, text.expand(image.shape[0], -1), scale=clip_scale).mean())
        if metric == "clip_aesthetic":
            clip, head = extractors.get("clip_l14"), extractors.get("aesthetic")
            return float(head.score(clip.image_features(video)).mean())
        if metric == "qalign":
            qalign = extractors.get("qalign")
            return float(qalign.score(video).mean())
        if metric == "subject_consistency":
            dino = extractors.get("dino")
            return 100.0 * m.frame_consistency(dino.features(video))
        if metric == "background_consistency":
            clip = extractors.get("clip_b32")
            return 100.0 * m.frame_consistency(clip.image_features(video))
        if metric == "mast3r_matches":
            matcher = extractors.get("mast3r")
            picks = torch.linspace(1, video.shape[0] - 1, min(views, video.shape[0] - 1)).round().long().unique()
            return float(np.mean([matcher.count_matches(scene.image, video[i]) for i in picks.tolist()]))
    raise ValueError(f"metric: unknown per-sample feature metric {metric!r}")


def _random_network() -> torch.nn.Module:
    """A ResNet-18 with seeded random weights (no classifier): exercises the consistency code path without
    downloaded weights; its numbers are NOT comparable to the paper's DINO/CLIP ones. The global RNG is left as is."""
    from torchvision.models import resnet18

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = resnet18(weights=None).eval()
    network.fc = torch.nn.Identity()
    return network


def _random_consistency(network: torch.nn.Module, video: Tensor) -> float:
    """VBench frame consistency (x100) of ``video [T, 3, H, W]`` on :func:`_random_network` features at 112 px."""
    from d4s.eval import metrics as m

    with torch.no_grad():
        frames = torch.nn.functional.interpolate(video, size=(112, 112), mode="bilinear", align_corners=False)
        return 100.0 * m.frame_consistency(network(frames))


def _i3d_features(extractors: _Extractors, path: Path, video: Callable[[], Tensor], content: str) -> np.ndarray:
    """Cached I3D features ``[400]`` of one video (``path``: the cache file). The cache holds beside it (``.json``)
    the I3D weights file and the video's ``content`` digest it came from; another network or video recomputes it."""
    i3d = extractors.get("i3d")  # raises MissingWeights first: no features without the network
    key = {**_file_identity(Path(extractors.paths["i3d"]), "i3d"), "content": content}
    if path.is_file() and read_json(path.with_suffix(".json")) == key:
        return np.load(path)
    with torch.no_grad():
        features = i3d.features(video()[None])[0].float().cpu().numpy()
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, features)
    write_json(path.with_suffix(".json"), key)
    return features


def feature_metrics(
    samples: list[Sample], scenes: dict[str, Scene], config: EvalConfig, device: torch.device
) -> tuple[dict[str, dict[str, float]], dict[str, Any], list[dict[str, str]]]:
    """The weight-needing metrics over the paper-trajectory samples (Tables 1-2).

    Returns ``(per_sample, distribution, skipped)``: per sample folder, metric -> value (cached in ``features.json``);
    the set metrics ``{"fvd": {"overall": ..., "<trajectory>": ...}, "kvd": ..., "n_generated", "n_real"}``; and
    ``{"metric", "skipped"}`` for each metric that could not run, the reason naming the missing file.
    """
    out, scoring = Path(config.out), config.metrics
    extractors = _Extractors(config.weights, device)
    videos = [s for s in samples if s.trajectory in PAPER_TRAJECTORIES]
    weights = {
        **config.weights.paths(),
        "clip_score_scale": scoring.clip_score_scale,
        "mast3r_views": scoring.mast3r_views,
    }
    cached = {}
    for sample in videos:  # values from other weight files are computed again
        document = read_json(sample.folder(out) / "features.json")
        valid = isinstance(document, dict) and document.get("weights") == weights
        cached[sample] = document["values"] if valid else {}
    skipped: list[dict[str, str]] = []
    network = None
    metrics = list(FEATURE_METRICS)
    if config.weights.random_init_consistency:
        metrics.append(RANDOM_CONSISTENCY)
    distribution: dict[str, Any] = {}
    bar = tqdm(total=len(metrics), desc="feature metrics", unit="metric", leave=False)
    for metric in metrics:
        bar.update(1)
        if metric == "kvd":
            continue  # computed with FVD, from the same features
        if metric == "fvd":
            real = [scene for scene in scenes.values() if scene.video is not None]
            reason = (
                f"FVD/KVD compare feature distributions and need at least 2 real videos, the scene source has "
                f"{len(real)} (give annotated shards in scenes.index)"
            )
            if len(real) >= 2:
                try:
                    distribution.update(_distribution_metrics(videos, real, extractors, out))
                    continue
                except (FileNotFoundError, ImportError, ValueError) as error:  # ValueError: e.g. clips too short
                    reason = " ".join(str(error).split())
            skipped += [{"metric": "fvd", "skipped": reason}, {"metric": "kvd", "skipped": reason}]
            continue
        try:
            for sample in videos:
                if metric in cached[sample]:
                    continue
                video = _load_video(sample.folder(out) / "rgb.mp4")
                if metric == RANDOM_CONSISTENCY:
                    network = network or _random_network()
                    cached[sample][metric] = _random_consistency(network, video)
                else:
                    scene = scenes[sample.scene]
                    value = _per_sample_value(
                        metric, extractors, video, scene, scoring.mast3r_views, scoring.clip_score_scale
                    )
                    cached[sample][metric] = value
                write_json(sample.folder(out) / "features.json", {"weights": weights, "values": cached[sample]})
        except (FileNotFoundError, ImportError) as error:
            skipped.append({"metric": metric, "skipped": " ".join(str(error).split())})
    bar.close()
    per_sample = {str(s.folder(out)): cached[s] for s in videos}
    return per_sample, distribution, skipped


def _distribution_metrics(videos: list[Sample], real: list[Scene], extractors: _Extractors, out: Path) -> dict:
    """FVD and KVD (StyleGAN-V protocol: I3D features of whole videos) of the generated videos against the real
    ones, overall and per trajectory, with the set sizes."""
    from d4s.eval import metrics as m

    size = "x".join(str(n) for n in real[0].video.shape[:1] + real[0].video.shape[2:])  # T x H x W of the clips
    real_features = np.stack(
        [
            _i3d_features(
                extractors,
                out / "real" / s.name / f"i3d_{size}.npy",
                lambda s=s: s.video.float() / 255.0,
                _digest(s.video),
            )
            for s in real
        ]
    )
    generated = {
        s: _i3d_features(
            extractors,
            s.folder(out) / "i3d.npy",
            lambda s=s: _load_video(s.folder(out) / "rgb.mp4"),
            hashlib.sha1((s.folder(out) / "rgb.mp4").read_bytes()).hexdigest(),
        )
        for s in videos
    }
    result: dict[str, Any] = {"fvd": {}, "kvd": {}, "n_real": len(real), "n_generated": {}}
    groups = {"overall": list(generated.values())}
    for sample, features in generated.items():
        groups.setdefault(sample.trajectory, []).append(features)
    for group, features in groups.items():
        stacked = np.stack(features)
        result["n_generated"][group] = len(features)
        result["fvd"][group] = m.frechet_distance(stacked, real_features) if len(features) > 1 else None
        result["kvd"][group] = m.kernel_distance(stacked, real_features) if len(features) > 1 else None
    return result
