"""The Wan2.2-TI2V backbone (``video_dit.backbone: wan2.2-ti2v``) against diffusers' own Wan code:

- with the camera adapter at zero, the wrapper's transformer output equals, bit for bit, plain
  ``WanTransformer3DModel`` called as ``WanImageToVideoPipeline`` calls it in TI2V mode (first latent frame replaced
  by the image latent, its tokens at timestep 0);
- d4s's Euler sampler equals diffusers' ``FlowMatchEulerDiscreteScheduler`` stepping the same tiny transformer from
  the same noise with the same shift and the pipeline's first-frame handling;
- the paper-scale config builds on the meta device with Wan2.2-TI2V-5B's sizes.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

from d4s.diffusion.sampler import time_grid
from d4s.models.codec import SpaceToDepthCodec
from d4s.models.config import ModelConfig
from d4s.models.ldrm import parameter_count
from d4s.models.video_dit import Conditioning, VideoDiT

ROOT = Path(__file__).resolve().parents[2]
WAN_TINY = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 48,
    "out_channels": 48,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "rope_max_seq_len": 64,
}
B, FRAMES, SIZE = 2, 5, 64  # latents [2, 2, 48, 4, 4]


@pytest.fixture
def wan():
    """A tiny random Wan transformer, and the d4s wrapper around a copy of it (camera adapter at zero)."""
    torch.manual_seed(0)
    plain = WanTransformer3DModel(**WAN_TINY).eval()
    dit = VideoDiT(copy.deepcopy(plain), SpaceToDepthCodec(16, 4), camera_channels=4, backbone="wan2.2-ti2v").eval()
    return plain, dit


def inputs(generator_seed: int = 1):
    g = torch.Generator().manual_seed(generator_seed)
    latents = torch.randn(B, 2, 48, 4, 4, generator=g)
    image = torch.cat([torch.randn(B, 1, 48, 4, 4, generator=g), torch.zeros(B, 1, 48, 4, 4)], dim=1)
    plucker = torch.randn(B, FRAMES, 6, SIZE, SIZE, generator=g)
    text = torch.randn(B, 8, 32, generator=g)
    return latents, image, plucker, text


def pipeline_call(plain, latents_bcthw, condition_bcthw, text, t):
    """``WanImageToVideoPipeline.__call__``'s TI2V branch (expand_timesteps) for one step, as in diffusers 0.42.1."""
    mask = torch.ones(1, 1, *latents_bcthw.shape[2:])
    mask[:, :, 0] = 0
    model_input = (1 - mask) * condition_bcthw + mask * latents_bcthw
    timestep = (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0).expand(latents_bcthw.shape[0], -1)
    return plain(hidden_states=model_input, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0], mask


def test_with_the_adapter_at_zero_the_output_is_plain_diffusers_wan(wan):
    plain, dit = wan
    latents, image, plucker, text = inputs()
    t = torch.tensor([0.7, 0.7])
    with torch.no_grad():
        velocity = dit(latents, image, plucker, text, t)
        reference, _ = pipeline_call(plain, latents.transpose(1, 2), image[:, :1].transpose(1, 2), text, 700.0)
    torch.testing.assert_close(velocity[:, 1:], reference.transpose(1, 2)[:, 1:], rtol=0, atol=0)  # bit for bit
    # the given first frame: the velocity that carries z_t straight to the image latent
    torch.testing.assert_close(velocity[:, :1], (latents[:, :1] - image[:, :1]) / 0.7)
    assert dit.camera_adapter.weight.abs().sum() == 0


@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_euler_sampling_equals_diffusers_flow_match_euler_with_the_ti2v_first_frame(wan, shift):
    plain, dit = wan
    noise, image, plucker, text = inputs(2)
    steps = 6
    with torch.no_grad():
        ours = dit.sample(noise, Conditioning(image, torch.zeros_like(plucker), text, text), steps, None, shift)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        scheduler.set_timesteps(sigmas=torch.linspace(1.0, 0.0, steps + 1)[:-1].tolist())
        torch.testing.assert_close(scheduler.sigmas.double(), time_grid(steps, shift), rtol=0, atol=1e-6)
        latents, condition = noise.transpose(1, 2).clone(), image[:, :1].transpose(1, 2)
        for t in scheduler.timesteps:
            prediction, mask = pipeline_call(plain, latents, condition, text, t)
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
        reference = ((1 - mask) * condition + mask * latents).transpose(1, 2)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[:, :1], image[:, :1], rtol=0, atol=1e-5)  # the first frame is the image


def test_the_paper_scale_wan_config_has_the_ti2v_5b_sizes():
    config = ModelConfig.from_yaml(ROOT / "configs/model/wan22_ti2v.yaml")
    assert config.video_dit.backbone == "wan2.2-ti2v"
    with torch.device("meta"):
        dit = VideoDiT.from_config(dataclasses.replace(config.video_dit, random_init=True))
    assert 4.9e9 < parameter_count(dit.transformer) < 5.1e9  # Wan2.2-TI2V-5B
    assert dit.latent_channels == 48 and dit.plucker.conv.stride[1:] == (16, 16)
    assert (config.ldrm.latent_channels, config.ldrm.spatial_compression) == (48, 16)


def test_a_missing_wan_folder_is_named_with_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lacks .*transformer/config\.json.*Wan2\.2-TI2V-5B-Diffusers"):
        VideoDiT.from_pretrained(tmp_path, backbone="wan2.2-ti2v")


def test_a_folder_saved_for_one_backbone_is_refused_for_the_other(wan, tmp_path):
    _, dit = wan
    dit.save_pretrained(tmp_path / "wan")
    with pytest.raises(ValueError, match=r"backbone is 'wan2.2-ti2v' there, but video_dit.backbone is 'cogvideox'"):
        VideoDiT.from_pretrained(tmp_path / "wan", camera_channels=4, codec=SpaceToDepthCodec(16, 4))
    loaded = VideoDiT.from_pretrained(tmp_path / "wan", 4, SpaceToDepthCodec(16, 4), backbone="wan2.2-ti2v")
    latents, image, plucker, text = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.eval()(latents, image, plucker, text, torch.tensor([0.5, 0.5])),
            dit(latents, image, plucker, text, torch.tensor([0.5, 0.5])),
        )


def test_the_meta_device_flops_of_a_wan_pass_match_a_real_forward():
    """``python -m d4s.models --summary``'s count (``dit_pass``) on the tiny Wan twin equals a real CPU forward's with
    attention as explicit matrix products (the fused CPU kernel is not counted by the FLOP counter)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from d4s.models.cost import dit_pass

    config = ModelConfig.from_yaml(ROOT / "configs/tiny/model_wan.yaml")
    torch.manual_seed(0)
    dit = VideoDiT.from_config(config.video_dit).eval()
    latents = torch.randn(1, 3, 48, 4, 4)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        dit(latents, torch.randn_like(latents), torch.randn(1, 9, 6, 64, 64), torch.randn(1, 8, 32), torch.ones(1) / 2)
    counted = dit_pass(config, frames=9, size=64)
    assert counted["tokens"] == 3 * 4 * 4 and counted["flops"] == pytest.approx(counter.get_total_flops())
