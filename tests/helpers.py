"""Shared test helpers: small random Gaussian scenes and cameras that look at them."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

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


def _cell_texture(seed: int, cell: float):
    """Random colour per ``cell x cell`` square: distinctive texture for feature matching."""
    table = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(seed))
    return lambda u, v: table[torch.floor(u / cell).long() % 64, torch.floor(v / cell).long() % 64]


def textured_room_field():
    """A floor, a back wall, a side wall and two panels at other depths in front of the identity camera (about 13k
    Gaussians), textured so that feature matchers register its renders."""
    from d4s.gaussians.field import GaussianField
    from d4s.gaussians.procedural import plane

    x, y, z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
    return GaussianField.cat(
        [
            plane((0.0, 1.2, 4.5), x, (0.0, 0.0, -1.0), (6.0, 7.0), 0.08, _cell_texture(0, 0.25)),
            plane((0.0, -0.5, 7.0), x, y, (6.0, 3.4), 0.08, _cell_texture(1, 0.25)),
            plane((-2.2, 0.0, 4.5), z, y, (5.0, 3.0), 0.08, _cell_texture(2, 0.25)),
            plane((0.9, 0.3, 2.8), x, y, (0.8, 1.0), 0.04, _cell_texture(3, 0.12)),
            plane((-0.8, 0.5, 3.3), (0.8, 0.0, 0.6), y, (0.8, 1.0), 0.04, _cell_texture(4, 0.12)),
        ]
    )


#: prompts with an embedding in the caption cache of ``save_tiny_checkpoint(lively=True)``
CACHED_PROMPTS = ("a small test scene", "a red room", "default prompt")


def save_tiny_checkpoint(path, seed: int = 0, recipe: dict | None = None, lively: bool = True):
    """A stage-3 checkpoint of the tiny random models, written through the module's own checkpoint hook (what
    Lightning calls when it saves), so it holds exactly what a ``python -m d4s.fit`` checkpoint holds.

    ``lively``: make every input matter, as after training: the zero-initialised camera projection, time FiLM and
    deformation output get random weights, captions come from a cache of distinct random embeddings
    (``CACHED_PROMPTS``, the empty prompt and the generic one; written beside ``path``), and the flow-matching time
    shift is 3. Without it, a fresh model ignores the camera, the time and the text.
    """
    from d4s.data.schema import GENERIC_PROMPT
    from d4s.stages import DynamicFinetune, LPIPSConfig, Recipe

    path = Path(path)
    torch.manual_seed(seed)
    model_config, recipe = "configs/tiny/model.yaml", dict(recipe or {})
    if lively:
        values = yaml.safe_load(Path(model_config).read_text())
        cache = {text: torch.randn(8, 32) for text in ("", GENERIC_PROMPT, *CACHED_PROMPTS)}
        torch.save(cache, path.with_suffix(".captions.pt"))
        values["text"] = {"mode": "cache", "path": str(path.with_suffix(".captions.pt")), "max_length": 8, "dim": 32}
        model_config = path.with_suffix(".model.yaml")
        model_config.write_text(yaml.safe_dump(values))
        recipe.setdefault("flow_matching", {"shift": 3.0})
    lpips = LPIPSConfig(net="alex", backbone_path=None, random_backbone=True)
    module = DynamicFinetune(str(model_config), lpips=lpips, recipe=Recipe(**recipe))
    if lively:
        with torch.no_grad():
            for weight in (
                module.video_dit.transformer.patch_embed.proj.camera.weight,
                module.ldrm.deformation_head.film[-1].weight,
                module.ldrm.deformation_head.out.weight,
            ):
                weight.normal_(std=0.05)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path
