"""The camera-controlled video DiT: zero-init camera adapter, loading and saving (with the transformer's kind), text
modes, paper-scale sizes."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from d4s.data.schema import GENERIC_PROMPT
from d4s.diffusion import DDPMSchedule, Guidance, euler_sample
from d4s.models.backbones import cogvideox_rotary_embedding
from d4s.models.config import ModelConfig
from d4s.models.ldrm import LatentDynamicReconstructionModel, parameter_count
from d4s.models.text import TextEncoder
from d4s.models.video_dit import Conditioning, VideoDiT, VideoDiTConfig

REPO = Path(__file__).resolve().parents[2]
TINY = ModelConfig.from_yaml(REPO / "configs" / "tiny" / "model_vae.yaml")  # the tiny models with a (random) VAE


def tiny_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    noisy = torch.randn(2, 3, 4, 8, 8, generator=generator)
    image = torch.randn(2, 3, 4, 8, 8, generator=generator)
    plucker = torch.randn(2, 9, 6, 64, 64, generator=generator)
    text = torch.randn(2, 8, 32, generator=generator)
    return noisy, image, plucker, text, torch.tensor([0.1, 0.9])  # flow times


def test_zero_initialised_camera_adapter_leaves_a_pretrained_model_unchanged():
    """And the ``flow`` kind (the default) is the transformer at timestep ``t * 1000``, its output unchanged."""
    torch.manual_seed(0)
    model = VideoDiT.from_config(TINY.video_dit)
    assert model.prediction == "flow"
    pretrained = copy.deepcopy(model.transformer)
    pretrained.patch_embed.proj = pretrained.patch_embed.proj.proj  # the model as diffusers built it
    noisy, image, plucker, text, t = tiny_inputs()
    rope = cogvideox_rotary_embedding(model.transformer, 3, 8, 8, "cpu")
    before = pretrained(torch.cat([noisy, image], 2), text, t * 1000, image_rotary_emb=rope, return_dict=False)[0]
    after = model(noisy, image, plucker, text, t)
    assert torch.equal(before, after)  # exactly: the camera projection adds zeros
    with torch.no_grad():
        model.transformer.patch_embed.proj.camera.weight.normal_()
    assert not torch.allclose(model(noisy, image, plucker, text, t), before)  # and cameras do matter once trained


def test_guided_sampling_in_one_batch_equals_two_passes_per_step():
    """``VideoDiT.sample`` runs guided steps as one batch of 2B; the same ODE with two separate passes per step (the
    conditional one, then text and camera dropped) must give the same latents."""
    torch.manual_seed(0)
    model = VideoDiT.from_config(TINY.video_dit).eval()
    with torch.no_grad():
        model.transformer.patch_embed.proj.camera.weight.normal_()  # so that dropping the camera matters
    noise, image, plucker, text, _ = tiny_inputs()
    null = torch.zeros(1, *text.shape[1:])
    guidance = Guidance()
    batched = model.sample(noise, Conditioning(image, plucker, text, null), num_steps=6, guidance=guidance)

    def velocity(z, t, conditional):
        condition, camera = (text, plucker) if conditional else (null.expand_as(text), torch.zeros_like(plucker))
        return model(z, image, camera, condition, t)

    with torch.no_grad():
        separate = euler_sample(velocity, noise, num_steps=6, guidance=guidance)
        unguided = euler_sample(velocity, noise, num_steps=6)
    torch.testing.assert_close(batched, separate, atol=1e-5, rtol=1e-5)
    assert (batched - unguided).abs().max() > 1e-2  # guidance did act


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = VideoDiT.from_config(TINY.video_dit)
    with torch.no_grad():
        model.transformer.patch_embed.proj.camera.weight.normal_()
    model.save_pretrained(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "camera_adapter.safetensors").is_file()
    loaded = VideoDiT.from_pretrained(tmp_path / "tiny", camera_channels=TINY.video_dit.camera_channels)
    inputs = tiny_inputs()
    torch.testing.assert_close(loaded(*inputs), model(*inputs), rtol=0, atol=0)
    through_config = VideoDiT.from_config(VideoDiTConfig(path=str(tmp_path / "tiny"), camera_channels=4))
    torch.testing.assert_close(through_config(*inputs), model(*inputs), rtol=0, atol=0)


def test_the_kind_round_trips_through_save_and_load(tmp_path):
    """A folder saved by d4s states what its transformer predicts (``d4s_video_dit.json``); loading reads it, and a
    config that says otherwise is refused in one line naming the file and the key."""
    torch.manual_seed(0)
    schedule = DDPMSchedule(snr_shift_scale=2.0)
    config = dataclasses.replace(TINY.video_dit, prediction="v_prediction", scheduler=dataclasses.asdict(schedule))
    model = VideoDiT.from_config(config)
    with torch.no_grad():
        model.transformer.patch_embed.proj.camera.weight.normal_()
    model.save_pretrained(tmp_path / "tiny")
    stated = json.loads((tmp_path / "tiny" / "d4s_video_dit.json").read_text())
    assert stated == {"backbone": "cogvideox", "prediction": "v_prediction", "scheduler": dataclasses.asdict(schedule)}
    loaded = VideoDiT.from_pretrained(tmp_path / "tiny", camera_channels=TINY.video_dit.camera_channels)
    assert (loaded.prediction, loaded.schedule) == ("v_prediction", schedule)
    inputs = tiny_inputs()
    torch.testing.assert_close(loaded(*inputs), model(*inputs), rtol=0, atol=0)
    folder = dataclasses.replace(config, random_init=False, path=str(tmp_path / "tiny"))
    torch.testing.assert_close(VideoDiT.from_config(folder)(*inputs), model(*inputs), rtol=0, atol=0)
    for change, key in (({"prediction": "flow"}, "prediction"), ({"scheduler": {}}, "scheduler.snr_shift_scale")):
        with pytest.raises(ValueError, match=rf"d4s_video_dit.json: {key} is .* but video_dit.{key} is") as error:
            VideoDiT.from_config(dataclasses.replace(folder, **change))
        assert "\n" not in str(error.value)


def test_a_diffusers_scheduler_config_must_agree_with_the_configured_kind(tmp_path):
    """A plain diffusers folder (no ``d4s_video_dit.json``) is checked against ``scheduler/scheduler_config.json``
    when it has one (CogVideoX-5b-I2V's here); without one the config decides."""
    torch.manual_seed(0)
    VideoDiT.from_config(TINY.video_dit).save_pretrained(tmp_path / "plain")
    (tmp_path / "plain" / "d4s_video_dit.json").unlink()
    config = dataclasses.replace(TINY.video_dit, random_init=False, path=str(tmp_path / "plain"))
    assert VideoDiT.from_config(dataclasses.replace(config, prediction="v_prediction")).prediction == "v_prediction"
    shipped = {
        "_class_name": "CogVideoXDDIMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "set_alpha_to_one": True,
        "snr_shift_scale": 1.0,
        "timestep_spacing": "trailing",
    }
    (tmp_path / "plain" / "scheduler").mkdir()
    (tmp_path / "plain" / "scheduler" / "scheduler_config.json").write_text(json.dumps(shipped))
    assert VideoDiT.from_config(dataclasses.replace(config, prediction="v_prediction")).prediction == "v_prediction"
    refused = (
        (config, "prediction_type is 'v_prediction' there, but video_dit.prediction is 'flow'"),
        (
            dataclasses.replace(config, prediction="v_prediction", scheduler={"snr_shift_scale": 3.0}),
            "snr_shift_scale is 1.0 there, but video_dit.scheduler.snr_shift_scale is 3.0",
        ),
    )
    for bad, message in refused:
        with pytest.raises(ValueError, match=r"scheduler_config.json: " + message.replace(".", r"\.")) as error:
            VideoDiT.from_config(bad)
        assert "\n" not in str(error.value)


def test_bad_kinds_are_named_in_one_line():
    for values, message in (
        ({"prediction": "epsilon"}, r"^video_dit\.prediction: 'epsilon' is not one of \['flow', 'v_prediction'\]$"),
        ({"scheduler": {"beta_schedule": "cosine"}}, r"^video_dit\.scheduler\.beta_schedule: 'cosine' is not one of"),
        ({"scheduler": {"betas": [0.1]}}, r"^video_dit\.scheduler: unknown keys \['betas'\]"),
        ({"scheduler": {"beta_start": 0.02}}, r"^video_dit\.scheduler\.beta_start, beta_end: expected 0 <"),
    ):
        with pytest.raises(ValueError, match=message) as error:
            VideoDiTConfig(**values)
        assert "\n" not in str(error.value)
    partial = VideoDiTConfig(prediction="v_prediction", scheduler={"snr_shift_scale": 3.0})
    assert partial.scheduler == {**dataclasses.asdict(DDPMSchedule()), "snr_shift_scale": 3.0}  # stored in full


def test_missing_weights_name_the_path_and_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*transformer/config.json.*vae/config.json"):
        VideoDiT.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="random_init"):
        VideoDiT.from_config(VideoDiTConfig())  # no path and no explicit request for random weights


def test_text_modes(tmp_path):
    null = TextEncoder("null", max_length=8, dim=32)
    assert null(["a", ""]).shape == (2, 8, 32) and not null(["a"]).any()
    cache = {GENERIC_PROMPT: torch.ones(8, 32), "a red box": torch.full((8, 32), 2.0)}
    torch.save(cache, tmp_path / "captions.pt")
    cached = TextEncoder("cache", str(tmp_path / "captions.pt"))
    embeddings = cached(["a red box", ""])  # an empty caption is the paper's generic prompt
    assert embeddings[0].eq(2).all() and embeddings[1].eq(1).all()
    with pytest.raises(KeyError, match="no embedding"):
        cached(["a blue box"])
    with pytest.raises(FileNotFoundError, match="t5.*missing_t5"):
        TextEncoder("t5", str(tmp_path / "missing_t5"))


def test_paper_scale_models_build_on_the_meta_device():
    paper = ModelConfig.from_yaml(REPO / "configs" / "model" / "paper.yaml")
    with torch.device("meta"):
        dit = VideoDiT.from_config(dataclasses.replace(paper.video_dit, random_init=True))
        ldrm = LatentDynamicReconstructionModel(paper.ldrm)
    assert 5.5e9 < parameter_count(dit.transformer) < 5.7e9  # CogVideoX-5B
    assert len(ldrm.blocks) == 16


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = VideoDiT.from_config(TINY.video_dit)
    checkpointed = VideoDiT.from_config(dataclasses.replace(TINY.video_dit, gradient_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    for model in (plain, checkpointed):
        model.train()
        model(*tiny_inputs()).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_learned_positions_are_resampled_to_other_sizes():
    """CogVideoX-5b-I2V learned its positions at one size; training at 256/512 px (Sec. 3.4) needs others."""
    torch.manual_seed(0)
    config = dataclasses.replace(
        TINY.video_dit,
        transformer={
            **TINY.video_dit.transformer,
            "use_learned_positional_embeddings": True,
        },
    )
    model = VideoDiT.from_config(config)
    learned = model.transformer.patch_embed.pos_embedding
    native = model.transformer.patch_embed._get_positional_embeddings(8, 8, 9)
    torch.testing.assert_close(native, learned)  # at the trained size: the learned table itself
    noisy, image, _, text, t = tiny_inputs()
    small = model(noisy[..., :4, :4], image[..., :4, :4], torch.zeros(2, 9, 6, 32, 32), text, t)
    assert small.shape == (2, 3, 4, 4, 4) and torch.isfinite(small).all()
    assert not any(p.requires_grad for p in model.vae.parameters())  # and the VAE is frozen


def test_cogvideox_15_layouts_are_refused_clearly():
    config = dataclasses.replace(TINY.video_dit, transformer={**TINY.video_dit.transformer, "patch_size_t": 2})
    with pytest.raises(ValueError, match="1.5 layouts"):
        VideoDiT.from_config(config)


def test_posterior_mean_encodes_deterministically_and_keeps_the_image_apart_from_the_noise():
    torch.manual_seed(0)
    video = torch.rand(1, 5, 3, 32, 32)
    other = torch.rand(1, 5, 3, 32, 32)
    sampled = VideoDiT.from_config(dataclasses.replace(TINY.video_dit, posterior="sample"))
    mean = VideoDiT.from_config(dataclasses.replace(TINY.video_dit, posterior="mean"))
    mean.load_state_dict(sampled.state_dict())
    with torch.no_grad():
        distribution = sampled.vae.encode(video.transpose(1, 2) * 2.0 - 1.0).latent_dist
        expected = (distribution.mean * sampled.vae.config.scaling_factor).transpose(1, 2)
        a, b = (mean.encode(video, torch.Generator().manual_seed(seed)) for seed in (1, 2))
        torch.testing.assert_close(a, expected)
        torch.testing.assert_close(a, b)  # the generator no longer matters
        noisy = [sampled.encode(video, torch.Generator().manual_seed(seed)) for seed in (1, 2)]
        between_images = (mean.encode(other) - a).std()
        between_samples = (noisy[0] - noisy[1]).std()
    assert between_samples > 2 * between_images  # why random VAEs need the mean (VideoDiTConfig.posterior)
    with pytest.raises(ValueError, match="posterior"):
        dataclasses.replace(TINY.video_dit, posterior="mode")
