"""The space-to-depth codec (the tiny models' stand-in for the VAE): checked against a pixel-by-pixel loop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from d4s.models.codec import SpaceToDepthCodec
from d4s.models.config import ModelConfig
from d4s.models.video_dit import VideoDiT, VideoDiTConfig

REPO = Path(__file__).resolve().parents[2]
TINY = ModelConfig.from_yaml(REPO / "configs" / "tiny" / "model.yaml")


def looped_latents(video: torch.Tensor, spatial: int, pool: int, scale: float) -> torch.Tensor:
    """The codec's definition, one value at a time: latent frame ``k`` is frame ``4k``; channel ``c r^2 + a r + b``
    (``r = spatial / pool``) of block ``(i, j)`` is the mean of the ``pool x pool`` pixels at block row ``a``,
    column ``b`` of colour ``c``, mapped to ``scale (2 x - 1)``."""
    B, T, _, H, W = video.shape
    r = spatial // pool
    out = torch.zeros(B, (T + 3) // 4, 3 * r * r, H // spatial, W // spatial, dtype=torch.float64)
    for k in range(out.shape[1]):
        frame = video[:, 4 * k].double()
        for c in range(3):
            for a in range(r):
                for b in range(r):
                    for i in range(H // spatial):
                        for j in range(W // spatial):
                            top, left = i * spatial + a * pool, j * spatial + b * pool
                            mean = frame[:, c, top : top + pool, left : left + pool].mean((-1, -2))
                            out[:, k, c * r * r + a * r + b, i, j] = scale * (2.0 * mean - 1.0)
    return out


@pytest.mark.parametrize("pool", [1, 2, 4])
def test_latents_are_block_means_of_every_fourth_frame(pool):
    video = torch.rand(2, 9, 3, 16, 24, generator=torch.Generator().manual_seed(pool))
    codec = SpaceToDepthCodec(spatial_compression=8, pool=pool, scaling_factor=1.5)
    latents = codec(video)
    assert latents.shape == (2, 3, codec.latent_channels, 2, 3) and codec.latent_channels == 3 * (8 // pool) ** 2
    torch.testing.assert_close(latents.double(), looped_latents(video, 8, pool, 1.5), atol=1e-6, rtol=0)


def test_the_codec_keeps_what_a_random_tiny_vae_loses():
    """Pixel-level information: with ``pool = 1`` the frames come back exactly (the codec is invertible)."""
    video = torch.rand(1, 5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    latents = SpaceToDepthCodec(pool=1, scaling_factor=1.0)(video)
    frames = (torch.nn.functional.pixel_shuffle(latents[0], 8) + 1.0) / 2.0
    torch.testing.assert_close(frames, video[0, ::4], atol=1e-6, rtol=0)


def test_bad_shapes_and_settings_are_named():
    codec = SpaceToDepthCodec()
    with pytest.raises(ValueError, match="4k\\+1 frames of multiples of 8"):
        codec(torch.rand(1, 8, 3, 16, 16))
    with pytest.raises(ValueError, match="4k\\+1 frames of multiples of 8"):
        codec(torch.rand(1, 9, 3, 16, 12))
    with pytest.raises(ValueError, match="pool 3 must divide"):
        SpaceToDepthCodec(pool=3)
    with pytest.raises(ValueError, match="video_dit.codec"):
        VideoDiTConfig(codec="jpeg")


def test_video_dit_encodes_with_the_codec_and_saves_no_vae(tmp_path):
    """The tiny config's DiT: latents are the codec's (no posterior); saving writes no ``vae/`` folder and loading
    with the codec config does not ask for one."""
    assert TINY.video_dit.codec == "space_to_depth"
    torch.manual_seed(0)
    model = VideoDiT.from_config(TINY.video_dit)
    video = torch.rand(2, 9, 3, 64, 64)
    codec = SpaceToDepthCodec(**TINY.video_dit.space_to_depth)
    torch.testing.assert_close(model.encode(video), codec(video), rtol=0, atol=0)
    image_latents = model.image_latents(video[:, 0], latent_frames=3)
    torch.testing.assert_close(image_latents[:, 0], codec(video[:, :1])[:, 0], rtol=0, atol=0)
    assert (image_latents[:, 1:] == 0).all()
    model.save_pretrained(tmp_path / "tiny")
    assert not (tmp_path / "tiny" / "vae").exists()
    config = dataclasses.replace(TINY.video_dit, random_init=False, path=str(tmp_path / "tiny"))
    loaded = VideoDiT.from_config(config)
    generator = torch.Generator().manual_seed(1)
    noisy, image = (torch.randn(2, 3, 48, 8, 8, generator=generator) for _ in range(2))
    plucker, text = torch.randn(2, 9, 6, 64, 64, generator=generator), torch.randn(2, 8, 32, generator=generator)
    t = torch.tensor([0.1, 0.9])
    torch.testing.assert_close(loaded(noisy, image, plucker, text, t), model(noisy, image, plucker, text, t))
