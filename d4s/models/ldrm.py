"""The Latent Dynamic Reconstruction Model (paper Sec. 3.2-3.3, 4.1): video latents + cameras -> 4D Gaussians.

Tokenise: latents ``[B, T', C, h, w]`` patchified by ``p x p``; Plücker maps ``[B, T, 6, H, W]`` (``T = 4T'-3``)
patchified by a causal 3D convolution of stride ``4 x 8p x 8p`` after replicating the first frame 3 times, as the
VAE does, so both give one token per ``(latent frame, p x p latent patch)``. The two token sets are concatenated
channel-wise (Sec. 3.2) and run through ``depth`` transformer blocks. Decode: the Gaussian head gives one pixel-
aligned Gaussian per ``s x s`` pixels of every source frame, placed at its predicted z-depth along the pixel's ray
in that frame's camera; the deformation head gives, for each requested target time, ``(dmu, dq, ds)`` for every
Gaussian.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from d4s.gaussians.field import DeformableGaussianField, GaussianField
from d4s.geometry.cameras import resize_intrinsics, unproject_depth
from d4s.models.heads import DPT_SCALES, TEMPORAL_STRIDE, DeformationHead, GaussianHead, TimeInput, time_features
from d4s.utils.checks import check_choice


@dataclass(frozen=True)
class LDRMConfig:
    """LDRM sizes. Paper scale (Sec. 4.1): 16 blocks, latent features projected to a 64-dim embedding.

    ``embed_dim`` is that per-token embedding (latent and Plücker tokens each; concatenated, then projected to
    ``width``, the transformer's width, which the paper does not give). ``latent_patch`` is ``p``;
    ``gaussian_stride`` is ``s`` (one Gaussian per ``s x s`` pixels; ``s`` must divide ``2p``).
    ``feature_layers`` are the blocks whose outputs feed the DPT deformation head (shallow to deep);
    ``time_chunk`` target times are decoded at once (memory). ``deformation_time``: what the deformation head's time
    conditioning sees, ``relative`` (target minus source frame time) or ``target`` (:class:`DeformationHead`).
    ``gaussian_head`` and ``deformation_head`` name the decoders in :data:`GAUSSIAN_HEADS` and
    :data:`DEFORMATION_HEADS` (their contracts are stated there).
    """

    latent_channels: int = 16
    spatial_compression: int = 8
    latent_patch: int = 2
    embed_dim: int = 64
    width: int = 1024
    depth: int = 16
    heads: int = 16
    mlp_ratio: float = 4.0
    feature_layers: tuple[int, ...] = (3, 7, 11, 15)
    gaussian_stride: int = 1
    sh_degree: int = 0
    dpt_dim: int = 256
    time_dim: int = 64
    time_chunk: int = 8
    deformation_time: TimeInput = "relative"
    near: float = 0.1
    far: float = 100.0
    init_depth: float = 3.0
    init_scale: float = 0.01
    max_scale: float = 0.3
    gradient_checkpointing: bool = False
    gaussian_head: str = "pixel_aligned"
    deformation_head: str = "dpt"

    def __post_init__(self) -> None:
        if len(self.feature_layers) != len(DPT_SCALES) or not all(0 <= i < self.depth for i in self.feature_layers):
            raise ValueError(
                f"feature_layers: {len(DPT_SCALES)} block indices in [0, {self.depth}), got {self.feature_layers}"
            )
        if (2 * self.latent_patch) % self.gaussian_stride:
            raise ValueError(
                f"gaussian_stride {self.gaussian_stride} must divide 2 * latent_patch = {2 * self.latent_patch}"
            )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        check_choice(self.deformation_time, "ldrm.deformation_time", TimeInput)
        for key, registry in (("gaussian_head", GAUSSIAN_HEADS), ("deformation_head", DEFORMATION_HEADS)):
            if getattr(self, key) not in registry:  # registries, not Literals: new heads register at import
                raise ValueError(f"ldrm.{key}: {getattr(self, key)!r} is not one of {sorted(registry)}")

    @property
    def pixels_per_token(self) -> int:
        return self.spatial_compression * self.latent_patch


def pixel_aligned_gaussian_head(c: LDRMConfig) -> nn.Module:
    """:class:`~d4s.models.heads.GaussianHead`: one Gaussian per ``s x s`` pixels of every source frame."""
    return GaussianHead(
        c.width,
        c.pixels_per_token // c.gaussian_stride,
        c.sh_degree,
        c.near,
        c.far,
        c.init_depth,
        c.init_scale,
        c.max_scale,
    )


def dpt_deformation_head(c: LDRMConfig) -> nn.Module:
    """:class:`~d4s.models.heads.DeformationHead`: DPT fusion of four depths, FiLM by time (Appendix C.2)."""
    return DeformationHead(
        c.width,
        c.pixels_per_token // (4 * c.gaussian_stride),
        c.dpt_dim,
        c.time_dim,
        c.time_chunk,
        checkpoint_chunks=c.gradient_checkpointing,
        time_input=c.deformation_time,
    )


#: Gaussian heads by ``ldrm.gaussian_head``: a builder from the config to a module with
#: ``forward(tokens [B, width, T', h/p, w/p]) -> raw [B, T, H/s, W/s, K]`` (``T = 4 T' - 3``) and
#: ``activate(raw) -> {depth [...] z-depth in metres, sh [..., K_sh, 3], log_scales [..., 3], quats [..., 4] unit
#: wxyz, opacity_logits [...]}``. Add an entry to try another decoder; checkpoints keep its weights under
#: ``ldrm.gaussian_head.``.
GAUSSIAN_HEADS: dict[str, Callable[[LDRMConfig], nn.Module]] = {"pixel_aligned": pixel_aligned_gaussian_head}

#: Deformation heads by ``ldrm.deformation_head``: a builder from the config to a module with
#: ``forward(features, times [B, V] in [0, 1]) -> raw [B, V, T, H/s, W/s, 10]`` (``features``: the token maps
#: ``[B, width, T', h/p, w/p]`` of the blocks in ``feature_layers``, shallow to deep), ``split(raw) -> (dmu [..., 3]
#: metres, dq [..., 4] unit wxyz, ds [..., 3] log-scale)`` (Eq. 7) and ``is_identity() -> bool``; it must start at
#: the identity deformation, which the static stages require (Sec. 3.4).
DEFORMATION_HEADS: dict[str, Callable[[LDRMConfig], nn.Module]] = {"dpt": dpt_deformation_head}


@dataclass
class LDRMOutput:
    """Batched Gaussians ``[B, N, ...]`` (``N = T * H/s * W/s``, ordered frame, row, column) and deformations.

    ``means [B, N, 3]`` world metres; ``depth [B, N]`` z-depth; ``quats [B, N, 4]``; ``log_scales [B, N, 3]``;
    ``opacity_logits [B, N]``; ``sh [B, N, K, 3]``; ``dmu [B, T_target, N, 3]``, ``dq [B, T_target, N, 4]`` (unit),
    ``ds [B, T_target, N, 3]``, all three ``None`` when no target times were asked for (a static scene).
    """

    means: Tensor
    depth: Tensor
    quats: Tensor
    log_scales: Tensor
    opacity_logits: Tensor
    sh: Tensor
    dmu: Tensor | None
    dq: Tensor | None
    ds: Tensor | None

    def canonical(self, b: int) -> GaussianField:
        """The undeformed Gaussians of batch element ``b``."""
        return GaussianField(self.means[b], self.quats[b], self.log_scales[b], self.opacity_logits[b], self.sh[b])

    def fields(self) -> list[DeformableGaussianField]:
        """One :class:`DeformableGaussianField` per batch element, over the requested target times."""
        if self.dmu is None:
            raise ValueError("LDRMOutput.fields: no target times were asked for; use canonical(b)")
        return [
            DeformableGaussianField(self.canonical(b), self.dmu[b], self.dq[b], self.ds[b])
            for b in range(self.means.shape[0])
        ]


class LatentDynamicReconstructionModel(nn.Module):
    """See the module docstring; ``forward`` documents the tensors."""

    def __init__(self, config: LDRMConfig):
        super().__init__()
        self.config = c = config
        self.latent_tokens = nn.Conv3d(
            c.latent_channels,
            c.embed_dim,
            kernel_size=(1, c.latent_patch, c.latent_patch),
            stride=(1, c.latent_patch, c.latent_patch),
        )
        self.pose_tokens = nn.Conv3d(
            6,
            c.embed_dim,
            kernel_size=(TEMPORAL_STRIDE, c.pixels_per_token, c.pixels_per_token),
            stride=(TEMPORAL_STRIDE, c.pixels_per_token, c.pixels_per_token),
        )
        self.project = nn.Linear(2 * c.embed_dim, c.width)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                c.width,
                c.heads,
                int(c.mlp_ratio * c.width),
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.width)
        self.gaussian_head = GAUSSIAN_HEADS[c.gaussian_head](c)
        self.deformation_head = DEFORMATION_HEADS[c.deformation_head](c)

    def _tokens(self, latents: Tensor, plucker: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        latent = self.latent_tokens(latents.transpose(1, 2))  # [B, E, T', h/p, w/p]
        first = plucker[:, :1].expand(-1, TEMPORAL_STRIDE - 1, -1, -1, -1)
        pose = self.pose_tokens(torch.cat([first, plucker], dim=1).transpose(1, 2))  # causal: [B, E, T', h/p, w/p]
        grid = tuple(latent.shape[2:])
        tokens = self.project(torch.cat([latent, pose], dim=1).flatten(2).transpose(1, 2))  # [B, L, width]
        frame_position = time_features(torch.linspace(0, 1, grid[0], device=tokens.device), self.config.width)
        return tokens + frame_position.to(tokens.dtype).repeat_interleave(grid[1] * grid[2], dim=0), grid

    def forward(self, latents: Tensor, plucker: Tensor, K: Tensor, c2w: Tensor, times: Tensor | None) -> LDRMOutput:
        """Gaussians of every source frame and their deformation to each target time.

        Args:
            latents: ``[B, T', C, h, w]`` video latents (diffusers' CogVideoX layout).
            plucker: ``[B, T, 6, H, W]`` Plücker maps of the source cameras, ``T = 4T' - 3``, ``H = 8h``.
            K: ``[B, T, 3, 3]`` intrinsics of the ``H x W`` frames; c2w: ``[B, T, 4, 4]`` camera-to-world.
            times: ``[B, T_target]`` target times in ``[0, 1]`` (0 = first source frame, 1 = last), or ``None`` to
                skip the deformation head (static scenes: the output has no deformation).
        """
        c = self.config
        B, Tl, _, h, w = latents.shape
        T, H, W = 4 * Tl - 3, h * c.spatial_compression, w * c.spatial_compression
        if plucker.shape != (B, T, 6, H, W):
            raise ValueError(
                f"plucker: expected {[B, T, 6, H, W]} for latents {list(latents.shape)}, got {list(plucker.shape)}"
            )
        if h % c.latent_patch or w % c.latent_patch:
            raise ValueError(
                f"latents: height and width must be multiples of latent_patch {c.latent_patch}, got {h}x{w}"
            )
        tokens, grid = self._tokens(latents, plucker)
        features = []
        for index, block in enumerate(self.blocks):
            if c.gradient_checkpointing and self.training:
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
            if times is not None and index in c.feature_layers:
                features.append(tokens.transpose(1, 2).unflatten(2, grid))  # [B, width, T', h/p, w/p]
        final = self.norm(tokens).transpose(1, 2).unflatten(2, grid)
        gaussians = self.gaussian_head.activate(self.gaussian_head(final))  # [B, T, H/s, W/s, ...]
        s = c.gaussian_stride
        K_grid = resize_intrinsics(K, (H, W), (H // s, W // s))
        means = unproject_depth(gaussians["depth"], K_grid.float(), c2w.float())  # on each pixel's ray, float32
        dmu = dq = ds = None
        if times is not None:
            dmu, dq, ds = self.deformation_head.split(self.deformation_head(features, times).flatten(2, 4))
        flat = {name: value.flatten(1, 3) for name, value in gaussians.items()}
        return LDRMOutput(means=means.flatten(1, 3), dmu=dmu, dq=dq, ds=ds, **flat)


def parameter_count(module: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())
