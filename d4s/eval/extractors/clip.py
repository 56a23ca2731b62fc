"""CLIP image and text embeddings: CLIP-Score, CLIP-Aesthetic's input and VBench background consistency.

A local transformers ``CLIPModel`` folder with its tokenizer (``openai/clip-vit-base-patch32`` or
``openai/clip-vit-large-patch14``). Images are preprocessed in torch as ``CLIPImageProcessor`` does (bicubic
shorter side to the model's image size, centre crop, CLIP mean/std), so tensors go in directly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from d4s.eval.extractors._hf import load_local_model
from d4s.eval.extractors._preprocess import check_frames, clip_pixels
from d4s.eval.extractors.errors import WEIGHTS
from d4s.utils.checks import check_shape


def _embeddings(output) -> Tensor:
    """The projected embeddings of ``get_image_features`` / ``get_text_features`` (a tensor or a model output)."""
    return output if isinstance(output, Tensor) else output.pooler_output


class CLIP:
    """``CLIP.load(path)``; ``.image_features(frames [N, 3, H, W]) -> [N, D]``, ``.text_features(texts) -> [N, D]``,
    both L2-normalised float32 on the CPU. ``batch_size``: images per forward pass; the model runs where its
    parameters are (``load(..., device=...)``)."""

    def __init__(self, model, tokenizer, batch_size: int = 32):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.device = next(model.parameters()).device
        self.image_size = int(model.config.vision_config.image_size)
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def load(
        cls, path: str | Path | None, name: str = "clip_b32", batch_size: int = 32, device: str | torch.device = "cpu"
    ) -> CLIP:
        """Load a ``CLIPModel`` and its tokenizer from the local folder ``path``, offline, onto ``device``.

        ``name``: the registry entry it serves (``"clip_b32"`` or ``"clip_l14"``), for the error messages.
        Raises ``MissingWeights`` when ``path`` is ``None`` or absent, ``ValueError`` naming the folder when it holds
        no CLIP model or no tokenizer.
        """
        from transformers import AutoTokenizer, CLIPModel

        model = load_local_model(name, path, CLIPModel, "clip")
        folder = Path(path)
        if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()):
            # transformers would build an empty tokenizer without complaint
            raise ValueError(f"{WEIGHTS[name].metric}: {folder}: no tokenizer files (tokenizer.json or vocab.json)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ValueError(f"{WEIGHTS[name].metric}: {folder}: cannot load the CLIP tokenizer: {err}") from err
        return cls(model.to(device), tokenizer, batch_size=batch_size)

    @torch.no_grad()
    def image_features(self, frames: Tensor) -> Tensor:
        """``frames [N, 3, H, W]`` float in ``[0, 1]`` -> L2-normalised image embeddings ``[N, D]``."""
        frames = check_frames(frames)
        out = []
        for start in range(0, frames.shape[0], self.batch_size):
            pixels = clip_pixels(frames[start : start + self.batch_size].to(self.device), self.image_size)
            out.append(_embeddings(self.model.get_image_features(pixel_values=pixels)))
        return F.normalize(torch.cat(out).float(), dim=-1).cpu()

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> Tensor:
        """``texts`` (N strings) -> L2-normalised text embeddings ``[N, D]`` (truncated to the model's context)."""
        if isinstance(texts, str) or not texts or not all(isinstance(text, str) for text in texts):
            raise ValueError(f"texts: expected a non-empty list of strings, got {texts!r}")
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        output = self.model.get_text_features(
            input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
        )
        return F.normalize(_embeddings(output).float(), dim=-1).cpu()


def clip_score(image_feats: Tensor, text_feats: Tensor, scale: float = 100.0, clamp: bool = True) -> Tensor:
    """CLIP-Score per pair: ``scale * cos(image_feats, text_feats)``, clamped at 0 -> ``[N]``.

    ``image_feats [N, D]``, ``text_feats [N, D]`` or ``[1, D]`` (one prompt for every image); need not be normalised.
    The default is torchmetrics' ``CLIPScore`` (Hessel et al. 2021 without its 2.5 weight: ``100 * max(cos, 0)``);
    ``scale=2.5`` gives pyiqa's (Hessel et al.'s weight; Diff4Splat's 23.1 is on the x100 scale), ``scale=1, clamp=False`` the raw cosine.
    """
    check_shape(image_feats, "image_feats", (None, None))
    check_shape(text_feats, "text_feats", (None, image_feats.shape[1]))
    if text_feats.shape[0] not in (1, image_feats.shape[0]):
        raise ValueError(f"text_feats: expected [{image_feats.shape[0]} or 1, D], got {list(text_feats.shape)}")
    cosine = (F.normalize(image_feats.float(), dim=-1) * F.normalize(text_feats.float(), dim=-1)).sum(-1)
    return scale * (cosine.clamp_min(0.0) if clamp else cosine)
