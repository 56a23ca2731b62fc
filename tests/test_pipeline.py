"""The inference pipeline: checkpoint loading (config, EMA, LoRA), the sampling chain, and thinning."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import yaml

from d4s.diffusion.sampler import Guidance, SamplingConfig
from d4s.gaussians.field import DeformableGaussianField
from d4s.gaussians.procedural import random_field
from d4s.geometry.cameras import intrinsics_from_fov
from d4s.geometry.plucker import plucker_embedding
from d4s.geometry.trajectories import make_trajectory
from d4s.pipeline import Diff4SplatPipeline, read_checkpoint, thin_field
from d4s.stages import Recipe
from tests.helpers import save_tiny_checkpoint

T, SIZE = 5, 32


def inputs(seed: int = 0):
    image = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return image, make_trajectory("spiral", T, 2.0), intrinsics_from_fov(SIZE, SIZE, 55.0)


def test_sampling_chain_matches_the_equations(tmp_path):
    """Two Euler steps of Eq. 2's flow on the training time shift with constant CFG, written out by hand against the
    same networks, then the LDRM on the result: the pipeline must compute exactly this."""
    path = save_tiny_checkpoint(tmp_path / "a.ckpt")  # camera, text, time and shift all matter (see the helper)
    pipeline = Diff4SplatPipeline.from_checkpoint(path)
    assert pipeline.flow.shift == 3.0
    image, c2w, K = inputs()
    guidance = Guidance(max_scale=2.0, schedule="constant")  # gamma = 3 at every step
    result = pipeline(image, c2w, K, "a red room", num_steps=2, guidance=guidance, seed=7)

    dit, ldrm = pipeline.video_dit, pipeline.ldrm
    captions = torch.load(path.with_suffix(".captions.pt"))
    text, null = captions["a red room"][None], captions[""][None]
    latents = dit.image_latents(image[None], 2, torch.Generator().manual_seed(7))
    z = torch.randn(latents.shape, generator=torch.Generator().manual_seed(7))
    plucker = plucker_embedding(c2w, K.expand(T, 3, 3), SIZE, SIZE)[None]
    times = [1.0, 3 * 0.5 / (1 + 2 * 0.5), 0.0]  # 1, 1/2, 0 shifted by 3: t' = 3t / (1 + 2t)
    with torch.no_grad():
        for t, t_next in itertools.pairwise(times):
            v_cond = dit(z, latents, plucker, text, torch.tensor([t]))
            v_uncond = dit(z, latents, torch.zeros_like(plucker), null, torch.tensor([t]))
            assert (v_cond - v_uncond).abs().max() > 1e-3  # guidance has something to amplify
            z = z + (t_next - t) * (v_uncond + 3.0 * (v_cond - v_uncond))
        expected = ldrm(z, plucker, K.expand(1, T, 3, 3), c2w[None], torch.linspace(0, 1, T)[None]).fields()[0]
    torch.testing.assert_close(result.latents, z[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.field.canonical.means, expected.canonical.means, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(result.field.dmu, expected.dmu, rtol=1e-4, atol=1e-4)
    assert result.field.dmu[1:].abs().max() > 1e-4  # the scene moves: time reaches the deformation head
    assert result.grid == (T, SIZE // 2, SIZE // 2) and result.field.num_frames == T
    assert set(result.timings) == {"text", "encode", "sampling", "ldrm"}
    unguided = pipeline(image, c2w, K, "a red room", num_steps=2, guidance=None, seed=7)
    assert (unguided.latents - result.latents).abs().max() > 1e-3
    # the typed call that generate, evaluation and the demo make: the same chain
    sampling = SamplingConfig(steps=2, guidance=2.0, guidance_schedule="constant", seed=7)
    assert torch.equal(pipeline.generate(image, c2w, K, "a red room", sampling).latents, result.latents)
    no_guidance = SamplingConfig(steps=2, guidance=0.0, seed=7)
    assert no_guidance.guidance_rule() is None
    assert torch.equal(pipeline.generate(image, c2w, K, "a red room", no_guidance).latents, unguided.latents)


@pytest.mark.parametrize(
    ("field", "value"), [("steps", 0), ("guidance", -1.0), ("guidance_skip_below", -1e-3), ("guidance_schedule", "x")]
)
def test_sampling_settings_are_checked(field, value):
    with pytest.raises(ValueError, match=f"^{field}"):
        SamplingConfig(**{field: value})


def test_a_config_that_builds_another_model_is_refused(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "a.ckpt")
    stored = path.with_suffix(".model.yaml").read_text()
    (tmp_path / "near.yaml").write_text(stored.replace("ldrm:\n", "ldrm:\n  near: 0.5\n"))
    with pytest.raises(ValueError, match="ldrm.near: 0.1 in the checkpoint, 0.5 in"):
        Diff4SplatPipeline.from_checkpoint(path, config=tmp_path / "near.yaml")
    (tmp_path / "v.yaml").write_text(stored.replace("video_dit:\n", "video_dit:\n  prediction: v_prediction\n"))
    with pytest.raises(ValueError, match="video_dit.prediction: 'flow' in the checkpoint, 'v_prediction' in"):
        Diff4SplatPipeline.from_checkpoint(path, config=tmp_path / "v.yaml")  # another reading of the same weights
    (tmp_path / "text.yaml").write_text(stored.replace("mode: cache", "mode: 'null'"))  # text settings may differ
    assert Diff4SplatPipeline.from_checkpoint(path, config=tmp_path / "text.yaml").text.mode == "null"
    (tmp_path / "broken.yaml").write_text("ldrm: [unclosed")
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML"):
        Diff4SplatPipeline.from_checkpoint(path, config=tmp_path / "broken.yaml")


def test_ema_weights_are_used_unless_asked_not_to(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "ema.ckpt", recipe={"ema_decay": 0.999})
    checkpoint = torch.load(path, weights_only=True)
    key = "ema.ldrm__project__weight"
    checkpoint["state_dict"][key] = checkpoint["state_dict"][key] + 0.5  # the average drifted from the raw weights
    torch.save(checkpoint, path)
    raw = checkpoint["state_dict"]["ldrm.project.weight"]
    with_ema = Diff4SplatPipeline.from_checkpoint(path)
    without = Diff4SplatPipeline.from_checkpoint(path, use_ema=False)
    torch.testing.assert_close(with_ema.ldrm.project.weight, raw + 0.5)
    torch.testing.assert_close(without.ldrm.project.weight, raw)


def test_lora_checkpoints_and_explicit_configs_load(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "lora.ckpt", recipe={"dit": "lora", "lora_rank": 4})
    checkpoint = torch.load(path, weights_only=True)
    lora_keys = [k for k in checkpoint["state_dict"] if k.endswith((".down.weight", ".up.weight"))]
    assert lora_keys
    pipeline = Diff4SplatPipeline.from_checkpoint(path, config="configs/tiny/model.yaml")
    own = dict(pipeline.video_dit.named_parameters(prefix="video_dit"))
    for key in lora_keys:
        torch.testing.assert_close(own[key], checkpoint["state_dict"][key])


def test_unreadable_checkpoints_are_named(tmp_path):
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.ckpt: not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "text.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="not a d4s training checkpoint"):
        read_checkpoint(tmp_path / "foreign.ckpt")
    path = save_tiny_checkpoint(tmp_path / "no_config.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["d4s_model_config"]
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="--config"):
        Diff4SplatPipeline.from_checkpoint(path)
    assert Diff4SplatPipeline.from_checkpoint(path, config="configs/tiny/model.yaml").ldrm.config.width == 64
    wider = tmp_path / "wider.yaml"  # without a stored config, only the weights can tell
    wider.write_text(Path("configs/tiny/model.yaml").read_text().replace("  width: 64", "  width: 96"))
    with pytest.raises(ValueError, match="does not fit the model config .* tensors of another shape .*ldrm"):
        Diff4SplatPipeline.from_checkpoint(path, config=wider)


def test_inputs_are_checked(tmp_path):
    pipeline = Diff4SplatPipeline.from_checkpoint(save_tiny_checkpoint(tmp_path / "a.ckpt"))
    image, c2w, K = inputs()
    with pytest.raises(ValueError, match="4k \\+ 1"):
        pipeline(image, c2w[:4], K)
    moved = c2w.clone()
    moved[:, 0, 3] += 1.0
    with pytest.raises(ValueError, match="first camera must be the identity"):
        pipeline(image, moved, K)
    assert pipeline.size_multiple == 8  # the codec's 8 x 8 blocks times the tiny DiT's patch size 1
    with pytest.raises(ValueError, match="multiples of 8"):
        pipeline(image[:, :20], c2w, K)
    with pytest.raises(ValueError, match="K"):
        pipeline(image, c2w, K.expand(3, 3, 3))


def test_thin_field_keeps_every_kth_gaussian_per_row_and_column():
    frames, h, w = 2, 4, 6
    canonical = random_field(frames * h * w, seed=3)
    field = DeformableGaussianField.static(canonical, 3)
    field.dmu.normal_(generator=torch.Generator().manual_seed(0))
    thinned = thin_field(field, (frames, h, w), stride=2)
    index = [f * h * w + r * w + c for f in range(frames) for r in range(0, h, 2) for c in range(0, w, 2)]
    assert torch.equal(thinned.canonical.means, canonical.means[index])
    assert torch.equal(thinned.dmu, field.dmu[:, index])
    torch.testing.assert_close(thinned.canonical.scales, canonical.scales[index] * 2)

    keep = canonical.opacities >= 0.5
    dense = thin_field(field, (frames, h, w), stride=1, min_opacity=0.5)
    assert torch.equal(dense.canonical.means, canonical.means[keep])
    assert dense.num_gaussians == int(keep.sum()) < canonical.num_gaussians
    with pytest.raises(ValueError, match="grid"):
        thin_field(field, (frames, h, w + 1))


def test_bfloat16_runs_the_autocast_path_and_returns_a_float32_field(tmp_path):
    """The GPU default (bf16 DiT weights, LDRM under autocast, float32 ODE state), exercised on the CPU."""
    path = save_tiny_checkpoint(tmp_path / "a.ckpt")
    image, c2w, K = inputs()
    half = Diff4SplatPipeline.from_checkpoint(path, dtype=torch.bfloat16, offload_text=True)
    full = Diff4SplatPipeline.from_checkpoint(path)
    assert next(half.video_dit.parameters()).dtype == torch.bfloat16
    a = half(image, c2w, K, "a red room", num_steps=3, seed=1)
    b = full(image, c2w, K, "a red room", num_steps=3, seed=1)
    assert a.latents.dtype == torch.float32 and a.field.canonical.means.dtype == torch.float32
    assert a.field.dmu.dtype == torch.float32
    a.field.check_finite()
    # bf16 keeps about 3 significant digits: the same scene, not the same bits
    assert (a.latents - b.latents).abs().mean() < 0.05 * b.latents.abs().mean()


def test_a_recipe_with_the_old_timestep_scale_still_loads(tmp_path):
    """Older checkpoints store ``num_train_timesteps: 1000`` in ``recipe.flow_matching`` (the scale now lives in the
    video DiT): the pipeline and a resumed stage's ``Recipe`` drop it; another value is refused in one line."""
    path = save_tiny_checkpoint(tmp_path / "old.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    recipe = checkpoint["hyper_parameters"]["recipe"]
    recipe["flow_matching"]["num_train_timesteps"] = 1000
    torch.save(checkpoint, path)
    pipeline = Diff4SplatPipeline.from_checkpoint(path)
    assert pipeline.flow.shift == 3.0 and Recipe(**recipe).flow_matching == pipeline.flow
    recipe["flow_matching"]["num_train_timesteps"] = 999
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="flow_matching.num_train_timesteps: only 1000"):
        Diff4SplatPipeline.from_checkpoint(path)


def test_a_checkpoint_from_before_a_new_model_setting_still_accepts_its_own_config(tmp_path):
    """Settings added to the model config since a checkpoint was written take their defaults when the stored config
    is compared with ``--config`` (an old checkpoint lacks ``video_dit.posterior``), and the reconstruction path
    runs the LDRM alone on a video."""
    path = save_tiny_checkpoint(tmp_path / "old.ckpt", lively=False)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["d4s_model_config"]["video_dit"]["posterior"]
    model_yaml = tmp_path / "model.yaml"
    values = yaml.safe_load(Path("configs/tiny/model.yaml").read_text())
    values["video_dit"]["posterior"] = "sample"  # what the old checkpoint was trained with (the then default)
    model_yaml.write_text(yaml.safe_dump(values))
    torch.save(checkpoint, path)
    pipeline = Diff4SplatPipeline.from_checkpoint(path, config=model_yaml)
    T = 5
    c2w = make_trajectory("forward", T, 2.0)
    K = intrinsics_from_fov(64, 64, 60.0)
    result = pipeline.reconstruct(torch.rand(T, 3, 64, 64), c2w, K)
    assert result.grid == (T, 32, 32) and result.field.num_frames == T
    assert set(result.timings) == {"encode", "ldrm"}
    with pytest.raises(ValueError, match="video"):
        pipeline.reconstruct(torch.rand(T - 1, 3, 64, 64), c2w, K)
