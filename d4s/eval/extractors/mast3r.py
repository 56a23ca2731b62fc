"""MASt3R matches between the input view and a generated view (Avg. Matches, paper Table 1, Appendix D).

Optional: MASt3R (Leroy et al. 2024) is under a non-commercial licence, so neither the package nor its checkpoint is
a dependency. Install it yourself (``git clone --recursive https://github.com/naver/mast3r`` and put it and its
``dust3r`` submodule on ``PYTHONPATH``) and point ``weights.mast3r`` (``configs/eval.yaml``) at the checkpoint.

As MASt3R's demo: each image is prepared as dust3r's ``load_images(size=512)`` does (``dust3r/utils/image.py``):
8-bit RGB resized with PIL to 512 px on the long side (Lanczos when shrinking, bicubic when enlarging), then
centre-cropped to multiples of 16, a square image to 4:3 (``square_ok=False``), and mapped to ``[-1, 1]``. The
descriptors are matched with ``fast_reciprocal_NNs`` (subsample 8, dot product), and matches within 3 px of a border
are dropped.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from d4s.eval.extractors._preprocess import check_frames
from d4s.eval.extractors.errors import require_path

INSTALL_HINT = (
    "MASt3R matches: the optional 'mast3r' package is not importable; it is non-commercial and user-installed: "
    "git clone --recursive https://github.com/naver/mast3r and add it and mast3r/dust3r to PYTHONPATH"
)
LONG_SIDE = 512
PATCH = 16


def _import(module: str):
    """``importlib.import_module(module)``, with ``ImportError`` carrying the install hint when MASt3R is absent."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err


class Mast3rMatcher:
    """``Mast3rMatcher.load(path).count_matches(image_a [3, H, W], image_b [3, H, W]) -> int``."""

    def __init__(self, model, subsample: int = 8, border: int = 3):
        self.model, self.subsample, self.border = model, subsample, border
        self.device = next(model.parameters()).device

    @classmethod
    def load(
        cls, path: str | Path | None, subsample: int = 8, border: int = 3, device: str | torch.device = "cpu"
    ) -> Mast3rMatcher:
        """Load the MASt3R checkpoint at ``path`` onto ``device``.

        Raises ``MissingWeights`` when ``path`` is ``None`` or absent, ``ImportError`` with the install hint when the
        ``mast3r`` package is not importable, ``ValueError`` naming the file when it is not a MASt3R checkpoint.
        """
        path = require_path("mast3r", path)
        model_module = _import("mast3r.model")
        try:
            model = model_module.AsymmetricMASt3R.from_pretrained(str(path))
        except (OSError, KeyError, RuntimeError, ValueError) as err:
            raise ValueError(f"MASt3R matches: {path} is not a MASt3R checkpoint: {err}") from err
        return cls(model.to(device).eval().requires_grad_(False), subsample=subsample, border=border)

    @staticmethod
    def _view(image: Tensor, index: int) -> dict:
        """A dust3r view dict of ``image [3, H, W]`` in ``[0, 1]``, prepared as ``load_images(size=512)`` (module
        docstring): ``img [1, 3, h, w]`` in ``[-1, 1]`` and its ``true_shape [[h, w]]``."""
        array = (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        picture = Image.fromarray(array)
        longest = max(picture.size)
        method = Image.Resampling.LANCZOS if longest > LONG_SIDE else Image.Resampling.BICUBIC
        picture = picture.resize(tuple(round(side * LONG_SIDE / longest) for side in picture.size), method)
        width, height = picture.size
        cx, cy = width // 2, height // 2
        half_w, half_h = (2 * cx) // PATCH * PATCH // 2, (2 * cy) // PATCH * PATCH // 2
        if width == height:
            half_h = 3 * half_w // 4
        picture = picture.crop((cx - half_w, cy - half_h, cx + half_w, cy + half_h))
        pixels = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)[None].float() / 255.0 * 2.0 - 1.0
        true_shape = torch.tensor([[2 * half_h, 2 * half_w]], dtype=torch.int32)
        return {"img": pixels, "true_shape": true_shape, "idx": index, "instance": str(index)}

    @torch.no_grad()
    def count_matches(self, image_a: Tensor, image_b: Tensor) -> int:
        """Reciprocal MASt3R descriptor matches between ``image_a [3, H, W]`` and ``image_b`` (``[0, 1]``), away
        from the borders."""
        frames = check_frames(torch.stack([image_a, image_b]), "image_a, image_b")
        inference = _import("dust3r.inference").inference
        fast_reciprocal_nns = _import("mast3r.fast_nn").fast_reciprocal_NNs
        views = [self._view(frames[0], 0), self._view(frames[1], 1)]
        output = inference([tuple(views)], self.model, self.device, batch_size=1, verbose=False)
        desc_a, desc_b = output["pred1"]["desc"][0], output["pred2"]["desc"][0]
        xy_a, xy_b = fast_reciprocal_nns(
            desc_a, desc_b, subsample_or_initxy1=self.subsample, device=self.device, dist="dot", block_size=2**13
        )
        (height_a, width_a), (height_b, width_b) = desc_a.shape[:2], desc_b.shape[:2]
        keep = _inside(xy_a, width_a, height_a, self.border) & _inside(xy_b, width_b, height_b, self.border)
        return int(keep.sum())


def _inside(xy, width: int, height: int, border: int):
    """Which ``xy [N, 2]`` pixel coordinates lie at least ``border`` pixels inside a ``width x height`` image."""
    x, y = xy[:, 0], xy[:, 1]
    return (x >= border) & (x < width - border) & (y >= border) & (y < height - border)
