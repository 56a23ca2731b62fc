"""What one paper-sized scene costs, computed on the meta device (no memory, no weights): the Gaussian field the LDRM
outputs (:func:`field_size`) and one video DiT pass (:func:`dit_pass`). ``python -m d4s.models --summary`` prints
both; the GPU suite and the benchmarks read them."""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

from d4s.models.config import ModelConfig
from d4s.models.ldrm import LatentDynamicReconstructionModel
from d4s.models.video_dit import VideoDiT

FIELD_FRAMES, FIELD_SIZE = 49, 512  # the paper's scenes (Sec. 4.1)


def field_size(config: ModelConfig, frames: int = FIELD_FRAMES, size: int = FIELD_SIZE) -> dict[str, int]:
    """What the LDRM outputs for one ``frames`` x ``size``² scene, from a meta-device forward pass (no memory):
    ``gaussians``, ``canonical_bytes`` (means, rotations, scales, opacities and SH coefficients, float32) and
    ``bytes_per_time`` (the deformation ``dmu, dq, ds`` to one target time)."""
    c = config.ldrm
    latent = size // c.spatial_compression
    with torch.device("meta"), torch.no_grad():
        ldrm = LatentDynamicReconstructionModel(c).eval()
        out = ldrm(
            torch.empty(1, (frames - 1) // 4 + 1, c.latent_channels, latent, latent),
            torch.empty(1, frames, 6, size, size),
            torch.empty(1, frames, 3, 3),
            torch.empty(1, frames, 4, 4),
            torch.empty(1, 1),
        )
    canonical = (out.means, out.quats, out.log_scales, out.opacity_logits, out.sh)
    return {
        "gaussians": out.means.shape[1],
        "canonical_bytes": 4 * sum(t.numel() for t in canonical),
        "bytes_per_time": 4 * sum(t.numel() for t in (out.dmu, out.dq, out.ds)),
    }


def dit_pass(config: ModelConfig, frames: int = FIELD_FRAMES, size: int = FIELD_SIZE) -> dict[str, float]:
    """One video DiT pass over a ``frames`` x ``size``² clip (batch 1, its text at the config's length), on the meta
    device: ``tokens`` (the video's, after patching) and ``flops`` counted by PyTorch's ``FlopCounterMode``."""
    with torch.device("meta"):
        dit = VideoDiT.from_config(dataclasses.replace(config.video_dit, random_init=True)).eval()
        s = dit.plucker.conv.stride[1]
        latents = torch.empty(1, (frames - 1) // 4 + 1, dit.latent_channels, size // s, size // s)
        plucker = torch.empty(1, frames, 6, size, size)
        text = torch.empty(1, config.text.get("max_length", 226), config.text.get("dim", 4096))
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            dit(latents, latents, plucker, text, torch.full((1,), 0.5))
    p = dit.backbone.spatial_patch(dit.transformer)
    tokens = latents.shape[1] * (latents.shape[3] // p) * (latents.shape[4] // p)
    return {"tokens": tokens, "flops": float(counter.get_total_flops())}
