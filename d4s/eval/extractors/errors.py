"""What each feature extractor's weights are, where they come from, and the error raised when they are absent.

Weights are never downloaded (docs/evaluation.md): ``configs/eval.yaml`` names a local file or folder for each
extractor under its config key ``weights.<name>``. A missing one raises :class:`MissingWeights`, whose one-line message
names the metric, the file, the config key and the place to get it; the evaluation reports that metric as skipped
with this message and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightsInfo:
    """The metric an extractor serves, the file or folder it expects and where that comes from."""

    metric: str
    expected: str
    source: str


WEIGHTS: dict[str, WeightsInfo] = {
    "i3d": WeightsInfo(
        "FVD/KVD (I3D)",
        "i3d_torchscript.pt",
        "StyleGAN-V's TorchScript port of the Kinetics-400 I3D (github.com/universome/stylegan-v, FVD metric)",
    ),
    "clip_b32": WeightsInfo(
        "CLIP-Score / background consistency (CLIP ViT-B/32)",
        "a transformers CLIPModel folder (config.json, model.safetensors, tokenizer files)",
        "openai/clip-vit-base-patch32 (a Hugging Face Hub snapshot)",
    ),
    "clip_l14": WeightsInfo(
        "CLIP-Aesthetic (CLIP ViT-L/14)",
        "a transformers CLIPModel folder (config.json, model.safetensors, tokenizer files)",
        "openai/clip-vit-large-patch14 (a Hugging Face Hub snapshot)",
    ),
    "aesthetic": WeightsInfo(
        "CLIP-Aesthetic (LAION predictor head)",
        "sac+logos+ava1-l14-linearMSE.pth (or its ReLU variant ava+logos-l14-reluMSE.pth, or the v1 linear head)",
        "the LAION ViT-L/14 MLP head of github.com/christophschuhmann/improved-aesthetic-predictor",
    ),
    "dino": WeightsInfo(
        "subject consistency (DINO ViT-B/16)",
        "a transformers ViTModel folder (config.json, model.safetensors)",
        "facebook/dino-vitb16 (a Hugging Face Hub snapshot)",
    ),
    "qalign": WeightsInfo(
        "Q-Align quality",
        "the one-align model folder (config.json, weights, tokenizer, remote code)",
        "q-future/one-align (a Hugging Face Hub snapshot, ~16 GB)",
    ),
    "mast3r": WeightsInfo(
        "MASt3R matches",
        "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth",
        "the checkpoint linked from github.com/naver/mast3r (non-commercial licence; optional, user-installed)",
    ),
}


class MissingWeights(FileNotFoundError):
    """An extractor's weights are not configured or not on disk.

    Attributes:
        name: the extractor (``"i3d"``, ``"clip_b32"``, ...), also its key under ``weights:`` in ``configs/eval.yaml``.
        metric: the metric that needs the weights.
        path: the configured path, or ``None`` when none is configured.
    """

    def __init__(self, name: str, path: str | Path | None):
        info = WEIGHTS[name]
        self.name, self.metric, self.path = name, info.metric, None if path is None else str(path)
        where = "no path configured for the weights" if path is None else f"weights not found: {path}"
        super().__init__(
            f"{info.metric}: {where} (expected {info.expected}); set weights.{name} "
            f"in the eval config (configs/eval.yaml) to a local copy of {info.source}; weights are never downloaded"
        )


def require_path(name: str, path: str | Path | None, folder: bool = False) -> Path:
    """``path`` as a ``Path`` if it exists (a folder when ``folder``, else a file).

    Raises ``MissingWeights`` when ``path`` is ``None`` or absent, ``ValueError`` naming it when it is a file where a
    folder is expected or the other way round.
    """
    if path is None:
        raise MissingWeights(name, None)
    path = Path(path)
    if not path.exists():
        raise MissingWeights(name, path)
    if path.is_dir() != folder:
        kind = "folder" if folder else "file"
        raise ValueError(f"{WEIGHTS[name].metric}: {path}: expected a {kind} ({WEIGHTS[name].expected})")
    return path
