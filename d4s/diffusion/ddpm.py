"""A pretrained v-prediction DDPM (CogVideoX) read as a flow-matching velocity field (paper Eq. 2's conventions).

The DDPM side (diffusers' ``CogVideoXDDIMScheduler``): discrete timesteps ``s = 0 .. N-1`` with cumulative signal
fractions ``alphā_s`` (``alphas_cumprod``, falling from ~1 to 0 at zero terminal SNR); the variance-preserving
state is ``x = a x0 + sigma eps`` with ``a = sqrt(alphā)``, ``sigma = sqrt(1 - alphā)``, and the network predicts
``v = a eps - sigma x0``.

The flow side (:mod:`d4s.diffusion.flow_matching`): ``z_t = (1 - t) z0 + t eps``, velocity ``eps - z0``. Both
states carry the same signal-to-noise ratio when ``sigma / a = t / (1 - t)``, i.e. ``a = (1 - t) / n``,
``sigma = t / n`` with ``n = sqrt((1 - t)^2 + t^2)``, and then ``x = z_t / n``. With the network's ``v̂`` at ``x``
and the timestep ``s`` whose ``alphā_s = a^2``: ``x0̂ = a x - sigma v̂``, ``epŝ = sigma x + a v̂``, so the flow
velocity is ``u = epŝ - x0̂ = (sigma - a) x + (a + sigma) v̂``. DDIM (eta 0) and Euler on ``u`` then integrate
the same probability-flow ODE: a DDIM step is an Euler step in ``t`` on DDIM's own time grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from d4s.utils.checks import check_choice

BetaSchedule = Literal["linear", "scaled_linear"]


@dataclass(frozen=True)
class DDPMSchedule:
    """A DDPM noise schedule as diffusers' ``CogVideoXDDIMScheduler`` builds it; defaults: CogVideoX-5b-I2V's.

    Args:
        num_train_timesteps: ``N``, the timesteps ``0 .. N-1`` the network was trained on.
        beta_start, beta_end: the first and last ``beta``.
        beta_schedule: ``linear`` (betas evenly spaced) or ``scaled_linear`` (their square roots evenly spaced).
        rescale_betas_zero_snr: shift and scale ``sqrt(alphā)`` so that the last timestep is pure noise
            (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps Are Flawed", Algorithm 1).
        snr_shift_scale: divide the signal-to-noise ratio by it (CogVideoX's shift; 1 leaves it, 3.0 is the
            scheduler's default, 1.0 what CogVideoX-5b-I2V ships).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: BetaSchedule = "scaled_linear"
    rescale_betas_zero_snr: bool = True
    snr_shift_scale: float = 1.0

    def __post_init__(self) -> None:
        check_choice(self.beta_schedule, "beta_schedule", BetaSchedule)
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps: expected an integer >= 2, got {self.num_train_timesteps!r}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(
                f"beta_start, beta_end: expected 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )
        if not self.snr_shift_scale > 0:
            raise ValueError(f"snr_shift_scale: expected a positive number, got {self.snr_shift_scale}")

    def alphas_cumprod(self) -> Tensor:
        """``alphā_s`` for ``s = 0 .. N-1``: ``[N]`` float64 on the CPU, strictly falling."""
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float64)
        else:
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # SNR shift: alphā / (1 - alphā) becomes that / snr_shift_scale (CogVideoXDDIMScheduler.__init__)
        alphas_cumprod = alphas_cumprod / (self.snr_shift_scale + (1.0 - self.snr_shift_scale) * alphas_cumprod)
        if self.rescale_betas_zero_snr:  # keep sqrt(alphā_0), move sqrt(alphā_{N-1}) to 0 (Lin et al., Alg. 1)
            root = alphas_cumprod.sqrt()
            first, last = root[0].clone(), root[-1].clone()
            alphas_cumprod = ((root - last) * (first / (first - last))) ** 2
        return alphas_cumprod

    def timestep(self, alpha_bar: Tensor) -> Tensor:
        """The continuous timestep ``s [B]`` at which the schedule's ``alphā`` equals ``alpha_bar [B]``.

        Linear interpolation of ``alphā`` between neighbouring timesteps (monotone, like the table); values beyond
        the table's range clamp to ``s`` in ``[0, N-1]``. Returns ``alpha_bar``'s dtype (use float32 or wider).
        """
        rising = self.alphas_cumprod().to(alpha_bar.device).flip(0)  # rising[j] = alphā at s = N-1-j
        target = alpha_bar.to(torch.float64).clamp(rising[0], rising[-1])
        upper = torch.searchsorted(rising, target, right=True).clamp(1, len(rising) - 1)
        low, high = rising[upper - 1], rising[upper]
        position = (upper - 1) + (target - low) / (high - low)
        return (len(rising) - 1 - position).to(alpha_bar.dtype)


def vp_scales(t: Tensor) -> tuple[Tensor, Tensor]:
    """Signal and noise scales ``(a, sigma)``, each ``[B]``, of the DDPM state with the SNR of flow time ``t [B]``:
    ``a = (1 - t) / n``, ``sigma = t / n``, ``n = sqrt((1 - t)^2 + t^2)`` (so ``a^2 + sigma^2 = 1``)."""
    norm = torch.sqrt((1.0 - t) ** 2 + t**2)
    return (1.0 - t) / norm, t / norm


def _per_sample(scale: Tensor, like: Tensor) -> Tensor:
    """``scale [B]`` shaped to broadcast over ``like [B, ...]``."""
    return scale.reshape(-1, *([1] * (like.dim() - 1)))


def flow_to_vp(z_t: Tensor, a: Tensor, sigma: Tensor) -> Tensor:
    """The DDPM state ``x = (a + sigma) z_t = z_t / sqrt((1 - t)^2 + t^2)`` of flow state ``z_t [B, ...]``
    (``a``, ``sigma`` from :func:`vp_scales`, ``[B]``)."""
    return _per_sample(a + sigma, z_t) * z_t


def v_to_flow_velocity(x: Tensor, v: Tensor, a: Tensor, sigma: Tensor) -> Tensor:
    """The flow velocity ``u = epŝ - x0̂ = (sigma - a) x + (a + sigma) v`` ``[B, ...]`` from the DDPM state
    ``x [B, ...]`` and the network's v-prediction ``v [B, ...]`` there (``x0̂ = a x - sigma v``, ``epŝ = sigma x
    + a v``: the v_prediction branch of ``CogVideoXDDIMScheduler.step``)."""
    a, sigma = _per_sample(a, x), _per_sample(sigma, x)
    return (sigma - a) * x + (a + sigma) * v
