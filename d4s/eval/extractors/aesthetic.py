"""The LAION aesthetic predictor on CLIP ViT-L/14 image embeddings (CLIP-Aesthetic, paper Appendix D).

The published heads map the L2-normalised 768-d embedding to a 1-10 score:

- v2, improved-aesthetic-predictor (``sac+logos+ava1-l14-linearMSE.pth``): an MLP whose state dict holds
  ``layers.{0,2,4,6,7}.{weight,bias}``, widths 768-1024-128-64-16-1, dropout between the first four (inactive at
  inference) and no activations;
- its ReLU variant (``ava+logos-l14-reluMSE.pth``, ``avaclipmlp_inf_wds-relu.py`` in that repository, checked at
  commit a0cec29): the same widths with a ReLU after every hidden layer (``Linear, ReLU, Dropout`` three times, then
  ``Linear, ReLU, Linear``), so its keys are ``layers.{0,3,6,9,11}``;
- v1 (``sa_0_4_vit_l_14_linear.pth``): a single ``Linear(768, 1)``, keys ``weight, bias``.

The widths are read from the state dict, so smaller heads load too, and where the ReLUs are from the layer indices:
a hidden layer is followed by a ReLU when the next linear layer is one index further than in the linear layout (3
instead of 2 before the last hidden layer, 2 instead of 1 after it).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from d4s.eval.extractors.errors import require_path
from d4s.utils.checks import check_finite, check_shape

_LAYER_KEY = re.compile(r"layers\.(\d+)\.(weight|bias)")


def _linear_layers(state: dict, path: Path) -> list[tuple[Tensor, Tensor, bool]]:
    """The ``(weight [out, in], bias [out], relu after it)`` layers of a LAION head's state dict, in order;
    ``ValueError`` if the keys or shapes are not those of a chain of linear layers ending in one output, or the layer
    indices fit neither layout (module docstring)."""
    indices = [0]
    if set(state) == {"weight", "bias"}:
        pairs = [(state["weight"], state["bias"])]
    else:
        entries: dict[int, dict[str, Tensor]] = {}
        for key, value in state.items():
            match = _LAYER_KEY.fullmatch(key)
            if match is None:
                raise ValueError(f"CLIP-Aesthetic: {path}: unexpected key {key!r}; expected layers.<i>.weight/bias")
            entries.setdefault(int(match.group(1)), {})[match.group(2)] = value
        if not entries or any(set(entry) != {"weight", "bias"} for entry in entries.values()):
            raise ValueError(f"CLIP-Aesthetic: {path}: every layers.<i> needs a weight and a bias, got {sorted(state)}")
        indices = sorted(entries)
        pairs = [(entries[i]["weight"], entries[i]["bias"]) for i in indices]
    width = None
    for weight, bias in pairs:
        ok = isinstance(weight, Tensor) and isinstance(bias, Tensor) and weight.dim() == 2
        ok = ok and bias.shape == weight.shape[:1] and (width is None or weight.shape[1] == width)
        if not ok:
            raise ValueError(f"CLIP-Aesthetic: {path}: the layers do not chain as linear maps ({_shapes(pairs)})")
        width = weight.shape[0]
    if width != 1:
        raise ValueError(f"CLIP-Aesthetic: {path}: the last layer must have one output ({_shapes(pairs)})")
    gaps = [after - before for before, after in itertools.pairwise(indices)]
    linear_gaps = [2] * (len(gaps) - 1) + [1]  # Linear, Dropout, ... Linear, Linear
    if any(gap - plain not in (0, 1) for gap, plain in zip(gaps, linear_gaps)):
        raise ValueError(
            f"CLIP-Aesthetic: {path}: layers {indices} fit neither LAION layout (linearMSE: layers.0, 2, 4, 6, 7; "
            "reluMSE: layers.0, 3, 6, 9, 11)"
        )
    relus = [gap - plain == 1 for gap, plain in zip(gaps, linear_gaps)] + [False]
    return [(weight.float(), bias.float(), relu) for (weight, bias), relu in zip(pairs, relus)]


def _shapes(pairs) -> str:
    return ", ".join(str(list(w.shape)) if isinstance(w, Tensor) else type(w).__name__ for w, _ in pairs)


class AestheticHead:
    """``AestheticHead.load(path).score(clip_image_features [N, 768]) -> [N]``: LAION aesthetic score (about 1-10)."""

    def __init__(self, layers: list[tuple[Tensor, Tensor, bool]]):
        self.layers = layers
        self.in_features = int(layers[0][0].shape[1])

    @classmethod
    def load(cls, path: str | Path | None) -> AestheticHead:
        """Load a LAION predictor state dict (v2 MLP or v1 linear, optionally under a ``"state_dict"`` key).

        Raises ``MissingWeights`` when ``path`` is ``None`` or absent, ``ValueError`` naming the file when it is
        not a torch file or not a LAION head.
        """
        path = require_path("aesthetic", path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises pickle, zip and runtime errors alike for a foreign file
            raise ValueError(f"CLIP-Aesthetic: {path} is not a torch state dict: {err}") from err
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(  # noqa: TRY004  (a wrong weights file is a ValueError throughout d4s.eval)
                f"CLIP-Aesthetic: {path} does not hold a state dict ({type(state).__name__})"
            )
        return cls(_linear_layers(state, path))

    @torch.no_grad()
    def score(self, clip_image_features: Tensor) -> Tensor:
        """``clip_image_features [N, 768]`` (CLIP ViT-L/14 image embeddings; L2-normalised here) -> scores ``[N]``."""
        check_shape(clip_image_features, "clip_image_features", (None, self.in_features))
        check_finite(clip_image_features, "clip_image_features")
        x = F.normalize(clip_image_features.float(), dim=-1)
        for weight, bias, relu in self.layers:
            x = F.linear(x, weight.to(x.device), bias.to(x.device))
            x = F.relu(x) if relu else x
        return x[:, 0]
