"""Flow matching (paper Sec. 3.4, Eq. 2): the straight path from data to noise and its regression target.

Conventions (the paper's, and diffusers' ``FlowMatchEulerDiscreteScheduler``): ``t`` in ``[0, 1]``, ``t = 0`` is
data ``z0``, ``t = 1`` is Gaussian noise ``eps``; ``z_t = (1 - t) z0 + t eps``; the model regresses the velocity
``dz_t/dt = eps - z0``. Sampling integrates from ``t = 1`` down to ``t = 0``.

The video DiT takes this ``t`` and returns this velocity, whatever its transformer was trained to predict: how ``t``
becomes the transformer's timestep, and the output a velocity, is :class:`d4s.models.video_dit.VideoDiT`'s business
(:mod:`d4s.diffusion.ddpm` for a pretrained v-prediction DDPM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from d4s.utils.checks import check_choice

TimestepSampling = Literal["uniform", "logit_normal"]
LossWeighting = Literal["none", "cosmap"]
LEGACY_TIMESTEP_SCALE = 1000  # the fixed ``num_train_timesteps`` older checkpoints store (FlowMatching.from_dict)


def shift_times(t: Tensor, shift: float) -> Tensor:
    """Shift times towards noise: ``shift t / (1 + (shift - 1) t)`` (SD3; diffusers' ``shift``); 1 = unchanged.

    A shift above 1 spends more training and sampling steps at high noise, which large latents need (their
    signal survives more noise).
    """
    return shift * t / (1.0 + (shift - 1.0) * t)


@dataclass(frozen=True)
class FlowMatching:
    """The flow-matching objective of Eq. 2, with configurable timestep sampling and weighting ``w(t)``.

    Args:
        timestep_sampling: ``uniform`` on ``[0, 1]``, or ``logit_normal`` (``sigmoid`` of a normal with
            ``logit_mean``, ``logit_std``: most samples at mid noise, SD3's choice); the paper does not say which.
        shift: applied to the sampled times (:func:`shift_times`); 1 keeps them, 3 is SD3's choice at 1024 px.
        weighting: ``w(t)`` of Eq. 2: ``none`` (1) or ``cosmap`` (``2 / (pi (1 - 2t + 2t^2))``, SD3).
    """

    timestep_sampling: TimestepSampling = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    weighting: LossWeighting = "none"

    def __post_init__(self) -> None:
        check_choice(self.timestep_sampling, "timestep_sampling", TimestepSampling)
        check_choice(self.weighting, "weighting", LossWeighting)
        if not self.shift > 0 or not self.logit_std > 0:
            raise ValueError(f"shift and logit_std must be positive, got {self.shift} and {self.logit_std}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FlowMatching:
        """Build from stored values (a checkpoint's ``recipe.flow_matching``). Older checkpoints store
        ``num_train_timesteps: 1000``, the transformer's timestep scale, which now belongs to the video DiT
        (``video_dit.scheduler``): accepted and dropped at 1000, refused otherwise."""
        values = dict(values)
        scale = values.pop("num_train_timesteps", LEGACY_TIMESTEP_SCALE)
        if scale != LEGACY_TIMESTEP_SCALE:
            raise ValueError(
                f"flow_matching.num_train_timesteps: only {LEGACY_TIMESTEP_SCALE} is accepted (the timestep scale "
                f"is now video_dit.scheduler.num_train_timesteps), got {scale!r}"
            )
        return cls(**values)

    def sample_times(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Training times ``[B]`` in ``(0, 1)``."""
        if self.timestep_sampling == "uniform":
            t = torch.rand(batch_size, generator=generator, device=device)
        else:
            normal = torch.randn(batch_size, generator=generator, device=device)
            t = torch.sigmoid(self.logit_mean + self.logit_std * normal)
        return shift_times(t, self.shift)

    @staticmethod
    def interpolate(z0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``z_t = (1 - t) z0 + t eps`` for data ``z0 [B, ...]``, ``noise [B, ...]`` and times ``t [B]``."""
        t = t.reshape(-1, *([1] * (z0.dim() - 1))).to(z0.dtype)
        return (1.0 - t) * z0 + t * noise

    @staticmethod
    def target(z0: Tensor, noise: Tensor) -> Tensor:
        """The velocity the model regresses: ``eps - z0``."""
        return noise - z0

    def weight(self, t: Tensor) -> Tensor:
        """``w(t) [B]`` of Eq. 2."""
        if self.weighting == "none":
            return torch.ones_like(t)
        return 2.0 / (math.pi * (1.0 - 2.0 * t + 2.0 * t**2))

    def loss(
        self, prediction: Tensor, z0: Tensor, noise: Tensor, t: Tensor, sample_weight: Tensor | None = None
    ) -> Tensor:
        """Eq. 2: ``E[w(t) ||v - (eps - z0)||^2]``, squared error averaged per sample, then over the batch.

        ``sample_weight [B]`` (e.g. ``Batch.weight``: 0 for padding clips) weights the per-sample losses; their
        weighted mean is normalised by ``max(1, sum of weights)``, so an all-padding batch gives 0, not NaN.
        """
        error = (prediction.float() - self.target(z0, noise).float()).pow(2).flatten(1).mean(1)
        per_sample = self.weight(t.float()) * error
        if sample_weight is None:
            return per_sample.mean()
        sample_weight = sample_weight.to(per_sample.dtype)
        return (sample_weight * per_sample).sum() / sample_weight.sum().clamp_min(1.0)
