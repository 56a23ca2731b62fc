"""The LDRM (Sec. 3.2-3.3): shapes, pixel-aligned Gaussians on their rays, identity deformation at init, gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from d4s.geometry import intrinsics_from_fov, look_at, plucker_embedding, project_points
from d4s.models import LatentDynamicReconstructionModel, LDRMConfig, parameter_count
from d4s.models.heads import DeformationHead, GaussianHead, time_features
from d4s.models.ldrm import DEFORMATION_HEADS
from d4s.render import render

TINY = LDRMConfig(
    latent_channels=4,
    embed_dim=16,
    width=32,
    depth=4,
    heads=2,
    feature_layers=(0, 1, 2, 3),
    gaussian_stride=2,
    dpt_dim=16,
    time_dim=8,
)


def inputs(B=2, latent_frames=3, h=4, w=6, seed=0):
    """Random latents and a moving, turning camera for ``T = 4T' - 3`` frames of ``8h x 8w`` pixels."""
    generator = torch.Generator().manual_seed(seed)
    T, H, W = 4 * latent_frames - 3, 8 * h, 8 * w
    latents = torch.randn(B, latent_frames, TINY.latent_channels, h, w, generator=generator)
    eye = torch.stack([torch.linspace(0.0, 0.5, T), torch.zeros(T), torch.linspace(0.0, 0.2, T)], -1)
    c2w = look_at(eye, torch.tensor([0.3, 0.0, 4.0]).expand(T, 3)).expand(B, T, 4, 4).clone()
    K = intrinsics_from_fov(W, H, 60.0).expand(B, T, 3, 3).clone()
    return latents, plucker_embedding(c2w, K, H, W), K, c2w


def test_shapes_through_the_model_and_into_the_renderer():
    model = LatentDynamicReconstructionModel(TINY)
    latents, plucker, K, c2w = inputs()
    out = model(latents, plucker, K, c2w, torch.rand(2, 5))
    N = 9 * (32 // 2) * (48 // 2)  # one Gaussian per 2 x 2 pixels of each of the 9 source frames
    assert out.means.shape == (2, N, 3) and out.sh.shape == (2, N, 1, 3) and out.dmu.shape == (2, 5, N, 3)
    field = out.fields()[0]
    assert field.num_frames == 5 and field.num_gaussians == N
    image = render(field.at(2).detach(), c2w[0, :1], K[0, :1], width=48, height=32, backend="torch")
    assert image.rgb.shape[-3:] == (32, 48, 3) and torch.isfinite(image.rgb).all()


def test_gaussians_lie_on_their_pixels_rays():
    model = LatentDynamicReconstructionModel(TINY)
    latents, plucker, K, c2w = inputs()
    out = model(latents, plucker, K, c2w, torch.rand(2, 1))
    T, h, w = 9, 16, 24  # the Gaussian grid: frames, rows, columns (stride 2)
    means = out.means[1].detach().reshape(T, h * w, 3)
    uv, z = project_points(means, c2w[1], K[1])  # each Gaussian into its own source frame
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack([u, v], -1).reshape(-1, 2) * 2.0 + 1.0  # the centre of each 2 x 2 pixel block
    torch.testing.assert_close(uv, centres.expand(T, -1, -1), atol=1e-3, rtol=0)
    torch.testing.assert_close(z, out.depth[1].detach().reshape(T, -1), atol=1e-4, rtol=1e-4)
    assert (out.depth > TINY.near).all() and (out.depth < TINY.far).all()


def test_deformation_is_the_identity_at_initialisation():
    model = LatentDynamicReconstructionModel(TINY)
    out = model(*inputs(), torch.rand(2, 4))
    assert (out.dmu == 0).all() and (out.ds == 0).all()
    assert torch.equal(out.dq, torch.tensor([1.0, 0.0, 0.0, 0.0]).expand_as(out.dq))
    field = out.fields()[1]
    torch.testing.assert_close(field.at(3).means, field.canonical.means)
    assert model.deformation_head.is_identity()
    with torch.no_grad():
        model.deformation_head.out.weight[0, 0, 0, 0] = 1e-3
    assert not model.deformation_head.is_identity()


@pytest.mark.parametrize("time_input", ["relative", "target"])
def test_the_time_film_sees_the_target_time_relative_to_each_source_frame(time_input):
    """``relative``: the FiLM of source frame ``f`` at target time ``t`` is computed from ``(t - f / (T - 1) + 1) / 2``;
    ``target``: from ``t`` alone, the same for every source frame."""
    model = LatentDynamicReconstructionModel(LDRMConfig(**{**vars(TINY), "deformation_time": time_input}))
    seen = []
    model.deformation_head.film.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    times = torch.tensor([[0.0, 0.5, 1.0], [0.25, 0.75, 0.125]])
    model(*inputs(), times)
    T = 9
    source = torch.arange(T) / (T - 1)
    expected_time = (
        times[:, :, None] - source + 1.0 if time_input == "relative" else times[:, :, None].expand(-1, -1, T)
    )
    scale = 0.5 if time_input == "relative" else 1.0
    torch.testing.assert_close(seen[0], time_features(scale * expected_time, TINY.time_dim), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="deformation_time"):
        LDRMConfig(**{**vars(TINY), "deformation_time": "absolute"})


def test_without_target_times_the_head_is_skipped_and_the_gaussians_are_unchanged():
    model = LatentDynamicReconstructionModel(TINY)
    latents, plucker, K, c2w = inputs()
    static = model(latents, plucker, K, c2w, None)
    moving = model(latents, plucker, K, c2w, torch.rand(2, 3))
    assert static.dmu is None and static.dq is None and static.ds is None
    torch.testing.assert_close(static.means, moving.means)
    torch.testing.assert_close(static.canonical(1).means, moving.fields()[1].canonical.means)
    with pytest.raises(ValueError, match="canonical"):
        static.fields()


def test_gradient_reaches_every_parameter():
    """After two steps: the deformation output and its time FiLM start at zero weight, so gradient reaches the
    layers behind them only once those have moved."""
    torch.manual_seed(0)
    model = LatentDynamicReconstructionModel(TINY)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss():
        out = model(*inputs(), torch.rand(2, 3))
        return sum((value.float() - 0.5).square().mean() for value in vars(out).values())  # 0.5: not the init

    for _ in range(2):  # two zero-initialised layers in a row (the output, then the time FiLM) need two steps
        loss().backward()
        optimizer.step()
        optimizer.zero_grad()
    loss().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_gradient_checkpointing_gives_the_same_output():
    torch.manual_seed(0)
    plain = LatentDynamicReconstructionModel(TINY)
    checkpointed = LatentDynamicReconstructionModel(LDRMConfig(**{**vars(TINY), "gradient_checkpointing": True}))
    checkpointed.load_state_dict(plain.state_dict())
    times = torch.rand(2, 2)
    torch.testing.assert_close(checkpointed(*inputs(), times).means, plain(*inputs(), times).means)


def test_paper_scale_builds_on_the_meta_device():
    with torch.device("meta"):
        model = LatentDynamicReconstructionModel(LDRMConfig())
    assert len(model.blocks) == 16  # Sec. 4.1
    assert 1e8 < parameter_count(model) < 1e9


def test_bad_inputs_and_settings_are_named():
    model = LatentDynamicReconstructionModel(TINY)
    latents, plucker, K, c2w = inputs()
    with pytest.raises(ValueError, match="plucker: expected"):
        model(latents, plucker[:, :-1], K[:, :-1], c2w[:, :-1], torch.rand(2, 1))
    with pytest.raises(ValueError, match="gaussian_stride"):
        LDRMConfig(latent_patch=2, gaussian_stride=3)
    with pytest.raises(ValueError, match="feature_layers"):
        LDRMConfig(depth=4, feature_layers=(0, 1, 2, 9))


def test_target_times_decoded_in_chunks_match_one_pass():
    torch.manual_seed(0)
    chunked = LatentDynamicReconstructionModel(LDRMConfig(**{**vars(TINY), "time_chunk": 2}))
    whole = LatentDynamicReconstructionModel(LDRMConfig(**{**vars(TINY), "time_chunk": 64}))
    with torch.no_grad():
        chunked.deformation_head.out.weight.normal_(std=0.1)  # away from the identity, so chunks can differ
        chunked.deformation_head.film[-1].weight.normal_(std=0.1)
    whole.load_state_dict(chunked.state_dict())
    times = torch.rand(2, 5)
    torch.testing.assert_close(chunked(*inputs(), times).dmu, whole(*inputs(), times).dmu)


class ConstantVelocityHead(torch.nn.Module):
    """A deformation head of the registry's contract: every Gaussian moves by ``t * velocity``, no rotation."""

    def __init__(self, config: LDRMConfig):
        super().__init__()
        self.velocity = torch.nn.Parameter(torch.tensor([0.0, 0.0, 0.0]))
        self.upsample = config.pixels_per_token // config.gaussian_stride

    def forward(self, features, times):
        B, _, Tl, h, w = features[0].shape
        grid = (4 * Tl - 3, h * self.upsample, w * self.upsample)
        dmu = times[:, :, None, None, None, None] * self.velocity
        raw = torch.cat(
            [
                dmu.expand(-1, -1, *grid, 3),
                torch.tensor([1.0, 0, 0, 0, 0, 0, 0]).expand(B, 1, *grid, 7).expand(-1, times.shape[1], -1, -1, -1, -1),
            ],
            dim=-1,
        )
        return raw

    split = staticmethod(DeformationHead.split)

    def is_identity(self) -> bool:
        return bool((self.velocity == 0).all())


def test_the_heads_are_chosen_by_config_from_their_registries(monkeypatch):
    default = LatentDynamicReconstructionModel(TINY)
    assert isinstance(default.deformation_head, DeformationHead) and isinstance(default.gaussian_head, GaussianHead)
    monkeypatch.setitem(DEFORMATION_HEADS, "constant_velocity", ConstantVelocityHead)
    config = LDRMConfig(**{**vars(TINY), "deformation_head": "constant_velocity"})
    torch.manual_seed(0)
    model = LatentDynamicReconstructionModel(config)
    assert isinstance(model.deformation_head, ConstantVelocityHead) and model.deformation_head.is_identity()
    with torch.no_grad():
        model.deformation_head.velocity.copy_(torch.tensor([0.5, 0.0, -1.0]))
    times = torch.tensor([[0.0, 0.5, 1.0]]).expand(2, 3)
    out = model(*inputs(), times)
    field = out.fields()[0]
    for v, t in enumerate(times[0].tolist()):  # Eq. 7 through DeformableGaussianField.at, with the new head's output
        torch.testing.assert_close(
            field.at(v).means - field.canonical.means,
            t * model.deformation_head.velocity.detach().expand_as(field.canonical.means),
        )
    assert not model.deformation_head.is_identity()
    for key in ("gaussian_head", "deformation_head"):
        with pytest.raises(ValueError, match=rf"^ldrm\.{key}: .* is not one of \["):
            LDRMConfig(**{**vars(TINY), key: "nonexistent"})


@pytest.mark.parametrize(("channels", "compression", "patch"), [(16, 8, 2), (48, 16, 1)])
def test_the_ldrm_reads_either_backbones_latents_at_the_same_density(channels, compression, patch):
    """CogVideoX's latents (16 channels, 8x) and Wan2.2's (48 channels, 16x): one Gaussian per 2 x 2 pixels."""
    config = dataclasses.replace(TINY, latent_channels=channels, spatial_compression=compression, latent_patch=patch)
    torch.manual_seed(0)
    ldrm = LatentDynamicReconstructionModel(config).eval()
    T, H = 5, 64
    latents = torch.randn(1, 2, channels, H // compression, H // compression)
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]]).expand(1, T, 3, 3)
    c2w = torch.eye(4).expand(1, T, 4, 4)
    with torch.no_grad():
        out = ldrm(latents, torch.randn(1, T, 6, H, H), K, c2w, torch.tensor([[0.0, 1.0]]))
    assert out.means.shape == (1, T * (H // 2) ** 2, 3)
    assert out.dmu.shape[:2] == (1, 2) and torch.isfinite(out.means).all()
