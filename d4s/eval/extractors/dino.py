"""DINO ViT-B/16 CLS features for VBench subject consistency (Huang et al. 2024, "VBench").

A local transformers ``ViTModel`` folder (``facebook/dino-vitb16``). Preprocessing as VBench's DINO transform:
the shorter side is scaled to 224 (bilinear, aspect kept), ImageNet mean/std; the position embeddings are
interpolated for non-square frames, as the original DINO does. The feature is the final-layer-normed CLS token.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from d4s.eval.extractors._hf import load_local_model
from d4s.eval.extractors._preprocess import IMAGENET_MEAN, IMAGENET_STD, check_frames, normalize, resize_short_side

RESOLUTION = 224


class DINO:
    """``DINO.load(path).features(frames [N, 3, H, W]) -> [N, D]`` (CLS token, not normalised; D = 768 for
    ViT-B/16), returned on the CPU. ``resolution``: the shorter side the frames are scaled to; ``batch_size``: frames
    per pass; the model runs where its parameters are (``load(..., device=...)``)."""

    def __init__(self, model, resolution: int = RESOLUTION, batch_size: int = 32):
        self.model, self.resolution, self.batch_size = model, resolution, batch_size
        self.device = next(model.parameters()).device

    @classmethod
    def load(
        cls,
        path: str | Path | None,
        resolution: int = RESOLUTION,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ) -> DINO:
        """Load the ``ViTModel`` in the local folder ``path`` offline onto ``device``, without its pooler.

        Raises ``MissingWeights`` when ``path`` is ``None`` or absent, ``ValueError`` naming the folder when it holds
        no ViT model.
        """
        from transformers import ViTModel

        model = load_local_model("dino", path, ViTModel, "vit", add_pooling_layer=False)
        return cls(model.to(device), resolution=resolution, batch_size=batch_size)

    @torch.no_grad()
    def features(self, frames: Tensor) -> Tensor:
        """``frames [N, 3, H, W]`` float in ``[0, 1]`` -> CLS features ``[N, D]`` float32."""
        frames = check_frames(frames)
        out = []
        for start in range(0, frames.shape[0], self.batch_size):
            batch = frames[start : start + self.batch_size].to(self.device)
            batch = resize_short_side(batch, self.resolution, "bilinear", antialias=False)
            pixels = normalize(batch, IMAGENET_MEAN, IMAGENET_STD)
            hidden = self.model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
            out.append(hidden[:, 0])
        return torch.cat(out).float().cpu()
