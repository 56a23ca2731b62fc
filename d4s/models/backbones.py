"""The video backbones the camera-controlled DiT runs on (``video_dit.backbone``): what differs between them, in one
place, so that :class:`~d4s.models.video_dit.VideoDiT` and everything after it stay the same.

- ``cogvideox``: CogVideoX I2V (the paper's, Sec. 4.1). VAE: 16 channels, 4x temporal and 8x spatial compression,
  latents scaled by ``scaling_factor``. The transformer reads ``[noisy, image latents]`` concatenated on channels
  (the condition image's latents in latent frame 0, zeros after), patches ``2 x 2`` per frame, RoPE computed outside.
- ``wan2.2-ti2v``: Wan2.2-TI2V-5B. VAE: 48 channels, 4x temporal and 16x spatial compression, latents normalised by
  per-channel ``latents_mean`` / ``latents_std``. Trained with flow matching (velocity ``noise - data`` at timestep
  ``1000 t``), so its prior needs no conversion. Image conditioning as Wan2.2 TI2V (diffusers'
  ``WanImageToVideoPipeline`` with ``expand_timesteps``): the first latent frame is the clean image latent and its
  tokens get timestep 0; patches ``1 x 2 x 2``, RoPE inside the transformer.

Both take the camera the same way: Plücker features on the latent grid appended as input channels, read by a
zero-initialised widening of the transformer's patch projection (:class:`CameraPatchEmbed`), so a pretrained
transformer computes exactly what it did before the adapter was added.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan, CogVideoXTransformer3DModel, WanTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import get_resize_crop_region_for_grid
from torch import Tensor, nn

BackboneName = Literal["cogvideox", "wan2.2-ti2v"]


class CameraPatchEmbed(nn.Module):
    """A transformer's patch projection (a ``Conv2d`` or ``Conv3d`` over channels), widened:
    ``proj(x[:, :C]) + camera(x[:, C:])`` with ``camera`` zero-initialised."""

    def __init__(self, proj: nn.Conv2d | nn.Conv3d, camera_channels: int):
        super().__init__()
        self.proj, self.split = proj, proj.in_channels
        self.camera = type(proj)(camera_channels, proj.out_channels, proj.kernel_size, proj.stride, bias=False)
        nn.init.zeros_(self.camera.weight)
        self.camera.to(device=proj.weight.device, dtype=proj.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        latent, camera = x.split([self.split, x.shape[1] - self.split], dim=1)
        return self.proj(latent) + self.camera(camera)


def interpolate_learned_positions(patch_embed: nn.Module) -> None:
    """Let a CogVideoX patch embedding with learned positions (CogVideoX-5b-I2V: 480x720, 49 frames) take any size.

    diffusers refuses other sizes for such models. We resample the learned video positions trilinearly (time,
    rows, columns) to the requested grid, and keep the learned text positions; at the trained size the learned
    table is used unchanged. Training at 256 or 512 px (paper Sec. 3.4) then starts from the pretrained positions.
    """
    learned = patch_embed.pos_embedding
    text_length, p = patch_embed.max_text_seq_length, patch_embed.patch_size
    frames = (patch_embed.sample_frames - 1) // patch_embed.temporal_compression_ratio + 1
    grid = (frames, patch_embed.sample_height // p, patch_embed.sample_width // p)

    def positions(height: int, width: int, num_frames: int, device=None) -> Tensor:
        target = ((num_frames - 1) // patch_embed.temporal_compression_ratio + 1, height // p, width // p)
        video = learned[:, text_length:].reshape(1, *grid, -1).permute(0, 4, 1, 2, 3).float()
        video = nn.functional.interpolate(video, size=target, mode="trilinear", align_corners=False)
        video = video.permute(0, 2, 3, 4, 1).flatten(1, 3).to(learned.dtype)
        return torch.cat([learned[:, :text_length], video], dim=1).to(device or learned.device)

    patch_embed._get_positional_embeddings = positions
    patch_embed.use_learned_positional_embeddings, patch_embed.use_positional_embeddings = False, True


class Backbone:
    """One backbone family; the methods take its diffusers modules. Latents are ``[B, T', C, h, w]`` everywhere in
    d4s; :meth:`run` converts to and from the transformer's own layout. Subclasses: :class:`CogVideoX`,
    :class:`WanTI2V`."""

    name: BackboneName
    #: the diffusers release whose local copy ``video_dit.path`` points at (nothing is downloaded)
    release: str
    transformer_class: type[nn.Module]
    vae_class: type[nn.Module]
    #: where the patch projection lives: ``(attribute path of its owner, "" for the transformer; attribute name)``
    projection: tuple[str, str]
    #: the first latent frame is the clean image latent at timestep 0 (Wan2.2 TI2V), not extra input channels
    clean_first_frame: bool

    def owner(self, transformer: nn.Module) -> nn.Module:
        path = self.projection[0]
        return transformer.get_submodule(path) if path else transformer

    def add_camera_adapter(self, transformer: nn.Module, camera_channels: int) -> None:
        """Widen the patch projection by ``camera_channels`` zero-initialised input channels."""
        owner, name = self.owner(transformer), self.projection[1]
        setattr(owner, name, CameraPatchEmbed(getattr(owner, name), camera_channels))

    def camera_adapter(self, transformer: nn.Module) -> CameraPatchEmbed:
        return getattr(self.owner(transformer), self.projection[1])

    def adapter_prefix(self) -> str:
        """State-dict prefix of the adapter's camera projection in :class:`~d4s.models.video_dit.VideoDiT`."""
        path = ".".join(part for part in ("transformer", *self.projection) if part)
        return f"{path}.camera."

    def check(self, transformer: nn.Module, latent_channels: int) -> None:
        """Refuse a transformer whose input does not match the VAE's latents."""
        in_channels = transformer.config.in_channels
        expected = latent_channels if self.clean_first_frame else 2 * latent_channels
        if in_channels != expected:
            raise ValueError(
                f"video DiT ({self.name}): transformer in_channels {in_channels}, expected {expected} for "
                f"{latent_channels}-channel latents"
            )

    def spatial_patch(self, transformer: nn.Module) -> int:
        """Latent cells per token along height and width."""
        raise NotImplementedError

    def blocks(self, transformer: nn.Module) -> nn.ModuleList:
        """The transformer blocks (FSDP units, LoRA targets)."""
        raise NotImplementedError

    def latent_layout(self, vae: nn.Module) -> tuple[int, int]:
        """``(channels, spatial compression)`` of the VAE's latents."""
        raise NotImplementedError

    def normalise(self, vae: nn.Module, latents: Tensor) -> Tensor:
        """The VAE's raw latents ``[B, C, T', h, w]`` -> what the transformer reads, same layout."""
        raise NotImplementedError

    def run(self, transformer: nn.Module, x: Tensor, image: Tensor, camera: Tensor, text: Tensor, timestep: Tensor):
        """The transformer's output ``[B, T', C, h, w]`` on latents ``x`` (``[B, T', C, h, w]``), the image latents
        (same shape; Wan reads only their first frame), camera features ``[B, T', Cc, h, w]``, text ``[B, L, D]`` at
        transformer timesteps ``timestep [B]``, as the backbone's diffusers image-to-video pipeline calls it."""
        raise NotImplementedError


class CogVideoX(Backbone):
    name, release = "cogvideox", "CogVideoX-5b-I2V"
    transformer_class, vae_class = CogVideoXTransformer3DModel, AutoencoderKLCogVideoX
    projection, clean_first_frame = ("patch_embed", "proj"), False

    def add_camera_adapter(self, transformer: nn.Module, camera_channels: int) -> None:
        super().add_camera_adapter(transformer, camera_channels)
        if transformer.config.use_learned_positional_embeddings:
            interpolate_learned_positions(transformer.patch_embed)

    def check(self, transformer: nn.Module, latent_channels: int) -> None:
        if transformer.config.patch_size_t is not None:
            raise ValueError(
                "video DiT: CogVideoX 1.5 layouts (patch_size_t) are not supported yet (they need even latent frame "
                "counts and inverted latent scaling); use a CogVideoX 1.0 I2V model such as CogVideoX-5b-I2V"
            )
        super().check(transformer, latent_channels)

    def spatial_patch(self, transformer: nn.Module) -> int:
        return transformer.config.patch_size

    def blocks(self, transformer: nn.Module) -> nn.ModuleList:
        return transformer.transformer_blocks

    def latent_layout(self, vae: nn.Module) -> tuple[int, int]:
        return vae.config.latent_channels, 2 ** (len(vae.config.block_out_channels) - 1)

    def normalise(self, vae: nn.Module, latents: Tensor) -> Tensor:
        return latents * vae.config.scaling_factor

    def run(self, transformer: nn.Module, x: Tensor, image: Tensor, camera: Tensor, text: Tensor, timestep: Tensor):
        Tl, _, h, w = x.shape[1:]
        return transformer(
            hidden_states=torch.cat([x, image, camera], dim=2),
            encoder_hidden_states=text,
            timestep=timestep,
            image_rotary_emb=cogvideox_rotary_embedding(transformer, Tl, h, w, x.device),
            return_dict=False,
        )[0]


class WanTI2V(Backbone):
    name, release = "wan2.2-ti2v", "Wan2.2-TI2V-5B-Diffusers"
    transformer_class, vae_class = WanTransformer3DModel, AutoencoderKLWan
    projection, clean_first_frame = ("", "patch_embedding"), True

    def spatial_patch(self, transformer: nn.Module) -> int:
        return transformer.config.patch_size[1]  # (time, height, width)

    def blocks(self, transformer: nn.Module) -> nn.ModuleList:
        return transformer.blocks

    def latent_layout(self, vae: nn.Module) -> tuple[int, int]:
        return vae.config.z_dim, vae.config.scale_factor_spatial

    def normalise(self, vae: nn.Module, latents: Tensor) -> Tensor:
        c, shape = vae.config, (1, -1, 1, 1, 1)
        mean = torch.tensor(c.latents_mean, device=latents.device, dtype=latents.dtype).view(shape)
        std = torch.tensor(c.latents_std, device=latents.device, dtype=latents.dtype).view(shape)
        return (latents - mean) / std

    def run(self, transformer: nn.Module, x: Tensor, image: Tensor, camera: Tensor, text: Tensor, timestep: Tensor):
        x = torch.cat([image[:, :1], x[:, 1:]], dim=1)  # the first latent frame: the clean image
        p = self.spatial_patch(transformer)
        Tl, _, h, w = x.shape[1:]
        per_frame = torch.ones(Tl, h // p, w // p, device=x.device, dtype=timestep.dtype)
        per_frame[0] = 0  # its tokens at timestep 0 (WanImageToVideoPipeline, expand_timesteps)
        timesteps = timestep[:, None] * per_frame.flatten()[None]  # [B, tokens]
        hidden = torch.cat([x, camera], dim=2).transpose(1, 2)  # [B, C, T', h, w]
        out = transformer(hidden_states=hidden, timestep=timesteps, encoder_hidden_states=text, return_dict=False)[0]
        return out.transpose(1, 2)


def cogvideox_rotary_embedding(transformer: nn.Module, latent_frames: int, height: int, width: int, device):
    """RoPE ``(cos, sin)`` for a CogVideoX latent grid, as diffusers' I2V pipeline computes it (``None`` if unused)."""
    c = transformer.config
    if not c.use_rotary_positional_embeddings:
        return None
    grid = (height // c.patch_size, width // c.patch_size)
    crops = get_resize_crop_region_for_grid(grid, c.sample_width // c.patch_size, c.sample_height // c.patch_size)
    return get_3d_rotary_pos_embed(c.attention_head_dim, crops, grid, latent_frames, device=device)


BACKBONES: dict[str, Backbone] = {backbone.name: backbone() for backbone in (CogVideoX, WanTI2V)}
