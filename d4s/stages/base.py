"""The training module shared by the stages: the three of the progressive scheme (paper Sec. 3.4, Appendix C.3)
and the optional video pre-training of stage 0.

One step on a :class:`~d4s.data.Batch` of ``B`` clips of ``T`` frames:

1. encode the clip with the frozen VAE: ``z0 [B, T', 16, h, w]``;
2. flow matching (Eq. 2): noise ``z0`` to time ``t``, predict the velocity with the camera-conditioned DiT from
   the condition image, the Plücker maps and the caption (text and camera dropped together with probability
   ``condition_dropout``, which classifier-free guidance needs);
3. the LDRM reads ``z0`` (``ldrm_input: clean``), the DiT's one-step estimate ``z_t - t v`` (``one_step``, the
   default: the rendering losses then reach the DiT, which is how Sec. 3.4's joint optimisation makes the generated
   latents geometrically consistent) or latents the DiT samples from the first frame in a few guided Euler steps
   (``sampled``: what the LDRM reads at inference, without gradient) and predicts pixel-aligned Gaussians plus their
   deformation to ``V`` target times: frame 0 (the input image's time) and ``V - 1`` other frames of the clip;
4. render each target frame from its camera at its time, and add the photometric (Eq. 3), geometric (Eq. 4 + TV)
   and, in the dynamic stage, motion (Eq. 5) losses.

Which parts train is configuration: ``stage`` (:class:`~d4s.stages.objective.StageConfig`: whether the LDRM
reconstructs, whether the deformation head trains), ``recipe.dit`` and the loss weights, which
:mod:`d4s.stages.objective` checks against each other and turns into the loss; a stage that does not reconstruct
(``configs/tiny/stage0.yaml``) stops after step 2. A step
whose loss is not finite on any rank is skipped on every rank (no parameter update) and counted; too many in a row
stop the run. Frozen pretrained weights loaded from disk (T5, the VAE) are left out of checkpoints and restored
from their files.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.tensor import DTensor

from d4s.data.batch import Batch
from d4s.diffusion.flow_matching import FlowMatching
from d4s.diffusion.sampler import Guidance
from d4s.gaussians.field import DeformableGaussianField
from d4s.losses import lpips_distance, track_motion
from d4s.models.config import ModelConfig
from d4s.models.ldrm import LatentDynamicReconstructionModel, LDRMOutput
from d4s.models.lora import DEFAULT_TARGETS, add_lora, lora_parameters
from d4s.models.perceptual import LPIPS
from d4s.models.text import TextEncoder
from d4s.models.video_dit import Conditioning, VideoDiT
from d4s.pipeline import checkpoint_recipe, checkpoint_weights
from d4s.render import Backend, render
from d4s.stages.ema import ParameterEMA
from d4s.stages.objective import (
    LossWeights,
    RenderedViews,
    StageConfig,
    TrackedMotion,
    reconstruction_terms,
    total_loss,
    usable_terms,
)
from d4s.stages.sharding import ShardedStrategy, is_sharded, shard_networks
from d4s.stages.visuals import comparison_grid, comparison_rows, log_video
from d4s.utils.checks import check_choice

DiTTraining = Literal["full", "camera", "lora", "frozen"]
LDRMInput = Literal["one_step", "clean", "sampled"]
MotionFrames = Literal["targets", "all"]


@dataclass
class LPIPSConfig:
    """The LPIPS network of Eq. 3 (:class:`d4s.models.perceptual.LPIPS`): backbone weights from a local file;
    ``random_backbone: true`` builds a random one (tests and tiny CPU runs only)."""

    net: str = "vgg"
    backbone_path: str | None = "weights/lpips/vgg16-397923af.pth"
    random_backbone: bool = False


@dataclass
class OptimizerConfig:
    """AdamW with learning rate 1e-5 and weight decay 1e-4, cosine schedule (Sec. 4.1). The warm-up length and
    the final learning rate (``min_lr_ratio`` x ``lr``) are not in the paper: our choices. The schedule is
    ``schedule_steps`` long and this stage starts ``schedule_start`` steps into it: one cosine over the paper's 100K
    iterations continued across the stages (``configs/stage{1,2,3}.yaml``: starts 0, 40000, 80000 of 100000), or,
    with ``schedule_steps`` unset, a warm-up and a cosine restarted in each stage over its ``max_steps``.
    ``fused``: PyTorch's fused AdamW kernel (CPU and CUDA), the same update in one pass over the weights (on the
    tiny DiT 3.8 times faster than the per-tensor loop, ``bench/components.py``); ``None``: fused unless the trainer
    runs mixed precision, where Lightning refuses gradient clipping with a fused optimiser (then the multi-tensor
    ``foreach`` loop)."""

    lr: float = 1e-5
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0
    fused: bool | None = None
    schedule_start: int = 0
    schedule_steps: int | None = None

    def __post_init__(self) -> None:
        if self.schedule_start < 0:
            raise ValueError(f"optimizer.schedule_start: expected >= 0, got {self.schedule_start}")
        if self.schedule_steps is not None and self.schedule_steps <= self.schedule_start:
            raise ValueError(
                f"optimizer.schedule_steps: expected more than schedule_start {self.schedule_start}, got "
                f"{self.schedule_steps}"
            )


@dataclass
class Recipe:
    """How a step is built; the paper is silent on all of it, so each default is our reading (see the module
    docstring and ``configs/README.md``).

    ``dit``: which part of the video DiT trains: ``full`` (default: Sec. 3.4 fine-tunes the whole model),
    ``camera`` (the Plücker adapter only), ``lora`` (adapter + LoRA of rank ``lora_rank`` on the attention
    projections) or ``frozen`` (no flow-matching loss then, unless ``ldrm_input`` needs the DiT's estimate).
    ``ldrm_input``: ``one_step``, ``clean`` or ``sampled`` (see the module docstring; ``sampled`` runs
    ``ldrm_sample_steps`` Euler steps with the paper's guidance, :class:`~d4s.diffusion.Guidance`, on the flow
    shift of ``flow_matching``; inference takes 30). ``condition_dropout``: probability of
    dropping text and camera together (for guidance). ``num_target_views``: rendered frames per clip (frame 0 plus
    random others in training, evenly spaced frames in validation). ``background``: colour behind the Gaussians.
    ``motion_frames``: the times at which the motion loss (Eq. 5) supervises the deformation: ``targets`` (the
    rendered frames: the head runs at ``num_target_views`` times only) or ``all`` (every frame of the clip, rendered
    or not: more supervision per step for a head that costs ``T / num_target_views`` times more; the paper does not
    say). ``ema_decay``: keep an EMA of the trainable weights (validation then uses it). ``max_nonfinite_in_a_row``:
    skipped steps tolerated in a row. ``images_every_n_steps``: TensorBoard image grids (0 = never); validation
    also logs a video of its first clip. ``seed``: the step randomness is drawn from ``(seed, step, rank)``, so a
    resumed run continues exactly as an uninterrupted one.
    """

    dit: DiTTraining = "full"
    lora_rank: int = 64
    ldrm_input: LDRMInput = "one_step"
    ldrm_sample_steps: int = 4
    condition_dropout: float = 0.1
    flow_matching: FlowMatching = field(default_factory=FlowMatching)
    num_target_views: int = 4
    motion_frames: MotionFrames = "targets"
    render_backend: Backend = "auto"
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    ema_decay: float | None = None
    max_nonfinite_in_a_row: int = 20
    images_every_n_steps: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.flow_matching, dict):
            self.flow_matching = FlowMatching.from_dict(self.flow_matching)
        check_choice(self.dit, "recipe.dit", DiTTraining)
        check_choice(self.ldrm_input, "recipe.ldrm_input", LDRMInput)
        check_choice(self.motion_frames, "recipe.motion_frames", MotionFrames)
        check_choice(self.render_backend, "recipe.render_backend", Backend)
        if self.ldrm_sample_steps < 1:
            raise ValueError(f"recipe.ldrm_sample_steps: expected >= 1, got {self.ldrm_sample_steps}")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(
                f"recipe.condition_dropout: expected a probability in [0, 1), got {self.condition_dropout}"
            )
        if self.num_target_views < 1:
            raise ValueError(f"recipe.num_target_views: expected >= 1, got {self.num_target_views}")


class Diff4SplatModule(L.LightningModule):
    """Video DiT + LDRM + losses; what trains is ``stage`` (the named stages are its presets).

    Args:
        model_config: a model YAML (``configs/model/paper.yaml``, :class:`d4s.models.config.ModelConfig`).
        stage: :class:`~d4s.stages.objective.StageConfig` (default: the class's ``default_stage``).
        losses: :class:`~d4s.stages.objective.LossWeights`. lpips: :class:`LPIPSConfig`. optimizer:
            :class:`OptimizerConfig`. recipe: :class:`Recipe`.
        init_from: a checkpoint whose weights (not its optimiser or step) start this stage; the previous stage's
            hand-off. ``--ckpt_path`` instead resumes a run exactly.
    """

    #: what trains when the config gives no ``stage``: everything (the dynamic stage); the named stages override it
    default_stage: StageConfig = StageConfig()

    def __init__(
        self,
        model_config: str = "configs/model/paper.yaml",
        stage: StageConfig | None = None,
        losses: LossWeights | None = None,
        lpips: LPIPSConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        recipe: Recipe | None = None,
        init_from: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.stage = self.default_stage if stage is None else _config(StageConfig, stage)
        self.recipe, self.optim = _config(Recipe, recipe), _config(OptimizerConfig, optimizer)
        usable = usable_terms(self.stage, dit_trains=self.recipe.dit != "frozen")
        self.losses = _config(LossWeights, losses).resolved(usable, type(self).__name__)
        self.init_from = init_from
        self.model_config = ModelConfig.from_yaml(model_config)
        self.video_dit = VideoDiT.from_config(self.model_config.video_dit)
        self.ldrm = LatentDynamicReconstructionModel(self.model_config.ldrm)
        self.text = TextEncoder(**self.model_config.text)
        lpips = _config(LPIPSConfig, lpips)
        self.lpips = None
        if self.losses.lpips:  # no LPIPS network (nor its weight file) when nothing uses it
            self.lpips = LPIPS(lpips.net, lpips.backbone_path, random_backbone=lpips.random_backbone)
        self._set_trainable()
        self.ema = ParameterEMA(self.networks, self.recipe.ema_decay) if self.recipe.ema_decay else None
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self._step_started: float | None = None
        self._step_skipped = False

    # ----------------------------------------------------------------------------------------------- structure
    @property
    def networks(self) -> nn.ModuleDict:
        """The trained networks (what the EMA and the optimiser see)."""
        return nn.ModuleDict({"video_dit": self.video_dit, "ldrm": self.ldrm})

    def _set_trainable(self) -> None:
        if not self.stage.reconstruct and self.recipe.dit == "frozen":
            raise ValueError(f"{type(self).__name__} trains the video DiT alone: recipe.dit cannot be frozen")
        self.requires_grad_(False)
        self.ldrm.requires_grad_(self.stage.reconstruct)
        if not self.stage.deformation:
            self.ldrm.deformation_head.requires_grad_(False)
        dit = self.recipe.dit
        if dit == "full":
            self.video_dit.transformer.requires_grad_(True)
        if dit == "lora":
            add_lora(self.video_dit.transformer, DEFAULT_TARGETS, self.recipe.lora_rank)
            for parameter in lora_parameters(self.video_dit.transformer):
                parameter.requires_grad_(True)
        if dit in ("full", "camera", "lora"):
            self.video_dit.plucker.requires_grad_(True)
            self.video_dit.camera_adapter.requires_grad_(True)
        self.video_dit.vae.requires_grad_(False)

    def _frozen_pretrained_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of frozen weights that come from files (left out of checkpoints)."""
        prefixes = ["text."]
        if not self.model_config.video_dit.random_init:
            prefixes.append("video_dit.vae.")
        return tuple(prefixes)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(self._frozen_pretrained_prefixes())]:
            del state[key]
        checkpoint["d4s_model_config"] = asdict(self.model_config)
        hyper = checkpoint.get("hyper_parameters", {})  # plain values: checkpoints load with weights_only=True
        checkpoint["hyper_parameters"] = {k: asdict(v) if is_dataclass(v) else v for k, v in hyper.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put this module's frozen weights read from files back into a checkpoint that left them out, for the strict
        load that follows; a sharded strategy (:class:`~d4s.stages.sharding.ShardedStrategy`) has loaded the weights
        itself by now and passes the checkpoint without them."""
        if "state_dict" not in checkpoint:
            return
        own = self.state_dict()
        prefixes = self._frozen_pretrained_prefixes()
        checkpoint["state_dict"].update({k: v for k, v in own.items() if k.startswith(prefixes)})

    def load_init(self, path: str | Path) -> None:
        """Load the weights of a previous stage's checkpoint (not its optimiser, schedule or step); where that stage
        kept an EMA of its weights (``recipe.ema_decay``), the averages, the weights it validated and sampled with."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"init_from: checkpoint {path} not found")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        self._check_frozen_dit_shift(checkpoint, path)
        state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(("ema.", "lpips."))}
        state.update(checkpoint_weights(checkpoint, use_ema=True))
        if is_sharded(self):  # each rank keeps its shard of the whole weights
            result = set_model_state_dict(self, state, options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            result = self.load_state_dict(state, strict=False)
        kept = self._frozen_pretrained_prefixes() + ("lpips.", "ema.")  # this module's own: from files, or its EMA
        missing = [k for k in result.missing_keys if not k.startswith(kept)]
        if missing or result.unexpected_keys:
            raise _misfit("init_from", path, missing, result.unexpected_keys)
        if self.ema is not None:
            self.ema = ParameterEMA(self.networks, self.recipe.ema_decay).to(self.device)

    def check_checkpoint_keys(self, keys: Iterable[str], path: Path) -> None:
        """``ValueError`` unless a checkpoint whose state dict holds ``keys`` is one of this module: every key of its
        own state dict but the frozen weights read from files (:meth:`on_save_checkpoint` leaves those out)."""
        expected = {k for k in self.state_dict() if not k.startswith(self._frozen_pretrained_prefixes())}
        keys = set(keys)
        if keys != expected:
            raise _misfit("--ckpt_path", path, sorted(expected - keys), sorted(keys - expected))

    def _check_frozen_dit_shift(self, checkpoint: dict[str, Any], path: Path) -> None:
        """A frozen DiT keeps the flow time shift it was trained with: the sampled LDRM input and the pipeline (which
        reads the last stage's recipe) sample with ``recipe.flow_matching.shift``, so a stage config that states
        another one than its ``init_from`` checkpoint is an error, not a silent change."""
        stored = checkpoint_recipe(checkpoint).get("flow_matching") or {}
        trained = stored.get("shift")
        ours = self.recipe.flow_matching.shift
        if self.recipe.dit == "frozen" and trained is not None and trained != ours:
            raise ValueError(
                f"recipe.flow_matching.shift: {ours} here, but the frozen DiT of init_from {path} was trained with "
                f"{trained}; set it to {trained} (a frozen DiT samples with the shift it learned)"
            )

    # ------------------------------------------------------------------------------------------------ the step
    def step_generator(self, stream: int) -> torch.Generator:
        """Randomness of one step, a function of ``(seed, global step, rank, stream)`` only."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(stable_seed(self.recipe.seed, self.global_step, self.global_rank, stream))
        return generator

    def target_frames(self, batch_size: int, num_frames: int, generator: torch.Generator | None) -> Tensor:
        """``[B, V]`` frame indices to render, sorted: frame 0 plus ``V - 1`` random distinct other frames
        (``generator`` given), or ``V`` evenly spaced frames from first to last (``None``: validation)."""
        V = min(self.recipe.num_target_views, num_frames)
        if generator is None:
            frames = torch.linspace(0, num_frames - 1, V, device=self.device).round().long()
            return frames.expand(batch_size, V)
        scores = torch.rand(batch_size, num_frames - 1, generator=generator, device=self.device)
        others = scores.argsort(dim=1)[:, : V - 1] + 1
        first = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        return torch.cat([first, others], dim=1).sort(dim=1).values

    def flow_matching_step(
        self, batch: Batch, z0: Tensor, generator: torch.Generator | None, drop_conditions: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Eq. 2 on the clip: ``(loss, z_t, t [B], velocity)``. Text and camera are dropped together with probability
        ``recipe.condition_dropout`` when ``drop_conditions``; the DiT keeps its gradient unless ``recipe.dit`` is
        frozen (then ``loss`` is computed but trains nothing)."""
        B = z0.shape[0]
        fm = self.recipe.flow_matching
        drop = torch.rand(B, generator=generator, device=self.device) < self.recipe.condition_dropout
        drop &= drop_conditions
        t = fm.sample_times(B, generator, self.device)
        noise = torch.randn(z0.shape, generator=generator, device=self.device, dtype=z0.dtype)
        noisy = fm.interpolate(z0, noise, t)
        condition = self.conditioning(batch, z0.shape[1], generator).dropped(drop)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.recipe.dit != "frozen"):
            velocity = self.video_dit(noisy, condition.image, condition.camera, condition.text, t)
        return fm.loss(velocity, z0, noise, t, batch.weight), noisy, t, velocity

    def conditioning(self, batch: Batch, latent_frames: int, generator: torch.Generator | None) -> Conditioning:
        """The DiT's :class:`~d4s.models.video_dit.Conditioning` for ``batch``: its first frames (``latent_frames``
        long, the VAE's posterior sampled with ``generator``), cameras and captions."""
        text, null = self.text(batch.captions, self.device), self.text.null(len(batch), self.device)
        return self.video_dit.conditioning(batch.condition_image, batch.plucker, text, null, latent_frames, generator)

    @torch.no_grad()
    def sampled_latents(self, batch: Batch, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        """Latents ``shape`` (``[B, T', C, h, w]``) the DiT samples from the clip's first frame, cameras and caption
        in ``recipe.ldrm_sample_steps`` Euler steps with the paper's guidance (``ldrm_input: sampled``)."""
        condition = self.conditioning(batch, shape[1], generator)
        noise = torch.randn(shape, generator=generator, device=self.device)
        steps, shift = self.recipe.ldrm_sample_steps, self.recipe.flow_matching.shift
        return self.video_dit.sample(noise, condition, steps, Guidance(), shift).to(condition.image.dtype)

    def reconstruct(
        self, batch: Batch, frames: Tensor, generator: torch.Generator | None, train: bool
    ) -> tuple[LDRMOutput, dict[str, Tensor]]:
        """Gaussians of the clip and their deformation to ``frames [B, V]``; returns ``(output, terms)`` with the
        flow-matching loss in ``terms`` when the DiT trains. Without ``train`` the LDRM reads clean latents."""
        terms: dict[str, Tensor] = {}
        T = batch.video.shape[1]
        z0 = self.video_dit.encode(batch.video, generator)
        latents = z0
        if train and (self.recipe.dit != "frozen" or self.recipe.ldrm_input == "one_step"):
            loss, noisy, t, velocity = self.flow_matching_step(batch, z0, generator, drop_conditions=True)
            if self.recipe.dit != "frozen":
                terms["flow_matching"] = loss
            if self.recipe.ldrm_input == "one_step":
                latents = noisy - t.reshape(-1, 1, 1, 1, 1).to(noisy.dtype) * velocity
        if train and self.recipe.ldrm_input == "sampled":
            latents = self.sampled_latents(batch, z0.shape, generator)
        times = frames.float() / max(T - 1, 1) if self.stage.deformation else None  # frozen head: the identity
        return self.ldrm(latents, batch.plucker, batch.K, batch.c2w, times), terms

    def render_frames(
        self, output: LDRMOutput, batch: Batch, frames: Tensor, slots: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | None:
        """Render ``frames [B, V]`` (camera and time of each): ``(rgb [B, V, 3, H, W], depth [B, V, H, W])``, in
        float32 outside autocast; ``None`` when the predicted Gaussians are not finite. ``slots [B, V]``: where each
        frame's deformation lies on ``output``'s time axis (default: ``output`` was deformed to ``frames``)."""
        H, W = batch.video.shape[-2:]
        background = torch.tensor(self.recipe.background, device=self.device)
        rgbs, depths = [], []
        with torch.autocast(self.device.type, enabled=False):
            for b in range(frames.shape[0]):
                canonical = output.canonical(b).map(lambda x: x.float())
                if not all(torch.isfinite(x).all() for x in canonical.tensors().values()):
                    return None
                c2w, K = batch.c2w[b, frames[b]].float(), batch.K[b, frames[b]].float()
                if output.dmu is None:
                    views = [render(canonical, c2w, K, W, H, self.recipe.render_backend, background)]
                else:
                    deformations = [x[b].float() for x in (output.dmu, output.dq, output.ds)]
                    if not all(torch.isfinite(x).all() for x in deformations):
                        return None
                    scene = DeformableGaussianField(canonical, *deformations)
                    views = [
                        render(
                            scene.at(v if slots is None else int(slots[b, v])),
                            c2w[v : v + 1],
                            K[v : v + 1],
                            W,
                            H,
                            self.recipe.render_backend,
                            background,
                        )
                        for v in range(frames.shape[1])
                    ]
                rgbs.append(torch.cat([view.rgb for view in views]).permute(0, 3, 1, 2))
                depths.append(torch.cat([view.depth for view in views]))
        return torch.stack(rgbs), torch.stack(depths)

    def compute_losses(self, batch: Batch, train: bool) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every loss term (scalars) and the pictures behind them; the total is ``terms["loss"]`` (NaN when the
        predicted Gaussians are not finite)."""
        batch = batch.prepare()
        generator = self.step_generator(0) if train else self.step_generator_for_validation(batch)
        if not self.stage.reconstruct:
            z0 = self.video_dit.encode(batch.video, generator)
            terms = {"flow_matching": self.flow_matching_step(batch, z0, generator, drop_conditions=train)[0]}
            return terms | {"loss": total_loss(terms, self.losses)}, {}
        B, T = batch.video.shape[:2]
        frames = self.target_frames(B, T, generator if train else None)
        trains_motion = bool(self.losses.motion or self.losses.motion_magnitude)
        deformed, slots = frames, None  # the times the LDRM deforms to; where each rendered frame is among them
        if trains_motion and self.recipe.motion_frames == "all":
            deformed, slots = torch.arange(T, device=self.device).expand(B, T), frames
        output, terms = self.reconstruct(batch, deformed, generator, train)
        rendered = self.render_frames(output, batch, frames, slots)
        if rendered is None:
            nan = torch.full((), float("nan"), device=self.device)
            return {"loss": nan}, {}
        rgb, depth = rendered
        index = frames[:, :, None, None, None].expand(-1, -1, *batch.video.shape[2:])
        rgb_gt = batch.video.gather(1, index).float()
        depth_gt = batch.depth.gather(1, frames[:, :, None, None].expand(-1, -1, *batch.depth.shape[2:]))
        motion = None
        if trains_motion and output.dmu is not None:
            s = self.ldrm.config.gaussian_stride
            motion = TrackedMotion(
                *track_motion(
                    output.dmu,
                    (batch.video.shape[-2] // s, batch.video.shape[-1] // s),
                    batch.track_xyz,
                    batch.track_visible,
                    batch.track_valid,
                    batch.c2w,
                    batch.K,
                    tuple(batch.video.shape[-2:]),
                    deformed,
                    generator,
                )
            )
        perceptual = None if self.lpips is None else lambda x, y: lpips_distance(self.lpips, x, y)
        views = RenderedViews(rgb, rgb_gt, depth, depth_gt)
        terms |= reconstruction_terms(
            views, self.losses, batch.weight.to(self.device), batch.has_depth, batch.has_tracks, motion, perceptual
        )
        terms["loss"] = total_loss(terms, self.losses)
        return terms, {"rgb": rgb, "rgb_gt": rgb_gt, "depth": depth, "depth_gt": depth_gt, "frames": frames}

    def step_generator_for_validation(self, batch: Batch) -> torch.Generator:
        """Validation randomness (the VAE's posterior sample) fixed per clip, whatever the training step."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(stable_seed(self.recipe.seed, "val", batch.keys))
        return generator

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        terms, pictures = self.compute_losses(batch, train=True)
        loss = terms["loss"]
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        self._step_skipped = not finite
        if not finite:
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            self.log("train/nonfinite_steps", float(self.nonfinite_total), rank_zero_only=True)
            if self.nonfinite_in_a_row > self.recipe.max_nonfinite_in_a_row:
                raise RuntimeError(
                    f"{self.nonfinite_in_a_row} training steps in a row had a non-finite loss (last at step "
                    f"{self.global_step}, clips {batch.keys}); stopping. Lower the learning rate, check the data, or "
                    "resume from an earlier checkpoint"
                )
            return None  # every rank skips: no backward, no parameter update
        self.nonfinite_in_a_row = 0
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=len(batch), sync_dist=False)
        every = self.recipe.images_every_n_steps
        if every and pictures and self.global_step % every == 0 and self.global_rank == 0:
            self._log_images("train/views", pictures)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        terms, pictures = self.compute_losses(batch, train=False)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=len(batch), sync_dist=True)
        if batch_idx == 0 and pictures:
            if self.global_rank == 0:
                self._log_images("val/views", pictures)
            if self.global_rank == 0 or is_sharded(self):  # sharded networks compute on every rank together
                self._log_clip_video(batch.prepare())

    def on_validation_epoch_start(self) -> None:
        if self.ema is not None:
            self._ema_context = self.ema.swapped_in(self.networks)
            self._ema_context.__enter__()

    def on_validation_epoch_end(self) -> None:
        if self.ema is not None:
            self._ema_context.__exit__(None, None, None)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser step, then the EMA update (here, so a checkpoint written after this batch includes it)."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None and not self._step_skipped:
            self.ema.update(self.networks)

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if self._step_started is not None:
            seconds = time.perf_counter() - self._step_started
            samples = len(batch) * self.trainer.world_size
            self.log("perf/samples_per_s", samples / seconds, rank_zero_only=True)
        if self.device.type == "cuda":
            self.log("perf/gpu_memory_gib", torch.cuda.max_memory_allocated(self.device) / 2**30, rank_zero_only=True)
        datamodule = getattr(self.trainer, "datamodule", None)
        skipped = getattr(datamodule, "skipped", None)
        if skipped is not None:
            self.log("data/skipped_samples", float(sum(skipped.values())), rank_zero_only=True)

    # ------------------------------------------------------------------------------------------------ pictures
    def _writer(self):
        experiment = getattr(self.logger, "experiment", None)
        return experiment if hasattr(experiment, "add_image") else None

    def _log_images(self, tag: str, pictures: dict[str, Tensor]) -> None:
        writer = self._writer()
        if writer is None:
            return
        grid = comparison_grid(pictures["rgb"][0], pictures["rgb_gt"][0], pictures["depth"][0], pictures["depth_gt"][0])
        writer.add_image(tag, grid, self.global_step)

    @torch.no_grad()
    def _log_clip_video(self, batch: Batch) -> None:
        """Every frame of the first validation clip, rendered at its camera and time, beside the ground truth."""
        writer = self._writer()
        if writer is None:
            return
        first = batch.take(1)
        T = first.video.shape[1]
        frames = torch.arange(T, device=self.device)[None].expand(len(first), T)
        output, _ = self.reconstruct(first, frames, self.step_generator_for_validation(first), train=False)
        rendered = self.render_frames(output, first, frames)
        if rendered is None:
            return
        if self.global_rank == 0:
            rgb, depth = rendered
            rows = comparison_rows(rgb[0], first.video[0].float(), depth[0], first.depth[0])
            log_video(writer, "val/video", rows, self.global_step)

    # ------------------------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        parameters = [p for p in self.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError(f"{type(self).__name__}: nothing to train (check recipe.dit and the stage)")
        o = self.optim
        optimizer = adamw(parameters, o, mixed_precision=str(self.trainer.precision).endswith("mixed"))
        stage_steps = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        total = o.schedule_steps or o.schedule_start + int(stage_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(o.schedule_start + step, o.warmup_steps, total, o.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def setup(self, stage: str) -> None:
        if self.ema is not None and isinstance(self.trainer.strategy, ShardedStrategy):
            raise ValueError(
                "recipe.ema_decay: the EMA of weights is not available under the sharded strategy; use DDP or no EMA"
            )

    def configure_model(self) -> None:
        """Under :class:`~d4s.stages.sharding.ShardedStrategy` (which gives the module a device mesh), shard the
        networks: each transformer block of the DiT, the LDRM and T5 is a unit, then the rest of each network. Every
        trained weight must end up sharded (an unsharded one would not be averaged across ranks)."""
        mesh = self.device_mesh
        if mesh is None or is_sharded(self):
            return
        units = [*self.video_dit.backbone.blocks(self.video_dit.transformer), *self.ldrm.blocks]
        networks: list[nn.Module] = [self.video_dit.transformer, self.video_dit.plucker, self.ldrm]
        if self.text.encoder is not None:
            units += list(self.text.encoder.encoder.block)
            networks.append(self.text.encoder)
        strategy = self.trainer.strategy
        shard_networks(units, networks, mesh["data_parallel"], strategy.reshard_after_forward)
        whole = [name for name, p in self.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
        if whole:
            raise ValueError(f"{type(self).__name__}: trained weights outside the sharded networks: {whole[:4]}")

    def on_fit_start(self) -> None:
        """Load ``init_from`` (unless resuming with ``--ckpt_path``) and check the frozen head is the identity."""
        if self.trainer.ckpt_path is None:
            if self.init_from is not None:
                self.load_init(self.init_from)
            elif self.stage.expects_init:
                warnings.warn(
                    f"{type(self).__name__}: no init_from checkpoint, so this stage starts from scratch instead of "
                    "from the previous stage's weights (Sec. 3.4)",
                    stacklevel=2,
                )
        if not self.stage.deformation and not self.ldrm.deformation_head.is_identity():
            raise ValueError(
                f"{type(self).__name__}: the deformation head is frozen in this stage, so it must be the identity "
                "(its initial state), but the loaded weights hold a trained one; static stages render static scenes"
            )


def _misfit(what: str, path: Path, missing: list[str], unexpected: list[str]) -> ValueError:
    return ValueError(
        f"{what} {path}: does not fit this model (missing {missing[:4]}, unexpected {unexpected[:4]}); was it "
        "trained with another model_config or recipe.dit?"
    )


def _config(cls, value):
    """``value`` as a ``cls`` dataclass: as given, from a dict (a checkpoint's hyper-parameters), or the defaults."""
    if value is None:
        return cls()
    return cls(**value) if isinstance(value, dict) else value


def adamw(parameters: list[nn.Parameter], config: OptimizerConfig, mixed_precision: bool) -> torch.optim.AdamW:
    """AdamW of ``config`` over ``parameters``, fused unless ``config.fused`` says otherwise (see OptimizerConfig)."""
    fused = config.fused if config.fused is not None else not mixed_precision
    kernel = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas, **kernel)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate factor: linear warm-up over ``warmup_steps``, then cosine from 1 to ``min_ratio`` at
    ``total_steps`` (constant ``min_ratio`` after)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def stable_seed(*parts: Any) -> int:
    """A seed from ``parts`` that is the same in every process (Python's ``hash`` of strings is not)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1
