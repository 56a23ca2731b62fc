"""LoRA: zero-initialised adapters change nothing, only they train, merged weights, errors, state-dict round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.attention_processor import Attention
from torch import nn

from d4s.models.lora import DEFAULT_TARGETS, LoRALinear, add_lora, lora_parameters

NUM_LAYERS = 2


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


def tiny_cogvideox(seed=0):
    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=8,
        out_channels=4,
        num_layers=NUM_LAYERS,
        text_embed_dim=32,
        time_embed_dim=32,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        max_text_seq_length=8,
    )


def cogvideox_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, 3, 8, 8, 8, generator=generator),  # [B, T', C, h, w]
        "encoder_hidden_states": torch.randn(1, 8, 32, generator=generator),  # [B, L, D_text]
        "timestep": torch.tensor([500]),
    }


def run_cogvideox(model, inputs):
    out = model(**inputs, return_dict=False)[0]
    assert out.shape == (1, 3, 4, 8, 8)
    return out


def randomise_lora(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(0.1 * torch.randn(p.shape, generator=generator))


def test_zero_initialised_lora_leaves_an_mlp_bitwise_unchanged():
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(5, 6)
    before = model(x)
    assert add_lora(model, ("fc2", "fc1"), rank=4) == ["fc1", "fc2"]
    assert isinstance(model.fc1, LoRALinear) and isinstance(model.head, nn.Linear)
    assert torch.equal(model(x), before)


def test_zero_initialised_lora_leaves_cogvideox_bitwise_unchanged():
    model, inputs = tiny_cogvideox(), cogvideox_inputs()
    with torch.no_grad():
        before = run_cogvideox(model, inputs)
        add_lora(model, DEFAULT_TARGETS, rank=4)
        assert torch.equal(run_cogvideox(model, inputs), before)


def test_targets_are_exactly_the_attention_projections_of_every_block():
    model = tiny_cogvideox()
    attention = [name for name, module in model.named_modules() if isinstance(module, Attention)]
    expected = sorted(f"{name}.{proj}" for name in attention for proj in ("to_q", "to_k", "to_v", "to_out.0"))
    assert len(attention) == NUM_LAYERS and len(expected) == 4 * NUM_LAYERS
    assert all(isinstance(model.get_submodule(name), nn.Linear) for name in expected)
    others = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in expected]

    assert add_lora(model, DEFAULT_TARGETS, rank=4) == expected
    assert all(isinstance(model.get_submodule(name), LoRALinear) for name in expected)
    assert all(type(model.get_submodule(name)) is nn.Linear for name in others)  # ff, norms, proj_out untouched


def test_only_lora_parameters_train_and_base_weights_stay_fixed():
    model, inputs = tiny_cogvideox(), cogvideox_inputs()
    add_lora(model, DEFAULT_TARGETS, rank=4, alpha=8)
    model.requires_grad_(False)
    lora = list(lora_parameters(model))
    for p in lora:
        p.requires_grad_(True)
    assert len(lora) == 2 * 4 * NUM_LAYERS
    lora_ids = {id(p) for p in lora}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, p in model.named_parameters() if id(p) in lora_ids}
    assert all(name.endswith((".down.weight", ".up.weight")) for name in trainable)

    base = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        before = run_cogvideox(model, inputs)
    optimiser = torch.optim.SGD(lora, lr=0.1)
    target = torch.randn_like(before, generator=torch.Generator().manual_seed(2))
    F.mse_loss(run_cogvideox(model, inputs), target).backward()
    assert all(p.grad is None for name, p in model.named_parameters() if name in base)
    optimiser.step()

    with torch.no_grad():
        assert not torch.allclose(run_cogvideox(model, inputs), before)
    assert all(torch.equal(p, base[name]) for name, p in model.named_parameters() if name in base)


def test_lora_layers_follow_the_base_layer():
    base = nn.Linear(12, 7, dtype=torch.float64)
    layer = LoRALinear(base, rank=3, alpha=6)
    assert layer.scale == 2.0 and layer.in_features == 12 and layer.out_features == 7
    assert layer.weight is base.weight and layer.bias is base.bias
    assert layer.down.weight.dtype == layer.up.weight.dtype == torch.float64
    assert layer.down.weight.shape == (3, 12) and layer.up.weight.shape == (7, 3)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert torch.count_nonzero(layer.up.weight) == 0 and torch.count_nonzero(layer.down.weight) > 0


@pytest.mark.parametrize("bias", [True, False])
def test_merged_weight_computes_the_lora_forward(bias):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 7, bias=bias), rank=3, alpha=6)
    randomise_lora(layer)
    x = torch.randn(5, 4, 12)
    with torch.no_grad():
        lora_out = layer(x)
        merged_out = F.linear(x, layer.merged_weight(), layer.bias)
        assert not torch.allclose(lora_out, layer.base(x))  # the update is not trivially zero
    torch.testing.assert_close(merged_out, lora_out, atol=1e-5, rtol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="to_nothing") as error:
        add_lora(MLP(), ("to_nothing", "attn.to_q"), rank=4)
    assert "attn.to_q" in str(error.value) and "fc1" in str(error.value)  # lists targets and Linear names
    with pytest.raises(ValueError, match="'c1'"):
        add_lora(MLP(), ("c1",), rank=4)  # names match on whole components: "c1" is not "fc1"
    with pytest.raises(ValueError, match="rank"):
        add_lora(MLP(), ("fc1",), rank=0)
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), rank=0)
    model = MLP()
    add_lora(model, ("fc1",), rank=2)
    with pytest.raises(ValueError, match="already LoRALinear"):
        add_lora(model, ("fc1", "fc2"), rank=2)
    assert type(model.fc2) is nn.Linear  # a refused call replaces nothing


def test_state_dict_round_trip(tmp_path):
    model, inputs = tiny_cogvideox(seed=0), cogvideox_inputs()
    add_lora(model, DEFAULT_TARGETS, rank=4)
    randomise_lora(model)
    torch.save(model.state_dict(), tmp_path / "lora.pt")

    fresh = tiny_cogvideox(seed=1)
    add_lora(fresh, DEFAULT_TARGETS, rank=4)
    with torch.no_grad():
        expected = run_cogvideox(model, inputs)
        assert not torch.allclose(run_cogvideox(fresh, inputs), expected)
        fresh.load_state_dict(torch.load(tmp_path / "lora.pt", weights_only=True), strict=True)
        assert torch.equal(run_cogvideox(fresh, inputs), expected)
