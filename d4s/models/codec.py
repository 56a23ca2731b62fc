"""A weight-free stand-in for the video VAE, for tiny CPU models: frames folded into latent-shaped tensors.

The paper's LDRM reads the latents of CogVideoX's pretrained 3D causal VAE, which keeps what the video shows. A tiny
CogVideoX VAE cannot be downloaded and a randomly initialised one keeps almost nothing (a linear read-out recovers
4-17% of the pixel variance and almost none of the chroma from its latents on toy4d, ``bench/latent_probe.py``), so
a tiny model trained on it learns an average scene and cannot tell what moves. :class:`SpaceToDepthCodec` has the VAE's layout and keeps the video
instead: the same ``4 x 8 x 8`` compression (latent frame 0 is frame 0, latent frame ``k`` stands for frames
``4k - 3 .. 4k``), with no weights and nothing to train. Choose it with ``video_dit.codec: space_to_depth``
(:class:`d4s.models.video_dit.VideoDiTConfig`); paper-scale configs use the VAE.
"""

from __future__ import annotations

from torch import Tensor, nn

from d4s.models.heads import TEMPORAL_STRIDE


class SpaceToDepthCodec(nn.Module):
    """Video ``[B, T, 3, H, W]`` in ``[0, 1]`` -> latents ``[B, T', C, H / s, W / s]``, ``T = 4 T' - 3``.

    Latent frame ``k`` is frame ``4k`` (the last frame of the group the VAE compresses into it; frame 0 alone), its
    pixels averaged over ``pool x pool`` blocks and each ``s x s`` block's ``(s / pool)^2`` means stacked as channels
    (``C = 3 (s / pool)^2``: 48 for ``s = 8``, ``pool = 2``). Values are ``scaling_factor * (2 x - 1)``, which puts
    typical images near unit variance, as the VAE's scaling factor does.
    """

    def __init__(self, spatial_compression: int = 8, pool: int = 2, scaling_factor: float = 2.0):
        super().__init__()
        if spatial_compression < 1 or pool < 1 or spatial_compression % pool:
            raise ValueError(
                f"space_to_depth: pool {pool} must divide spatial_compression {spatial_compression} (both >= 1)"
            )
        self.spatial_compression, self.pool, self.scaling_factor = spatial_compression, pool, scaling_factor
        self.latent_channels = 3 * (spatial_compression // pool) ** 2

    @property
    def value_range(self) -> float:
        """Latents lie in ``[-scaling_factor, scaling_factor]``: a range of ``2 scaling_factor`` (the PSNR peak)."""
        return 2.0 * self.scaling_factor

    def forward(self, video: Tensor) -> Tensor:
        """Latents of ``video [B, T, 3, H, W]`` (``T = 4T' - 3``; ``H``, ``W`` multiples of the compression)."""
        B, T, _, H, W = video.shape
        s = self.spatial_compression
        if (T - 1) % TEMPORAL_STRIDE or H % s or W % s:
            raise ValueError(f"space_to_depth: expected 4k+1 frames of multiples of {s} px, got {list(video.shape)}")
        frames = video[:, ::TEMPORAL_STRIDE].flatten(0, 1).float() * 2.0 - 1.0
        pooled = nn.functional.avg_pool2d(frames, self.pool) if self.pool > 1 else frames
        latents = nn.functional.pixel_unshuffle(pooled, s // self.pool) * self.scaling_factor
        return latents.unflatten(0, (B, -1)).to(video.dtype if video.is_floating_point() else latents.dtype)
