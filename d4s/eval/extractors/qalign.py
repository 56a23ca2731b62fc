"""Q-Align image quality (Wu et al. 2023, "Q-Align: Teaching LMMs for Visual Scoring via Discrete Text-Defined
Levels"; QA-Quality in the paper's Appendix D).

The scorer is the ``q-future/one-align`` mPLUG-Owl2 model, loaded from a local folder with its own remote code
(``trust_remote_code``; it needs that code's dependencies). As its ``score(task_="quality")``: each frame is padded
to a square with the processor's mean colour, resized to the processor's size (448) and CLIP-normalised; the prompt
``"USER: How would you rate the quality of this image?\\n<|image|>\\nASSISTANT: The quality of the image is"`` is
tokenised with the image placeholder replaced by the image token index (-200); the next-token logits of the five
rating words go through :func:`d4s.eval.metrics.qalign_score` (softmax, expectation with 5..1).

Its own environment: one-align's remote code was written for transformers 4.3x and does not import under the
transformers 5 d4s pins (it needs ``icecream`` and helpers transformers 5 removed). :meth:`QAlign.load` therefore
refuses under transformers 5, and the evaluation runs Q-Align in a subprocess instead (:class:`QAlignProcess`) when
``weights.qalign_python`` names the Python of an environment with one-align's requirements: that interpreter runs
this module (``python -m d4s.eval.extractors.qalign --model DIR``, with this checkout on its ``PYTHONPATH``), which
loads the model once and then, for each line ``IN.npy<TAB>OUT.npy`` on its standard input, writes the rating logits
of those frames and answers ``ok``. Its remote code also asks the Hub for its tokenizer by name inside
``__init__``; offline that works only when the snapshot is in that environment's Hugging Face cache
(``HF_HUB_OFFLINE=1`` with the cache populated). See ``docs/evaluation.md``, "Q-Align".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from d4s.eval.extractors._preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    center_crop,
    check_frames,
    normalize,
    resize_short_side,
)
from d4s.eval.extractors.errors import require_path
from d4s.eval.metrics import QALIGN_LEVELS, qalign_score

PROMPT = "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is"
IMAGE_PLACEHOLDER = "<|image|>"
IMAGE_TOKEN_INDEX = -200
IMAGE_SIZE = 448


def rating_token_ids(tokenizer, words: tuple[str, ...] = QALIGN_LEVELS, prompt: str = PROMPT) -> list[int]:
    """The vocabulary ids of ``" excellent", " good", " fair", " poor", " bad"`` as the next token after ``prompt``.

    Each word is found in context: the text after the image placeholder is encoded with and without ``" " + word``
    appended, and the one extra token is the word's (``"▁excellent"`` for one-align's LLaMA tokenizer, as its
    ``tokenizer("excellent").input_ids[1]``; ``"Ġexcellent"`` for a byte-level BPE). ``ValueError`` if the word
    does not extend the encoding by exactly one token.
    """
    context = prompt.split(IMAGE_PLACEHOLDER)[-1]
    base = list(tokenizer.encode(context, add_special_tokens=False))
    ids = []
    for word in words:
        full = list(tokenizer.encode(f"{context} {word}", add_special_tokens=False))
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise ValueError(
                f"Q-Align: the tokenizer does not encode the rating word {word!r} as one token after the prompt "
                f"(got {len(full) - len(base)} extra tokens)"
            )
        ids.append(int(full[-1]))
    return ids


def prompt_token_ids(tokenizer, prompt: str = PROMPT) -> Tensor:
    """``[L]`` ids of ``prompt``: BOS (if the tokenizer has one), then its text with ``<|image|>`` replaced by
    ``IMAGE_TOKEN_INDEX``, as mPLUG-Owl2's ``tokenizer_image_token``."""
    chunks = prompt.split(IMAGE_PLACEHOLDER)
    ids = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(int(t) for t in tokenizer.encode(chunk, add_special_tokens=False))
    return torch.tensor(ids, dtype=torch.long)


def expand_to_square(frames: Tensor, fill: tuple[float, float, float]) -> Tensor:
    """``frames [N, 3, H, W]`` centred on a square canvas of side ``max(H, W)`` filled with the colour ``fill``."""
    height, width = frames.shape[-2:]
    side = max(height, width)
    canvas = torch.tensor(fill, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    canvas = canvas.expand(frames.shape[0], 3, side, side).clone()
    top, left = (side - height) // 2, (side - width) // 2
    canvas[..., top : top + height, left : left + width] = frames
    return canvas


class QAlign:
    """``QAlign.load(path).score(frames [N, 3, H, W]) -> [N]`` quality in ``[1, 5]``.

    ``model``: a causal LM taking ``input_ids [N, L]`` and ``images [N, 3, S, S]`` whose output has ``logits
    [N, L', V]`` (one-align's ``MPLUGOwl2LlamaForCausalLM``); ``tokenizer``: its tokenizer. Both can be injected.
    ``image_size``, ``mean``, ``std``: the image processor's resize/crop size and normalisation.
    """

    def __init__(
        self,
        model,
        tokenizer,
        image_size: int = IMAGE_SIZE,
        mean: tuple[float, float, float] = CLIP_MEAN,
        std: tuple[float, float, float] = CLIP_STD,
        batch_size: int = 4,
    ):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.rating_ids = rating_token_ids(tokenizer)
        self.input_ids = prompt_token_ids(tokenizer)

    @classmethod
    def load(
        cls,
        path: str | Path | None,
        dtype: torch.dtype = torch.float32,
        batch_size: int = 4,
        device: str | torch.device = "cpu",
    ) -> QAlign:
        """Load one-align from the local folder ``path`` (``AutoModelForCausalLM`` / ``AutoTokenizer`` with
        ``trust_remote_code=True, local_files_only=True``) onto ``device`` in ``dtype`` (float16 suits a GPU).

        Raises ``MissingWeights`` when ``path`` is ``None`` or absent, ``ValueError`` naming the folder when it holds
        no loadable model or tokenizer.
        """
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = require_path("qalign", path, folder=True)
        if not (folder / "config.json").is_file():
            raise ValueError(f"Q-Align: {folder}: no config.json; expected a q-future/one-align snapshot")
        if int(transformers.__version__.split(".")[0]) >= 5:
            raise ValueError(
                f"Q-Align: one-align's remote code was written for transformers 4.3x and does not import under "
                f"transformers {transformers.__version__}; set weights.qalign_python to the python of an environment with its "
                "requirements (docs/evaluation.md, 'Q-Align')"
            )
        options = {"trust_remote_code": True, "local_files_only": True}
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, **options)
            # torch_dtype: the keyword of the transformers 4.3x this runs under (4.56 renamed it dtype)
            model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype, **options)
        except (OSError, ValueError, ImportError, RuntimeError) as err:
            raise ValueError(f"Q-Align: {folder}: cannot load the one-align model or tokenizer: {err}") from err
        size, mean, std = _processor_settings(folder)
        return cls(model.to(device).eval().requires_grad_(False), tokenizer, size, mean, std, batch_size=batch_size)

    def pixels(self, frames: Tensor) -> Tensor:
        """``frames [N, 3, H, W]`` in ``[0, 1]`` -> the model's ``images [N, 3, S, S]`` (square-pad, resize, crop,
        normalise)."""
        fill = tuple(int(m * 255) / 255 for m in self.mean)  # the processor pads 8-bit images with this colour
        square = expand_to_square(frames, fill)
        resized = resize_short_side(square, self.image_size, "bicubic", antialias=True).clamp(0.0, 1.0)
        return normalize(center_crop(resized, self.image_size), self.mean, self.std)

    @torch.no_grad()
    def rating_logits(self, frames: Tensor) -> Tensor:
        """``frames [N, 3, H, W]`` in ``[0, 1]`` -> next-token logits of the five rating words ``[N, 5]`` float32 (CPU).

        The model runs on the device and in the dtype of its parameters.
        """
        frames = check_frames(frames)
        parameter = next(self.model.parameters(), torch.empty(0))
        out = []
        for start in range(0, frames.shape[0], self.batch_size):
            images = self.pixels(frames[start : start + self.batch_size].to(parameter.device)).to(parameter.dtype)
            input_ids = self.input_ids.to(parameter.device).unsqueeze(0).repeat(images.shape[0], 1)
            logits = self.model(input_ids=input_ids, images=images)["logits"]
            out.append(logits[:, -1, self.rating_ids].float().cpu())
        return torch.cat(out)

    def score(self, frames: Tensor) -> Tensor:
        """``frames [N, 3, H, W]`` in ``[0, 1]`` -> Q-Align quality ``[N]`` in ``[1, 5]``."""
        return qalign_score(self.rating_logits(frames))


class QAlignProcess:
    """:class:`QAlign` run by another interpreter (``python``: one with one-align's requirements): one worker
    process, started at the first :meth:`score` and kept, loads the model once and scores each call's frames (the
    protocol is in the module docstring). A worker that fails is reported with the last line it wrote to its log,
    and every later call raises the same error without starting another."""

    def __init__(self, python: str | Path, folder: str | Path, device: str | torch.device = "cpu"):
        self.python, self.folder, self.device = Path(python), require_path("qalign", folder, folder=True), str(device)
        if not (self.python.is_file() and os.access(self.python, os.X_OK)):
            raise FileNotFoundError(
                f"weights.qalign_python: {self.python} is not an executable Python; point it at the interpreter of "
                "an environment with one-align's requirements (docs/evaluation.md, 'Q-Align')"
            )
        self._work = tempfile.TemporaryDirectory(prefix="d4s-qalign-")  # frames, logits and the worker's log
        self._process: subprocess.Popen | None = None
        self._failure: RuntimeError | None = None
        self._calls = 0

    def _worker(self) -> subprocess.Popen:
        if self._process is None:
            checkout = str(Path(__file__).resolve().parents[3])  # the folder that holds the d4s package
            path = os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))
            command = [str(self.python), "-m", __name__, "--model", str(self.folder), "--device", self.device]
            with open(Path(self._work.name) / "worker.log", "w") as log:  # the child keeps its own handle
                self._process = subprocess.Popen(
                    command, env={**os.environ, "PYTHONPATH": path}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=log, text=True,
                )  # fmt: skip
        return self._process

    def _fail(self) -> RuntimeError:
        """The worker's end: its last log line (it has exited, or is made to)."""
        process = self._process
        if process.poll() is None:
            process.kill()
        process.wait()
        lines = (Path(self._work.name) / "worker.log").read_text(errors="replace").strip().splitlines()
        self._failure = RuntimeError(f"Q-Align in {self.python}: {lines[-1] if lines else process.returncode}")
        return self._failure

    def score(self, frames: Tensor) -> Tensor:
        """``frames [N, 3, H, W]`` in ``[0, 1]`` -> Q-Align quality ``[N]`` in ``[1, 5]``."""
        frames = check_frames(frames)
        if self._failure is not None:
            raise self._failure
        self._calls += 1
        given = Path(self._work.name) / f"frames-{self._calls}.npy"
        returned = given.with_name(f"logits-{self._calls}.npy")
        np.save(given, frames.float().cpu().numpy())
        worker = self._worker()
        try:
            worker.stdin.write(f"{given}\t{returned}\n")
            worker.stdin.flush()
            reply = worker.stdout.readline().strip()
        except OSError:  # the worker is gone (a broken pipe)
            reply = ""
        finally:
            given.unlink()
        if reply != "ok" or not returned.is_file():
            raise self._fail()
        logits = torch.from_numpy(np.load(returned))
        returned.unlink()
        return qalign_score(logits)


def main(argv: list[str] | None = None) -> int:
    """The worker side of :class:`QAlignProcess`: load the model once, then for each line ``IN.npy<TAB>OUT.npy`` on
    standard input write the rating logits ``[N, 5]`` of the frames in ``IN.npy`` to ``OUT.npy`` and answer ``ok``."""
    parser = argparse.ArgumentParser(prog="python -m d4s.eval.extractors.qalign", description=main.__doc__)
    parser.add_argument("--model", required=True, help="the q-future/one-align folder")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    scorer = QAlign.load(args.model, dtype=dtype, device=args.device)
    for line in sys.stdin:
        given, returned = line.rstrip("\n").split("\t")
        np.save(returned, scorer.rating_logits(torch.from_numpy(np.load(given))).numpy())
        print("ok", flush=True)
    return 0


def _processor_settings(folder: Path) -> tuple[int, tuple, tuple]:
    """``(size, mean, std)`` from the folder's ``preprocessor_config.json``, CLIP's at 448 px when it has none."""
    config_file = folder / "preprocessor_config.json"
    if not config_file.is_file():
        return IMAGE_SIZE, CLIP_MEAN, CLIP_STD
    config = json.loads(config_file.read_text())
    size = config.get("crop_size", config.get("size", IMAGE_SIZE))
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge", IMAGE_SIZE))
    return int(size), tuple(config.get("image_mean", CLIP_MEAN)), tuple(config.get("image_std", CLIP_STD))


if __name__ == "__main__":
    sys.exit(main())
