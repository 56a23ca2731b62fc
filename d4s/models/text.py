"""Text conditioning: T5 caption embeddings ``[B, L, D]`` for the video DiT (CogVideoX: T5-XXL, L = 226, D = 4096).

Three modes, chosen in the config:

- ``t5``: a local T5 encoder directory (``transformers`` format: ``config.json``, weights, tokenizer files): T5 for
  CogVideoX (no attention mask), or UMT5 for Wan2.2 (``model_type: umt5``: attention mask, zeros past the caption,
  as Wan's pipeline encodes);
- ``cache``: a file of precomputed embeddings, ``torch.save({caption: [L, D] tensor})`` (training on a fixed caption
  set without holding an 11 GB encoder in memory); a caption missing from the cache is an error;
- ``null``: zeros, the "no text" condition.

:meth:`TextEncoder.null` is the unconditional branch of classifier-free guidance: T5 of the empty prompt, as in
CogVideoX (the caption cache stores it under ``""``).

Captions default to the paper's generic prompt (Appendix C.1) when empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from d4s.data.schema import GENERIC_PROMPT
from d4s.utils.checks import check_choice

TextMode = Literal["t5", "cache", "null"]


def load_t5_tokenizer(folder: Path):
    """T5's tokenizer from ``folder``: its SentencePiece model ``spiece.model`` (how CogVideoX-5b-I2V ships it, with
    no ``tokenizer.json``; read by ``T5Tokenizer`` through the pinned ``sentencepiece``, whatever JSON files lie
    beside it), else a ``tokenizers`` file ``tokenizer.json``. ``FileNotFoundError`` naming the folder when it holds
    neither."""
    from transformers import AutoTokenizer, T5Tokenizer

    if (folder / "spiece.model").is_file():
        return T5Tokenizer.from_pretrained(str(folder))
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(folder))
    raise FileNotFoundError(
        f"text encoder: {folder} holds no T5 tokenizer (spiece.model or tokenizer.json); CogVideoX-5b-I2V keeps it "
        "in tokenizer/ beside text_encoder/ (or set text.tokenizer_path)"
    )


class TextEncoder(nn.Module):
    """Caption embeddings ``[B, max_length, dim]`` (see the module docstring for the modes). Frozen."""

    def __init__(
        self,
        mode: TextMode = "null",
        path: str | None = None,
        max_length: int = 226,
        dim: int = 4096,
        tokenizer_path: str | None = None,
    ):
        super().__init__()
        check_choice(mode, "text.mode", TextMode)
        self.mode, self.max_length, self.dim = mode, max_length, dim
        self.cache: dict[str, Tensor] = {}
        self.tokenizer = self.encoder = None
        self.padded_with_zeros = False
        if mode == "null":
            return
        if path is None or not Path(path).exists():
            expected = "config.json, model weights and tokenizer files" if mode == "t5" else "a torch.save'd dict"
            raise FileNotFoundError(f"text encoder ({mode}): {path} not found; expected {expected} there")
        if mode == "cache":
            self.cache = torch.load(path, map_location="cpu", weights_only=True)
            return
        from transformers import AutoConfig, T5EncoderModel, UMT5EncoderModel

        if tokenizer_path is None:  # CogVideoX keeps the tokenizer in a sibling folder of text_encoder/
            sibling = Path(path).parent / "tokenizer"
            tokenizer_path = str(sibling) if sibling.is_dir() else path
        self.tokenizer = load_t5_tokenizer(Path(tokenizer_path))
        # T5 (CogVideoX) or UMT5 (Wan2.2), by the folder's model_type; Wan zeroes the embeddings past each caption
        self.padded_with_zeros = AutoConfig.from_pretrained(path).model_type == "umt5"
        model_class = UMT5EncoderModel if self.padded_with_zeros else T5EncoderModel
        self.encoder = model_class.from_pretrained(path).eval().requires_grad_(False)
        if len(self.tokenizer) < self.encoder.config.vocab_size // 2:  # transformers builds a blank one silently
            raise ValueError(
                f"text encoder: the tokenizer at {tokenizer_path} has {len(self.tokenizer)} tokens for a model of "
                f"{self.encoder.config.vocab_size}; point tokenizer_path at the T5 tokenizer files (spiece.model ...)"
            )
        self.dim = self.encoder.config.d_model

    @torch.no_grad()
    def forward(self, captions: list[str], device: torch.device | str = "cpu") -> Tensor:
        captions = [caption or GENERIC_PROMPT for caption in captions]
        if self.mode == "null":
            return self.null(len(captions), device)
        if self.mode == "cache":
            missing = [c for c in captions if c not in self.cache]
            if missing:
                raise KeyError(f"text cache: no embedding for {missing[:3]} ({len(missing)} missing)")
            return torch.stack([self.cache[c] for c in captions]).to(device)
        return self.embed(captions, device)

    @torch.no_grad()
    def embed(self, captions: list[str], device: torch.device | str = "cpu") -> Tensor:
        """T5 embeddings of exactly these strings (``t5`` mode; no generic-prompt substitution)."""
        if self.encoder is None:
            raise ValueError(f"text encoder: embed needs mode 't5', this one is {self.mode!r}")
        tokens = self.tokenizer(
            captions, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).to(device)
        if not self.padded_with_zeros:
            return self.encoder(tokens.input_ids).last_hidden_state  # no attention mask, as CogVideoX was trained
        mask = tokens.attention_mask  # as Wan's pipeline: the caption's tokens attended, zeros after them
        return self.encoder(tokens.input_ids, mask).last_hidden_state * mask[..., None]

    @torch.no_grad()
    def null(self, batch_size: int, device: torch.device | str = "cpu") -> Tensor:
        """The no-text condition ``[B, max_length, dim]``: T5 of the empty prompt, as CogVideoX's unconditional
        branch (``t5`` mode, or the cache's ``""`` entry); zeros in ``null`` mode."""
        if self.mode == "t5":
            return self.embed([""], device).expand(batch_size, -1, -1)
        if self.mode == "cache" and "" in self.cache:
            return self.cache[""].to(device).expand(batch_size, -1, -1)
        return torch.zeros(batch_size, self.max_length, self.dim, device=device)
