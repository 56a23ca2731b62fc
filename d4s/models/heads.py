"""The LDRM's two decoders (paper Sec. 3.2, 3.3, Appendix C.2): Gaussian attributes and time-conditioned deformation.

Both map transformer tokens on the latent grid ``[B, D, T', h, w]`` back to the Gaussian grid
``[B, ., T, H/s, W/s]``: ``T = 4 T' - 3`` source frames (a transposed 3D convolution with kernel 5, stride 4,
padding 2, as Lyra decodes its latents: token ``k`` reaches frames ``4k-2 .. 4k+2``, centred, while the VAE's
latent ``k`` covers frames ``4k-3 .. 4k``; global attention leaves the tokens free to carry either) and one
Gaussian per ``s x s`` pixels.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from d4s.gaussians.sh import SH_C0, num_sh_bases
from d4s.utils.checks import check_choice

TEMPORAL_STRIDE = 4  # CogVideoX's VAE: 4x temporal compression, first frame kept


def temporal_upsampler(in_channels: int, out_channels: int, spatial: int) -> nn.ConvTranspose3d:
    """``[B, C, T', h, w] -> [B, C', 4T'-3, h*spatial, w*spatial]``: the VAE's causal temporal layout undone."""
    return nn.ConvTranspose3d(
        in_channels,
        out_channels,
        kernel_size=(TEMPORAL_STRIDE + 1, spatial, spatial),
        stride=(TEMPORAL_STRIDE, spatial, spatial),
        padding=(TEMPORAL_STRIDE // 2, 0, 0),
    )


class GaussianHead(nn.Module):
    """Tokens ``[B, D, T', h, w]`` -> raw Gaussian attributes ``[B, T, H/s, W/s, K_g]`` (one Gaussian per s x s px).

    Channels (``K_g = 1 + 3 K + 3 + 4 + 1``, ``K = (sh_degree + 1)^2``): depth, SH colour, log-scale, rotation,
    opacity. :meth:`activate` bounds them; an untrained head (raw 0) gives ``init_depth``, ``init_scale``, identity
    rotations, opacity 0.12 (``sigmoid(-2)``, the opacity offset GS-LRM and Long-LRM start from) and grey.
    """

    def __init__(
        self,
        width: int,
        spatial_upsample: int,
        sh_degree: int = 0,
        near: float = 0.1,
        far: float = 100.0,
        init_depth: float = 3.0,
        init_scale: float = 0.01,
        max_scale: float = 0.3,
    ):
        super().__init__()
        if not near < init_depth < far or not 0 < init_scale < max_scale:
            raise ValueError("GaussianHead: need near < init_depth < far and 0 < init_scale < max_scale")
        self.sh_bases = num_sh_bases(sh_degree)
        self.channels = 1 + 3 * self.sh_bases + 3 + 4 + 1
        self.near, self.far, self.max_scale, self.init_scale = near, far, max_scale, init_scale
        w0 = (init_depth - near) / (far - near)
        self.depth_offset = math.log(w0 / (1.0 - w0))
        self.norm = nn.GroupNorm(1, width)
        self.decode = temporal_upsampler(width, self.channels, spatial_upsample)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.decode(self.norm(tokens)).permute(0, 2, 3, 4, 1)

    def activate(self, raw: Tensor) -> dict[str, Tensor]:
        """Bounded attributes from raw ``[..., K_g]``: ``depth [...]`` z-depth in ``(near, far)`` metres,
        ``sh [..., K, 3]`` (colour in ``[0, 1]`` through the DC term), ``log_scales [..., 3]`` (scales below
        ``max_scale``), ``quats [..., 4]`` (unit, wxyz), ``opacity_logits [...]``."""
        raw = raw.float()  # bf16 would quantise depth to centimetres at 3 m
        depth, sh, scale, quat, opacity = raw.split([1, 3 * self.sh_bases, 3, 4, 1], dim=-1)
        w = torch.sigmoid(depth[..., 0] + self.depth_offset)
        sh = sh.reshape(*sh.shape[:-1], self.sh_bases, 3)
        dc = (0.5 * torch.tanh(sh[..., :1, :])) / SH_C0  # rgb = 0.5 + SH_C0 * dc lies in [0, 1]
        log_max = math.log(self.max_scale)
        return {
            "depth": self.near + (self.far - self.near) * w,
            "sh": torch.cat([dc, 0.1 * sh[..., 1:, :]], dim=-2),
            "log_scales": log_max - nn.functional.softplus(log_max - (scale + math.log(self.init_scale))),
            "quats": nn.functional.normalize(quat + quat.new_tensor([1.0, 0.0, 0.0, 0.0]), dim=-1),
            "opacity_logits": opacity[..., 0] - 2.0,
        }


def time_features(times: Tensor, dim: int) -> Tensor:
    """Sinusoidal features ``[..., dim]`` of times in ``[0, 1]`` (frequencies ``pi 2^k``, k from 0 to 8).

    Computed in float32 whatever the input dtype (bf16 angles are off by up to 2 at the top frequency)."""
    frequencies = math.pi * torch.logspace(0, 8, dim // 2, base=2.0, device=times.device, dtype=torch.float32)
    angles = times.float()[..., None] * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ResidualConvUnit(nn.Module):
    """DPT's residual unit: ``x + conv(relu(conv(relu(x))))`` (3x3 convolutions)."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


DPT_SCALES = (4.0, 2.0, 1.0, 0.5)  # output resolution of each tapped depth, relative to the token grid


def _resample(dim: int, scale: float) -> nn.Module:
    if scale > 1:
        return nn.ConvTranspose2d(dim, dim, kernel_size=int(scale), stride=int(scale))
    if scale < 1:
        return nn.Conv2d(dim, dim, kernel_size=3, stride=int(1 / scale), padding=1)
    return nn.Identity()


IDENTITY = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # raw (dmu, dq, ds) of no motion


TimeInput = Literal["relative", "target"]


class DeformationHead(nn.Module):
    """DPT-style deformation head conditioned on the target time (Appendix C.2): ``K_d = 10`` per Gaussian.

    Features of four transformer depths are reassembled at 4x, 2x, 1x and 0.5x the token grid and fused from coarse
    to fine (the multi-resolution features of Appendix C.2), brought from the latent frames to the source frames by
    a transposed temporal convolution (the Gaussian head's temporal layout), normalised and modulated by time
    (adaptive normalisation as in MoVieS: a parameter-free group norm, then a FiLM from sinusoidal time features,
    zero-initialised), refined and projected to ``(dmu 3, dq 4, ds 3)`` on the Gaussian grid by a transposed 2D
    convolution (the paper's last layer is a 1x1 convolution at pixel resolution; ours fuses that projection with the
    upsampling). That layer starts at zero weight with the identity as bias, so the head outputs the identity
    deformation at initialisation (static pre-training, Sec. 3.4, starts from a field that does not move).

    ``time_input`` says what the FiLM sees (the paper conditions on "a time embedding for the target frame" of a
    scene "at a canonical time step" and leaves the canonical time open): ``relative`` (default) the target time
    minus the time of the Gaussian's own source frame, its canonical time, mapped from ``[-1, 1]`` to ``[0, 1]``;
    ``target`` the target time alone. Each Gaussian sits where its frame saw it, so its displacement to time ``t`` is
    a function of ``t - t_source`` (zero at its own time, reversed before it); with ``target`` the head has to infer
    the source time from the temporal layout, and on toy4d's learnable motion it reaches a held-out cosine of 0.51
    against 0.95 after 400 steps (``bench/motion_probe.py``, ``bench/RESULTS.md``). Target times are decoded ``time_chunk`` at a time: that
    bounds memory without gradients, and in training with ``checkpoint_chunks`` (recomputed in the backward pass).
    """

    def __init__(
        self,
        width: int,
        spatial_upsample: int,
        dim: int = 128,
        time_dim: int = 64,
        time_chunk: int = 8,
        checkpoint_chunks: bool = False,
        time_input: TimeInput = "relative",
    ):
        super().__init__()
        check_choice(time_input, "time_input", TimeInput)
        self.time_dim, self.time_chunk, self.checkpoint_chunks = time_dim, time_chunk, checkpoint_chunks
        self.time_input = time_input
        self.reassemble = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, dim, 1), _resample(dim, scale)) for scale in DPT_SCALES
        )
        self.fuse = nn.ModuleList(ResidualConvUnit(dim) for _ in DPT_SCALES)
        self.to_frames = temporal_upsampler(dim, dim, 1)
        self.film = nn.Sequential(nn.Linear(time_dim, dim), nn.SiLU(), nn.Linear(dim, 2 * dim))
        nn.init.zeros_(self.film[-1].weight)
        nn.init.zeros_(self.film[-1].bias)
        self.norm = nn.GroupNorm(1, dim, affine=False)  # bounded inputs: the refine units cannot all saturate
        self.refine = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.SiLU())
        self.out = nn.ConvTranspose2d(dim, 10, spatial_upsample, stride=spatial_upsample)  # straight to 10 channels
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.out.bias.copy_(IDENTITY)

    def is_identity(self) -> bool:
        """Whether the head outputs the identity deformation for every input (its initial state)."""
        weight, bias = (p.full_tensor() if isinstance(p, DTensor) else p for p in (self.out.weight, self.out.bias))
        return bool((weight == 0).all()) and torch.equal(bias.detach().cpu(), IDENTITY)  # sharded: gathered first

    def forward(self, features: list[Tensor], times: Tensor) -> Tensor:
        """Raw deformations ``[B, T_target, T, H/s, W/s, 10]``, ``T = 4 T' - 3`` source frames.

        Args:
            features: ``len(DPT_SCALES)`` token maps ``[B, D, T', h, w]``, shallow to deep.
            times: ``[B, T_target]`` target times in ``[0, 1]`` (0 = first source frame, 1 = last).
        """
        B, _, Tl = features[0].shape[:3]
        maps = [stage(f.transpose(1, 2).flatten(0, 1)) for stage, f in zip(self.reassemble, features)]
        fused = self.fuse[-1](maps[-1])
        for fuse, skip in zip(reversed(self.fuse[:-1]), reversed(maps[:-1])):
            fused = fuse(skip + nn.functional.interpolate(fused, size=skip.shape[-2:], mode="bilinear"))
        frames = self.to_frames(fused.unflatten(0, (B, Tl)).transpose(1, 2)).transpose(1, 2)  # [B, T, dim, 4h, 4w]
        T = frames.shape[1]
        frames = self.norm(frames.flatten(0, 1)).unflatten(0, (B, T))
        condition = times[:, :, None].float().expand(-1, -1, T)  # [B, Tt, T]
        if self.time_input == "relative":
            source = torch.linspace(0.0, 1.0, T, device=times.device)
            condition = 0.5 * (condition - source + 1.0)  # t - t_source in [-1, 1], mapped to [0, 1]
        film = self.film(time_features(condition, self.time_dim).to(frames.dtype))  # [B, Tt, T, 2 dim]
        chunks = []
        for chunk in film.split(self.time_chunk, dim=1):
            if self.checkpoint_chunks and self.training:  # keep one chunk's activations at a time in training too
                chunks.append(checkpoint(self._at_times, frames, chunk, use_reentrant=False))
            else:
                chunks.append(self._at_times(frames, chunk))
        return torch.cat(chunks, dim=1)

    def _at_times(self, frames: Tensor, film: Tensor) -> Tensor:
        """Deformations ``[B, Tc, T, H/s, W/s, 10]`` of normalised features ``[B, T, dim, 4h, 4w]`` under the FiLM
        ``[B, Tc, T, 2 dim]`` of ``Tc`` target times."""
        B, T = frames.shape[:2]
        Tc = film.shape[1]
        scale, shift = film[..., None, None].chunk(2, dim=3)
        x = self.out(self.refine((frames[:, None] * (1 + scale) + shift).flatten(0, 2)))  # [B*Tc*T, 10, H/s, W/s]
        return x.unflatten(0, (B, Tc, T)).permute(0, 1, 2, 4, 5, 3)

    @staticmethod
    def split(raw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(dmu [..., 3], dq [..., 4] normalised, ds [..., 3])``; no activation on dmu and ds (Appendix C.2)."""
        dmu, dq, ds = raw.split([3, 4, 3], dim=-1)
        return dmu, nn.functional.normalize(dq, dim=-1), ds
