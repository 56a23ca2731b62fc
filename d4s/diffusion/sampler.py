"""Sampling: an Euler ODE solver for flow matching with classifier-free guidance on the cosine schedule (App. C.1).

The velocity field is integrated from noise (``t = 1``) to data (``t = 0``) over ``N`` steps (30 by default, as the
paper). Guidance mixes a conditional velocity (text and camera) with an unconditional one (null text, zero Plücker
maps): ``v = v_u + gamma (v_c - v_u)``. The paper's Eq. 6 sets ``gamma`` per step:

    gamma(i) = 1 + gamma_max * (1 - cos(pi * ((N - i) / N) ** p)) / 2

with ``i`` the step index counted from the first (noisiest) step, so guidance is strongest at the start
(``1 + gamma_max``) and fades to almost none at the end, which the paper uses against over-sharpened final frames.
The equation leaves the exponent and the meaning of ``t`` open; we follow the original CogVideoX code (step index,
``p = 5``) and make both configurable (``exponent``; ``direction="increasing"`` reverses the schedule).

The unconditional branch drops text and camera together, so training must drop both jointly now and then
(classifier-free training, e.g. 10% of steps), or that branch is out of distribution and guidance amplifies it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from d4s.diffusion.flow_matching import shift_times
from d4s.utils.checks import check_choice

GuidanceSchedule = Literal["cosine", "constant"]
GuidanceDirection = Literal["decreasing", "increasing"]


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: ``schedule`` ``cosine`` (Eq. 6) or ``constant`` (``1 + max_scale`` every step).

    ``max_scale`` is Eq. 6's ``gamma_max`` (7.5 in the paper); 0 turns guidance off (one model pass per step).
    ``skip_below``: a step whose ``gamma - 1`` is below it runs the conditional pass alone. Eq. 6 decays to 1: with
    30 steps, ``gamma - 1 < 1e-3`` over the last 11, where guidance would move the velocity by less than 0.1% of
    the conditional-unconditional difference, so the default saves 11 of 60 DiT passes (our choice; 0 keeps every
    unconditional pass whose scale is not exactly 1).
    """

    max_scale: float = 7.5
    schedule: GuidanceSchedule = "cosine"
    exponent: float = 5.0
    direction: GuidanceDirection = "decreasing"
    skip_below: float = 1e-3

    def __post_init__(self) -> None:
        check_choice(self.schedule, "schedule", GuidanceSchedule)
        check_choice(self.direction, "direction", GuidanceDirection)
        if self.max_scale < 0 or not self.exponent > 0:
            raise ValueError(f"max_scale must be >= 0 and exponent > 0, got {self.max_scale} and {self.exponent}")
        if not self.skip_below >= 0:
            raise ValueError(f"skip_below must be >= 0, got {self.skip_below}")

    def scale(self, step: int, num_steps: int) -> float:
        """``gamma`` at step ``step`` (0 = the first, noisiest step) of ``num_steps`` (Eq. 6)."""
        if self.schedule == "constant":
            return 1.0 + self.max_scale
        i = step if self.direction == "decreasing" else num_steps - 1 - step
        return 1.0 + self.max_scale * (1.0 - math.cos(math.pi * ((num_steps - i) / num_steps) ** self.exponent)) / 2.0

    def guided(self, step: int, num_steps: int) -> bool:
        """Whether step ``step`` of ``num_steps`` runs the unconditional pass (``gamma - 1 >= skip_below``, > 0)."""
        excess = self.scale(step, num_steps) - 1.0
        return excess > 0 and excess >= self.skip_below


@dataclass(frozen=True)
class SamplingConfig:
    """How the video latents are sampled (App. C.1): ``steps`` Euler steps (30 in the paper), classifier-free
    guidance of maximum scale ``guidance`` (Eq. 6's ``gamma_max`` = 7.5; 0: none) on ``guidance_schedule``
    (``cosine``: Eq. 6; ``constant``), whose unconditional pass is skipped where ``gamma - 1`` is below
    ``guidance_skip_below`` (:class:`Guidance`), and the noise ``seed``."""

    steps: int = 30
    guidance: float = 7.5
    guidance_schedule: GuidanceSchedule = "cosine"
    guidance_skip_below: float = Guidance.skip_below
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")
        for name in ("guidance", "guidance_skip_below"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        check_choice(self.guidance_schedule, "guidance_schedule", GuidanceSchedule)

    def guidance_rule(self) -> Guidance | None:
        """The :class:`Guidance` these settings describe, ``None`` without guidance."""
        if self.guidance == 0:
            return None
        return Guidance(self.guidance, self.guidance_schedule, skip_below=self.guidance_skip_below)


def time_grid(num_steps: int, shift: float = 1.0, device=None) -> Tensor:
    """``num_steps + 1`` times from 1 (noise) down to 0 (data), uniform in the unshifted time, then shifted."""
    if num_steps < 1:
        raise ValueError(f"num_steps: must be >= 1, got {num_steps}")
    return shift_times(torch.linspace(1.0, 0.0, num_steps + 1, device=device, dtype=torch.float64), shift)


Velocity = Callable[[Tensor, Tensor, bool], Tensor]
VelocityPair = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@torch.no_grad()
def euler_sample(
    velocity: Velocity,
    noise: Tensor,
    num_steps: int = 30,
    guidance: Guidance | None = None,
    shift: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    velocity_pair: VelocityPair | None = None,
) -> Tensor:
    """Integrate ``dz/dt = v(z, t)`` from ``z(1) = noise [B, ...]`` to ``t = 0`` with Euler steps.

    Args:
        velocity: ``velocity(z_t, t [B], conditional)`` -> ``[B, ...]``: the model's velocity with its
            conditions (``conditional=True``) or without the guided ones (text and camera, ``False``).
        noise: the starting latents.
        num_steps: Euler steps (30 in the paper).
        guidance: classifier-free guidance, or ``None`` for the conditional velocity alone. Steps whose scale is
            within ``guidance.skip_below`` of 1 skip the unconditional pass (:meth:`Guidance.guided`).
        shift: time shift of the grid (:func:`time_grid`), as used in training.
        progress: called with ``(step, num_steps)`` after each step.
        velocity_pair: ``velocity_pair(z_t, t [B])`` -> ``(conditional, unconditional)``, both in one call (one
            batch of ``2B``, as diffusers' pipelines run guidance: fewer, larger passes); used on guided steps
            when given, and must equal the two calls of ``velocity``.
    Returns:
        the latents at ``t = 0``, ``[B, ...]``, in ``noise``'s dtype.
    """
    times = time_grid(num_steps, shift, device=noise.device)
    time_dtype = torch.promote_types(noise.dtype, torch.float32)  # at least float32: bf16 rounds t * 1000 to 4s
    z = noise.clone()
    for step in range(num_steps):
        t = times[step].to(time_dtype).expand(noise.shape[0])
        if guidance is not None and guidance.guided(step, num_steps):
            if velocity_pair is not None:
                v, v_uncond = velocity_pair(z, t)
            else:
                v, v_uncond = velocity(z, t, True), velocity(z, t, False)
            v = v_uncond + guidance.scale(step, num_steps) * (v - v_uncond)
        else:
            v = velocity(z, t, True)
        z = z + (times[step + 1] - times[step]).to(noise.dtype) * v
        if progress is not None:
            progress(step + 1, num_steps)
    return z
