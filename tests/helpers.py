"""Shared test helpers: small random Gaussian scenes and cameras that look at them."""

from __future__ import annotations

import torch

from d4s.gaussians.procedural import random_field  # noqa: F401  (re-exported for tests)
from d4s.geometry import intrinsics_from_fov, look_at


def orbit_cameras(num: int, width: int, height: int, dtype: torch.dtype = torch.float32, radius: float = 0.5):
    """``num`` cameras near the origin looking at ``(0, 0, 4)``: ``c2w [C, 4, 4]``, ``K [C, 3, 3]``."""
    angles = torch.linspace(0, 2 * torch.pi, num + 1, dtype=torch.float64)[:num]
    eye = torch.stack([radius * torch.cos(angles), 0.3 * radius * torch.sin(angles), 0.2 * torch.sin(angles)], -1)
    c2w = look_at(eye, torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64).expand_as(eye)).to(dtype)
    K = intrinsics_from_fov(width, height, 60.0, dtype=dtype).expand(num, 3, 3).clone()
    K[:, 0, 2] += 0.3  # an off-centre principal point exercises cx, cy
    K[:, 1, 2] -= 0.7
    return c2w, K



def save_tiny_checkpoint(path, seed: int = 0, recipe: dict | None = None, model_config: str = "configs/tiny/model.yaml"):
    """A stage-3 checkpoint of the tiny random models, written through the module's own checkpoint hook (what
    Lightning calls when it saves), so it holds exactly what a ``python -m d4s.fit`` checkpoint holds."""
    from d4s.stages import DynamicFinetune, LPIPSConfig, Recipe

    torch.manual_seed(seed)
    lpips = LPIPSConfig(net="alex", backbone_path=None, random_backbone=True)
    module = DynamicFinetune(model_config, lpips=lpips, recipe=Recipe(**(recipe or {})))
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path
