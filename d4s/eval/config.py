"""The evaluation config (``configs/eval.yaml``) and the protocol's vocabulary: sample kinds, metric names."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from d4s.diffusion.sampler import GuidanceSchedule, SamplingConfig
from d4s.eval.metrics import DepthAlignment
from d4s.eval.poses import PoseAlignment
from d4s.generation import DTypeName
from d4s.render import Backend
from d4s.utils.config import apply_overrides, from_dict, read_yaml_mapping

log = logging.getLogger(__name__)

PAPER_TRAJECTORIES = ("spiral", "forward", "backward", "upward", "downward")
ORBIT, SCENE, LATENTS = "orbit", "scene", "latents"
REAL_CAMERA_SAMPLES = (SCENE, LATENTS)  # rendered along the clip's own cameras and compared with its video
SEED_MULTIPLIER = 1_000_003
RANDOM_CONSISTENCY = "random_init_consistency"
#: per kind of sample, the metric settings its cached weight-free metrics depend on
SCORING_SETTINGS = {
    "paper": ("rpe_delta", "rpe_align"),
    SCENE: ("depth_alignment", "motion_tracks", "motion_min_displacement", "lpips_net", "lpips_backbone"),
}
SCORING_SETTINGS[LATENTS] = SCORING_SETTINGS[SCENE]
#: the definition of the weight-free metrics a cached sample holds; raised when they change (2: the generator's
#: latent metrics and ``psnr_t0``), so older samples are generated and scored again
WEIGHT_FREE_VERSION = 2


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
    guidance_schedule: GuidanceSchedule = "cosine"
    guidance_skip_below: float = 1e-3
    seed: int = 0
    scene_scale: float | None = None
    frame_step: int = 1
    backend: Backend = "auto"
    dtype: DTypeName = "auto"
    video_crf: int = 12

    def sampling(self, seed: int) -> SamplingConfig:
        """The sampling settings of one sample drawn with noise ``seed``."""
        return SamplingConfig(self.steps, self.guidance, self.guidance_schedule, self.guidance_skip_below, seed)


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
    rpe_align: PoseAlignment = "none"
    depth_alignment: DepthAlignment = "median"
    motion_tracks: int = 1024
    motion_min_displacement: float = 0.02
    lpips_net: str = "alex"
    lpips_backbone: str | None = None
    mast3r_views: int = 8
    clip_score_scale: float = 100.0


@dataclass
class WeightsConfig:
    """Local weight files of the feature networks (``d4s.eval.extractors``; ``null``: the metric is skipped).
    ``qalign_python``: the Python of an environment with one-align's requirements, which runs Q-Align in a subprocess
    (its remote code does not import under the transformers d4s pins; ``null``: in this process, which refuses).
    ``random_init_consistency``: also a frame consistency on a randomly initialised ResNet-18 (a smoke test of the
    code path, not comparable to the paper)."""

    i3d: str | None = None
    clip_b32: str | None = None
    clip_l14: str | None = None
    aesthetic: str | None = None
    dino: str | None = None
    qalign: str | None = None
    qalign_python: str | None = None
    mast3r: str | None = None
    random_init_consistency: bool = False

    def paths(self) -> dict[str, str | None]:
        """Extractor name -> configured path, and ``qalign_python`` (what the feature values depend on)."""
        return {
            name: getattr(self, name)
            for name in ("i3d", "clip_b32", "clip_l14", "aesthetic", "dino", "qalign", "mast3r", "qalign_python")
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
        if m.motion_tracks < 0 or not m.motion_min_displacement > 0:
            raise ValueError("metrics: motion_tracks must be >= 0 and motion_min_displacement a positive length")
        if self.scenes.max_scenes < 1:
            raise ValueError(f"scenes.max_scenes: must be >= 1, got {self.scenes.max_scenes}")


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> EvalConfig:
    """The :class:`EvalConfig` of a YAML file (``None``: the defaults), with dotted ``overrides`` applied
    (``{"ckpt": ..., "scenes.max_scenes": 2}``). Raises ``FileNotFoundError`` / ``ValueError`` naming the problem."""
    values = read_yaml_mapping(path) if path is not None else {}
    return from_dict(EvalConfig, apply_overrides(values, overrides), str(path or "config"))
