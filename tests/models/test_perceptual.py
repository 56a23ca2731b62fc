"""LPIPS v0.1: parity with the reference ``lpips`` package (value and gradient), metric properties, loading errors,
frozen eval mode, float32 under bf16 autocast. Random backbones only: nothing is downloaded."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

from d4s.models.perceptual import LPIPS


def images(B=2, H=48, W=48, seed=0):
    """Two random image batches ``[B, 3, H, W]`` in ``[0, 1]``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, H, W, generator=generator), torch.rand(B, 3, H, W, generator=generator)


@pytest.fixture(scope="module", params=["vgg", "alex"])
def pair(request, tmp_path_factory):
    """``(ours, reference)`` sharing one random backbone, saved as a torchvision-style state dict."""
    lpips = pytest.importorskip("lpips")
    net = request.param
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision: 'pretrained' is deprecated
        ref = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    state = {}
    for key, value in ref.net.state_dict().items():  # slice{i}.{j}.weight -> features.{j}.weight
        _, j, name = key.split(".")
        state[f"features.{j}.{name}"] = value
    state["classifier.1.weight"] = torch.zeros(4, 4)  # a torchvision file has its head too; it must be ignored
    path = tmp_path_factory.mktemp(net) / f"{net}.pth"
    torch.save(state, path)
    return LPIPS(net, backbone_path=str(path)), ref


@pytest.fixture(scope="module")
def model():
    return LPIPS("alex", random_backbone=True)


def test_matches_the_reference_package_value_and_gradient(pair):
    ours, ref = pair
    x, y = images()
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = ours(x_ours, y)
    expected = ref(x_ref * 2 - 1, y * 2 - 1).flatten()
    assert out.shape == (2,) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    out.sum().backward()
    expected.sum().backward()
    assert x_ours.grad.abs().max() > 0
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-4 * x_ref.grad.abs().max().item())


def test_zero_for_identical_images_symmetric_positive_otherwise(model):
    x, y = images()
    x = x.requires_grad_()
    same = model(x, x.detach().clone())
    assert same.abs().max() < 1e-7
    same.sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(model(x, y), model(y, x), rtol=1e-6, atol=1e-7)
    assert (model(x, y) > 0).all()


def test_loading_errors(tmp_path):
    missing = tmp_path / "vgg16-missing.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        LPIPS("vgg", backbone_path=str(missing))
    with pytest.raises(FileNotFoundError, match="random_backbone"):
        LPIPS("alex")
    with pytest.raises(ValueError, match="resnet"):
        LPIPS("resnet", random_backbone=True)
    with pytest.raises(ValueError, match="random_backbone"):
        LPIPS("alex", backbone_path=str(missing), random_backbone=True)
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match=re.escape(str(wrong))):
        LPIPS("alex", backbone_path=str(wrong))
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        LPIPS("alex", linear_path=str(missing), random_backbone=True)


def test_random_backbone_is_frozen(model):
    params = list(model.parameters())
    assert len(params) == 5 + 5 * 2 and not any(p.requires_grad for p in params)


def test_stays_in_eval_mode(model):
    model.train()
    nn.Sequential(model).train(True)
    assert not any(m.training for m in model.modules())


def test_float32_under_bf16_autocast(model):
    x, y = images()
    plain = model(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, plain)


def test_shape_checks(model):
    x, y = images()
    with pytest.raises(ValueError, match=r"\(2, 3, 48, 48\), \(2, 3, 48, 40\)"):
        model(x, y[..., :40])
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model(x[:, :1], y[:, :1])
