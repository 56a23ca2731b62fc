"""What a generation is asked for, shared by ``python -m d4s.generate``, the evaluation protocol and the demo: the
typed sampling settings (:class:`SamplingConfig`), the scenes to make (:class:`Job`, :func:`collect_jobs`) and the
condition image as the model sees it (:func:`input_image`). Library code, no command line: the CLI module
(:mod:`d4s.generate`) is a wrapper over this and :class:`d4s.pipeline.Diff4SplatPipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from d4s.diffusion.sampler import GUIDANCE_SCHEDULES, Guidance
from d4s.geometry.crop import crop_box
from d4s.utils.image import IMAGE_SUFFIXES

#: ``--dtype`` / ``generation.dtype`` names of the DiT precision (``auto``: bfloat16 on CUDA, float32 on the CPU)
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class SamplingConfig:
    """How the video latents are sampled (App. C.1): ``steps`` Euler steps (30 in the paper), classifier-free
    guidance of maximum scale ``guidance`` (Eq. 6's ``gamma_max`` = 7.5; 0: none) on ``guidance_schedule``
    (``cosine``: Eq. 6; ``constant``), whose unconditional pass is skipped where ``gamma - 1`` is below
    ``guidance_skip_below`` (:class:`~d4s.diffusion.Guidance`), and the noise ``seed``."""

    steps: int = 30
    guidance: float = 7.5
    guidance_schedule: str = "cosine"
    guidance_skip_below: float = Guidance.skip_below
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")
        for name in ("guidance", "guidance_skip_below"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"guidance_schedule: expected one of {GUIDANCE_SCHEDULES}, got {self.guidance_schedule!r}")

    def guidance_rule(self) -> Guidance | None:
        """The :class:`~d4s.diffusion.Guidance` these settings describe, ``None`` without guidance."""
        if self.guidance == 0:
            return None
        return Guidance(self.guidance, self.guidance_schedule, skip_below=self.guidance_skip_below)


@dataclass(frozen=True)
class Job:
    """One scene to generate: its image, prompt and output folder."""

    image: Path
    prompt: str
    out: Path


def collect_jobs(image: Path, prompt: str, out: Path) -> list[Job]:
    """One job for an image file; one per image for a folder or a .txt list (``path[<TAB>prompt]`` per line,
    relative to the list's folder), each writing to ``out/<image stem>`` (``<stem>_<position>`` where stems repeat)."""
    if image.is_dir():
        entries = [(path, prompt) for path in sorted(image.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
        if not entries:
            raise ValueError(f"{image}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    elif image.suffix.lower() == ".txt":
        if not image.is_file():
            raise FileNotFoundError(f"image list not found: {image}")
        entries = []
        for line in image.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                path, _, own_prompt = line.partition("\t")
                entries.append((image.parent / path.strip(), own_prompt.strip() or prompt))
        if not entries:
            raise ValueError(f"{image}: the list names no images")
    else:
        return [Job(image, prompt, out)]
    stems = [path.stem for path, _ in entries]
    names = [stem if stems.count(stem) == 1 else f"{stem}_{i}" for i, stem in enumerate(stems, start=1)]
    return [Job(path, text, out / name) for (path, text), name in zip(entries, names)]


def input_image(photo: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """The condition image ``[3, H, W]`` in ``[0, 1]``: the photo resized to cover ``size`` and centre-cropped."""
    crop = crop_box(photo.shape[:2], size).resize_image(photo)
    return torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0
