"""The whole chain on tiny models: video -> latents (VAE or codec) -> DiT velocity -> sampler -> LDRM -> 4D field ->
render."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from d4s.diffusion import FlowMatching, Guidance, euler_sample
from d4s.geometry import intrinsics_from_fov, look_at, plucker_embedding
from d4s.models.config import ModelConfig
from d4s.models.ldrm import LatentDynamicReconstructionModel
from d4s.models.text import TextEncoder
from d4s.models.video_dit import VideoDiT
from d4s.render import render
from tests.models.test_video_dit import TINY


def cameras(T=9, size=64):
    eye = torch.stack([torch.linspace(0, 0.4, T), torch.zeros(T), torch.zeros(T)], -1)
    c2w = look_at(eye, torch.tensor([0.2, 0.0, 3.0]).expand(T, 3))[None]
    K = intrinsics_from_fov(size, size, 60.0).expand(1, T, 3, 3).clone()
    return c2w, K, plucker_embedding(c2w, K, size, size)


@pytest.mark.parametrize("name", ["model.yaml", "model_vae.yaml"])
def test_image_and_cameras_to_a_rendered_4d_scene(name):
    config = ModelConfig.from_yaml(Path(__file__).resolve().parents[2] / "configs" / "tiny" / name)
    torch.manual_seed(0)
    dit, ldrm = VideoDiT.from_config(config.video_dit).eval(), LatentDynamicReconstructionModel(config.ldrm).eval()
    text = TextEncoder(**config.text)
    image = torch.rand(1, 3, 64, 64)
    c2w, K, plucker = cameras()
    image_latents = dit.image_latents(image, latent_frames=3)
    captions, null_text = text([""]), text.null(1)

    def velocity(z, t, conditional):  # guidance drops text and camera together
        return dit(
            z,
            image_latents,
            plucker if conditional else torch.zeros_like(plucker),
            captions if conditional else null_text,
            t,
        )

    latents = euler_sample(velocity, torch.randn_like(image_latents), num_steps=3, guidance=Guidance())
    assert latents.shape == (1, 3, dit.latent_channels, 8, 8) and torch.isfinite(latents).all()
    with torch.no_grad():
        out = ldrm(latents, plucker, K, c2w, torch.linspace(0, 1, 9)[None])
    field = out.fields()[0]
    assert field.num_frames == 9 and field.num_gaussians == 9 * 32 * 32
    rendered = render(field.at(4)[::9], c2w[0, 4:5], K[0, 4:5], width=64, height=64, backend="torch")
    assert rendered.rgb.shape[-3:] == (64, 64, 3) and torch.isfinite(rendered.rgb).all()


def test_flow_matching_gradient_reaches_every_trainable_dit_parameter():
    torch.manual_seed(0)
    dit = VideoDiT.from_config(TINY.video_dit)
    dit.vae.requires_grad_(False)  # the VAE stays frozen, as in the paper
    plucker = cameras()[2]
    video = torch.rand(1, 9, 3, 64, 64)
    z0 = dit.encode(video)
    image_latents = dit.image_latents(video[:, 0], z0.shape[1])
    fm = FlowMatching()
    optimizer = torch.optim.SGD([p for p in dit.parameters() if p.requires_grad], lr=0.1)

    def loss():
        noise, t = torch.randn_like(z0), fm.sample_times(1)
        prediction = dit(fm.interpolate(z0, noise, t), image_latents, plucker, torch.randn(1, 8, 32), t)
        return fm.loss(prediction, z0, noise, t)

    loss().backward()  # the zero-initialised camera projection passes no gradient to the Plücker patchifier yet
    optimizer.step()
    optimizer.zero_grad()
    loss().backward()
    missing = [
        n for n, p in dit.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not missing
