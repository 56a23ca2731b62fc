"""The gsplat backend: its wiring (everywhere) and its parity with the torch backend (where CUDA and gsplat's
kernels are available; on CPU the torch backend is checked against gsplat's PyTorch reference instead)."""

import pytest
import torch

from d4s.gaussians import GaussianField
from d4s.render import gsplat_available, render
from tests.helpers import orbit_cameras, random_field


@pytest.fixture
def gsplat_kernels():
    """Skip unless gsplat's CUDA kernels load (checked when the test runs: loading may JIT-compile them)."""
    if not gsplat_available():
        pytest.skip("needs CUDA and gsplat's compiled kernels")


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_forward_and_gradients_match_gsplat(gsplat_kernels, sh_degree):
    field = random_field(3000, seed=sh_degree, sh_degree=sh_degree).to("cuda")
    c2w, K = orbit_cameras(2, 96, 80)
    c2w, K = c2w.cuda(), K.cuda()
    background = torch.tensor([0.1, 0.2, 0.3], device="cuda")
    outputs, grads = [], []
    for backend in ("torch", "gsplat"):
        params = {k: v.clone().requires_grad_(True) for k, v in field.tensors().items()}
        out = render(GaussianField(**params), c2w, K, 96, 80, backend=backend, background=background)
        (out.rgb.square().sum() + out.depth.mean() + out.alpha.sum()).backward()
        outputs.append(out)
        grads.append({k: p.grad for k, p in params.items()})
    ours, theirs = outputs
    torch.testing.assert_close(ours.rgb, theirs.rgb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.alpha, theirs.alpha, atol=1e-4, rtol=1e-4)
    covered = theirs.alpha > 1e-2  # expected depth divides by alpha: compare where it is well defined
    torch.testing.assert_close(ours.depth[covered], theirs.depth[covered], atol=1e-4, rtol=1e-4)
    for key in grads[0]:  # gsplat's own gradient tolerances are 1e-3 .. 8e-3
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=5e-3, rtol=5e-3)


def test_gsplat_backend_passes_world_to_camera_matrices_and_activated_values(monkeypatch):
    """Runs everywhere: a stand-in for gsplat.rasterization records what the backend hands to gsplat."""
    import gsplat

    from d4s.render.gsplat_backend import render_gsplat

    field = random_field(40, seed=1, sh_degree=2)
    c2w, K = orbit_cameras(2, 12, 10)
    seen = {}

    def fake_rasterization(**kwargs):
        seen.update(kwargs)
        colors = torch.arange(2 * 10 * 12 * 4, dtype=torch.float32).reshape(2, 10, 12, 4)
        return colors, colors[..., :1] * 0 + 0.25, {}

    monkeypatch.setattr(gsplat, "rasterization", fake_rasterization)
    out = render_gsplat(field, c2w, K, 12, 10, background=torch.zeros(2, 3))
    torch.testing.assert_close(seen["viewmats"] @ c2w, torch.eye(4).expand(2, 4, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(seen["scales"], field.scales)
    torch.testing.assert_close(seen["opacities"], field.opacities)
    assert seen["colors"] is field.sh and seen["sh_degree"] == 2 and seen["Ks"] is K
    assert seen["render_mode"] == "RGB+ED" and seen["rasterize_mode"] == "classic"
    assert (seen["width"], seen["height"]) == (12, 10)
    assert out.rgb.shape == (2, 10, 12, 3) and out.depth.shape == (2, 10, 12) and out.alpha.shape == (2, 10, 12)
    assert out.depth[0, 0, 0] == 3 and out.rgb[0, 0, 1, 0] == 4 and (out.alpha == 0.25).all()
