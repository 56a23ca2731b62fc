"""Inference (paper Fig. 1, Sec. 3, App. C.1): one image, a camera trajectory and a prompt to a 4D Gaussian field.

    pipeline = Diff4SplatPipeline.from_checkpoint("outputs/stage3/checkpoints/last.ckpt", device="cuda")
    result = pipeline(image, c2w, K, prompt="a dog runs on the beach", num_steps=30, guidance=Guidance(7.5), seed=0)
    result.field   # DeformableGaussianField: pixel-aligned Gaussians of every frame, deformed to every frame time

One call: the prompt and the empty prompt through the text encoder; the condition image through the frozen VAE;
Euler integration of the flow (Eq. 2) from seeded noise with classifier-free guidance on the cosine schedule (Eq. 6);
then the LDRM reads the sampled latents with the cameras' Plücker maps and predicts the Gaussians and their
deformation (Eq. 7) to each frame's time. No video is decoded: the field is the output, videos are rendered from it.

Checkpoints are the ``.ckpt`` files ``python -m d4s.fit`` writes. They store the model config (``config=`` may
replace it, and must then fit the weights), the trained weights (their EMA when the run kept one) and the training
recipe, whose flow-matching time shift the sampler reuses. Frozen weights that live in files (T5, a pretrained VAE)
are read from the paths of the model config, never from the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from d4s.diffusion.flow_matching import FlowMatching
from d4s.diffusion.sampler import Guidance, SamplingConfig
from d4s.gaussians.field import DeformableGaussianField
from d4s.geometry.cameras import check_c2w, check_intrinsics
from d4s.geometry.plucker import plucker_embedding
from d4s.models.config import ModelConfig
from d4s.models.heads import TEMPORAL_STRIDE
from d4s.models.ldrm import LatentDynamicReconstructionModel, LDRMOutput
from d4s.models.lora import DEFAULT_TARGETS, add_lora
from d4s.models.text import TextEncoder
from d4s.models.video_dit import VideoDiT
from d4s.utils.checks import check_finite, check_shape
from d4s.utils.timing import StageTimer

EMA_PREFIX = "ema."
PAPER_GUIDANCE = Guidance(max_scale=7.5, schedule="cosine")  # App. C.1: gamma_max = 7.5 on the cosine schedule


@dataclass
class Generation:
    """What one call of :class:`Diff4SplatPipeline` returns.

    Attributes:
        field: the 4D scene on the pipeline's device, float32: ``N = T * h * w`` pixel-aligned Gaussians (ordered
            frame, row, column, in the first camera's frame, metres) deformed to each of the ``T`` frame times.
        grid: ``(T, h, w)``, the layout of the Gaussians (``h = H / gaussian_stride``).
        latents: ``[T', C, H/8, W/8]`` the sampled video latents.
        timings: seconds per stage: ``text``, ``encode`` (condition image), ``sampling``, ``ldrm``.
    """

    field: DeformableGaussianField
    grid: tuple[int, int, int]
    latents: Tensor
    timings: dict[str, float]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A ``python -m d4s.fit`` checkpoint (loaded with ``weights_only=True``, on the CPU).

    Raises ``FileNotFoundError`` when missing and ``ValueError`` when it is not a readable training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (give a .ckpt written by python -m d4s.fit)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: no copy of the
        # optimiser moments (~45 GB at paper scale), which inference never reads
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({str(error).splitlines()[0]})") from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path}: not a d4s training checkpoint (no state_dict); give a .ckpt from python -m d4s.fit")
    return checkpoint


def checkpoint_weights(checkpoint: dict[str, Any], use_ema: bool = True) -> dict[str, Tensor]:
    """The video DiT and LDRM weights of a checkpoint, ``{"video_dit.*" | "ldrm.*": tensor}``; with ``use_ema``,
    the exponential moving averages replace the weights they track (``ParameterEMA`` buffers ``ema.a__b``)."""
    state = checkpoint["state_dict"]
    weights = {key: value for key, value in state.items() if key.startswith(("video_dit.", "ldrm."))}
    if use_ema:
        for key, value in state.items():
            if key.startswith(EMA_PREFIX):
                weights[key[len(EMA_PREFIX) :].replace("__", ".")] = value
    return weights


def checkpoint_recipe(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The stage's ``recipe`` as the checkpoint stores it (plain values; ``{}`` when it stores none)."""
    return checkpoint.get("hyper_parameters", {}).get("recipe") or {}


def _mismatch_report(weights: dict[str, Tensor], own: dict[str, Tensor], optional: tuple[str, ...]) -> str:
    """What keeps ``weights`` from loading into ``own`` ('' when they fit); keys under ``optional`` may be absent."""
    missing = sorted(k for k in own.keys() - weights.keys() if not k.startswith(optional))
    unexpected = sorted(weights.keys() - own.keys())
    reshaped = sorted(k for k in weights.keys() & own.keys() if weights[k].shape != own[k].shape)
    parts = []
    if reshaped:
        k = reshaped[0]
        parts.append(
            f"{len(reshaped)} tensors of another shape (e.g. {k}: {list(weights[k].shape)} in the checkpoint, "
            f"{list(own[k].shape)} in the model)"
        )
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return ", ".join(parts)


#: model-config entries that may differ from the checkpoint's: where weights live and how training saved memory
PORTABLE_SETTINGS = ("video_dit.path", "video_dit.gradient_checkpointing", "ldrm.gradient_checkpointing", "text.")


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def _check_same_architecture(config: ModelConfig, stored: dict[str, Any], path: Path | str, source: str) -> None:
    """Refuse a model config that builds another model than the checkpoint's (same weight shapes can still hide
    other heads, depth ranges, scale limits or another reading of the DiT's output, ``video_dit.prediction``);
    weight locations, checkpointing and text settings may differ."""
    stored = asdict(ModelConfig.from_dict(stored, f"{path} (stored model config)"))  # settings added since: defaults
    ours, theirs = _flatten(asdict(config)), _flatten(stored)
    differing = sorted(
        key
        for key in ours.keys() | theirs.keys()
        if not key.startswith(PORTABLE_SETTINGS) and ours.get(key) != theirs.get(key)
    )
    if differing:
        key = differing[0]
        raise ValueError(
            f"{path} was trained with another model config than {source}: {len(differing)} settings differ (e.g. "
            f"{key}: {theirs.get(key)!r} in the checkpoint, {ours.get(key)!r} in {source}); leave out --config (the "
            "checkpoint stores its own), or change only weight paths and text settings"
        )


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA (the paper trains and samples in BF16, Sec. 4.1), float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class Diff4SplatPipeline:
    """The trained video DiT, LDRM and text encoder, ready to generate (see the module docstring).

    Args:
        video_dit, ldrm, text: the models (moved to ``device``; the DiT and text encoder cast to ``dtype``).
        flow: the training flow-matching settings (the sampler uses the same time shift).
        device: where to run. dtype: the DiT's weights and the LDRM's autocast dtype (``None``: bfloat16 on CUDA,
            float32 elsewhere); rendering and the returned field are float32.
        offload_text: keep the text encoder on the CPU and move it to ``device`` only to encode the prompt
            (saves T5-XXL's ~9 GB of accelerator memory during sampling).
    """

    def __init__(
        self,
        video_dit: VideoDiT,
        ldrm: LatentDynamicReconstructionModel,
        text: TextEncoder,
        flow: FlowMatching | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        offload_text: bool = False,
    ):
        self.device = torch.device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.flow = flow or FlowMatching()
        self.video_dit = video_dit.to(self.device, self.dtype).eval()
        self.ldrm = ldrm.to(self.device).eval()
        self.offload_text = offload_text
        self.text = text.to("cpu" if offload_text else self.device, self.dtype).eval()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        config: str | Path | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        use_ema: bool = True,
        offload_text: bool = False,
        vae_tiling: bool = False,
    ) -> Diff4SplatPipeline:
        """Build the models from the checkpoint's stored model config (or ``config``, a model YAML) and load the
        trained weights.

        ``vae_tiling``: diffusers' tiled VAE encoding, for large condition images.
        Raises ``ValueError`` with one line saying what to do when the weights do not fit the config.
        """
        checkpoint = read_checkpoint(path)
        if config is not None:
            model_config = ModelConfig.from_yaml(config)
            source = str(config)
            if "d4s_model_config" in checkpoint:
                _check_same_architecture(model_config, checkpoint["d4s_model_config"], path, source)
        elif "d4s_model_config" in checkpoint:
            model_config = ModelConfig.from_dict(checkpoint["d4s_model_config"], f"{path} (stored model config)")
            source = "the config stored in the checkpoint"
        else:
            raise ValueError(f"{path}: no model config stored in the checkpoint; pass the model YAML with --config")
        recipe = checkpoint_recipe(checkpoint)
        video_dit = VideoDiT.from_config(model_config.video_dit)
        if recipe.get("dit") == "lora":
            add_lora(video_dit.transformer, DEFAULT_TARGETS, recipe.get("lora_rank", 64))
        ldrm = LatentDynamicReconstructionModel(model_config.ldrm)
        networks = nn.ModuleDict({"video_dit": video_dit, "ldrm": ldrm})
        weights = checkpoint_weights(checkpoint, use_ema)
        file_backed = () if model_config.video_dit.random_init else ("video_dit.vae.",)
        problems = _mismatch_report(weights, networks.state_dict(), file_backed)
        if problems:
            raise ValueError(
                f"{path} does not fit the model config ({source}): {problems}; pass the model config it was trained "
                "with (--config)"
            )
        networks.load_state_dict(weights, strict=False)
        if vae_tiling and model_config.video_dit.codec == "vae":  # the space-to-depth codec works block by block
            video_dit.vae.enable_tiling()
        flow = recipe.get("flow_matching")
        flow = FlowMatching.from_dict(flow) if isinstance(flow, dict) else None
        return cls(video_dit, ldrm, TextEncoder(**model_config.text), flow, device, dtype, offload_text)

    # ------------------------------------------------------------------------------------------------- checks
    @property
    def size_multiple(self) -> int:
        """Frame height and width must be multiples of this: the VAE's spatial compression times the patch size
        of the DiT and of the LDRM."""
        c = self.ldrm.config
        dit_patch = self.video_dit.backbone.spatial_patch(self.video_dit.transformer)
        return c.spatial_compression * math.lcm(c.latent_patch, dit_patch)

    def check_inputs(self, image: Tensor, c2w: Tensor, K: Tensor) -> Tensor:
        """Validate one generation's inputs (see :meth:`__call__`); returns ``K`` as ``[T, 3, 3]``."""
        check_shape(image, "image", (3, None, None))
        check_finite(image, "image")
        H, W = image.shape[-2:]
        m = self.size_multiple
        if H % m or W % m:
            raise ValueError(f"image: height and width must be multiples of {m} for this model, got {H}x{W}")
        check_shape(c2w, "c2w", (None, 4, 4))
        check_c2w(c2w, "c2w")
        T = c2w.shape[0]
        if (T - 1) % TEMPORAL_STRIDE:
            raise ValueError(
                f"frames: the VAE compresses time {TEMPORAL_STRIDE}x, so the frame count must be "
                f"{TEMPORAL_STRIDE}k + 1 (e.g. 49), got {T}"
            )
        if not torch.allclose(c2w[0].double().cpu(), torch.eye(4, dtype=torch.float64), atol=1e-5):
            raise ValueError(
                "c2w: the first camera must be the identity (the model works in the input image's camera frame); "
                "re-express the trajectory with d4s.geometry.relative_to_first"
            )
        K = check_intrinsics(K, "K").expand(T, 3, 3) if K.dim() == 2 else check_intrinsics(K, "K")
        check_shape(K, "K", (T, 3, 3))
        return K

    # -------------------------------------------------------------------------------------------- generation
    def encode_prompt(self, prompt: str) -> tuple[Tensor, Tensor]:
        """``(text [1, L, D], null [1, L, D])``: the prompt's embedding (the generic prompt when empty, as in
        training) and the unconditional one, on the pipeline's device."""
        if self.offload_text:
            self.text.to(self.device)
        try:
            text = self.text([prompt], self.device).to(self.dtype)
            null = self.text.null(1, self.device).to(self.dtype)
        finally:
            if self.offload_text:
                self.text.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        return text, null

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def __call__(
        self,
        image: Tensor,
        c2w: Tensor,
        K: Tensor,
        prompt: str = "",
        num_steps: int = 30,
        guidance: Guidance | None = PAPER_GUIDANCE,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Generation:
        """Generate the 4D scene seen by ``image`` along the cameras ``c2w``.

        Args:
            image: ``[3, H, W]`` in ``[0, 1]``, the first frame; ``H`` and ``W`` multiples of :attr:`size_multiple`.
            c2w: ``[T, 4, 4]`` camera-to-world poses (OpenCV axes, metres), ``c2w[0]`` the identity, ``T = 4k + 1``.
            K: ``[3, 3]`` or ``[T, 3, 3]`` intrinsics in pixels of the ``H x W`` frames.
            prompt: the caption; empty means the paper's generic prompt (App. C.1), as in training.
            num_steps: Euler steps (30 in the paper). guidance: CFG (Eq. 6, ``gamma_max = 7.5``), ``None`` for none.
            seed: the noise (drawn on the CPU, so a seed gives the same noise on every device) and the VAE's
                posterior sample of the condition image.
            progress: called with ``(step, num_steps)`` after each denoising step.
        """
        K = self.check_inputs(image, c2w, K)
        timer = StageTimer(self.device)
        T, (H, W) = c2w.shape[0], image.shape[-2:]
        c2w, K = c2w.to(self.device, torch.float32), K.to(self.device, torch.float32)
        with timer("text"):
            text, null = self.encode_prompt(prompt)
        with timer("encode"):
            generator = torch.Generator(self.device).manual_seed(seed)
            latent_frames = (T - 1) // TEMPORAL_STRIDE + 1
            plucker = plucker_embedding(c2w, K, H, W)[None]
            condition = self.video_dit.conditioning(
                image[None].to(self.device, self.dtype), plucker.to(self.dtype), text, null, latent_frames, generator
            )
        with timer("sampling"):
            noise = torch.randn(condition.image.shape, generator=torch.Generator().manual_seed(seed))
            latents = self.video_dit.sample(
                noise.to(self.device), condition, num_steps, guidance, self.flow.shift, progress
            )
        return self._to_field(latents, plucker, c2w, K, (H, W), timer)

    def generate(
        self,
        image: Tensor,
        c2w: Tensor,
        K: Tensor,
        prompt: str,
        sampling: SamplingConfig,
        progress: Callable[[int, int], None] | None = None,
    ) -> Generation:
        """:meth:`__call__` with typed sampling settings: the call ``python -m d4s.generate``, the evaluation protocol
        and the demo make."""
        return self(image, c2w, K, prompt, sampling.steps, sampling.guidance_rule(), sampling.seed, progress)

    @torch.no_grad()
    def reconstruct(self, video: Tensor, c2w: Tensor, K: Tensor, seed: int = 0) -> Generation:
        """The LDRM alone on a real video's latents (no sampling): the 4D field of ``video`` seen from ``c2w``.

        It measures the reconstruction model apart from the generator: motion that a single image cannot determine
        (the LDRM reads it from the latents of every frame) and geometry from clean latents.

        Args:
            video: ``[T, 3, H, W]`` in ``[0, 1]``; c2w, K: its cameras, as in :meth:`__call__`.
            seed: the VAE's posterior sample.
        """
        K = self.check_inputs(video[0], c2w, K)
        check_shape(video, "video", (c2w.shape[0], 3, *video.shape[-2:]))
        check_finite(video, "video")
        timer = StageTimer(self.device)
        c2w, K = c2w.to(self.device, torch.float32), K.to(self.device, torch.float32)
        with timer("encode"):
            latents = self.encode_video(video, seed)
            plucker = plucker_embedding(c2w, K, *video.shape[-2:])[None]
        return self._to_field(latents, plucker, c2w, K, tuple(video.shape[-2:]), timer)

    @torch.no_grad()
    def encode_video(self, video: Tensor, seed: int = 0) -> Tensor:
        """A real video ``[T, 3, H, W]`` in ``[0, 1]`` as the generator's latents ``[1, T', C, H/8, W/8]`` (float32;
        ``seed``: the VAE's posterior sample): what the LDRM reads in :meth:`reconstruct`, and what sampled latents
        are compared with."""
        generator = torch.Generator(self.device).manual_seed(seed)
        return self.video_dit.encode(video[None].to(self.device, self.dtype), generator).float()

    @property
    def latent_range(self) -> float | None:
        """The latents' value range when the codec fixes one (the space-to-depth codec), else ``None``."""
        return getattr(self.video_dit.vae, "value_range", None)

    def _to_field(
        self, latents: Tensor, plucker: Tensor, c2w: Tensor, K: Tensor, size: tuple[int, int], timer: StageTimer
    ) -> Generation:
        """The LDRM on ``latents [1, T', C, h, w]`` to every frame time: the float32 field as a :class:`Generation`."""
        T, (H, W) = c2w.shape[0], size
        with timer("ldrm"):
            times = torch.linspace(0.0, 1.0, T, device=self.device)[None]
            with self._autocast():
                output = self.ldrm(latents, plucker, K[None], c2w[None], times)
            values = {f.name: getattr(output, f.name) for f in fields(output)}
            field = LDRMOutput(**{name: None if x is None else x.float() for name, x in values.items()}).fields()[0]
        s = self.ldrm.config.gaussian_stride
        return Generation(field, (T, H // s, W // s), latents[0], timer.seconds)


def thin_field(
    field: DeformableGaussianField, grid: tuple[int, int, int], stride: int = 1, min_opacity: float = 0.0
) -> DeformableGaussianField:
    """Fewer Gaussians for large scenes: keep every ``stride``-th pixel-aligned Gaussian along rows and columns
    (their scales grow by ``stride`` so the thinner field still covers the image; our memory option, not the
    paper's) and drop those with opacity below ``min_opacity``.

    Args:
        field: ``N = T * h * w`` Gaussians ordered frame, row, column (:attr:`Generation.field`).
        grid: ``(T, h, w)`` (:attr:`Generation.grid`).
    """
    T, h, w = grid
    if field.num_gaussians != T * h * w:
        raise ValueError(f"grid: {grid} holds {T * h * w} Gaussians, the field {field.num_gaussians}")
    if stride < 1 or not 0.0 <= min_opacity < 1.0:
        raise ValueError(f"stride must be >= 1 and min_opacity in [0, 1), got {stride} and {min_opacity}")
    keep = torch.zeros(T, h, w, dtype=torch.bool, device=field.canonical.device)
    keep[:, ::stride, ::stride] = True
    keep = keep.flatten() & (field.canonical.opacities >= min_opacity)
    thinned = field.select(keep)
    if stride == 1:
        return thinned
    grown = replace(thinned.canonical, log_scales=thinned.canonical.log_scales + math.log(stride))
    return replace(thinned, canonical=grown)
