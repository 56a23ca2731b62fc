"""LPIPS perceptual distance, version 0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features").

Our own implementation of the ``lpips`` package's ``LPIPS(net=..., version="0.1")``, used as a training loss:

1. Scaling layer: images in ``[-1, 1]`` are shifted by ``[-.030, -.088, -.188]`` and divided by
   ``[.458, .448, .450]`` per RGB channel.
2. Backbone features at 5 layers, the outputs of these slices of the torchvision network's ``features``:
   VGG16 ``[0:4], [4:9], [9:16], [16:23], [23:30]`` (relu1_2 .. relu5_3);
   AlexNet ``[0:2], [2:5], [5:8], [8:10], [10:12]`` (relu1 .. relu5).
3. Each feature map unit-normalised over channels, ``f / (sqrt(sum_c f^2) + 1e-10)``.
4. The squared difference of the two images' normalised features, weighted by a 1x1 convolution without bias and
   with one output channel (the "linear" layers, one per backbone layer, learnt on human judgements).
5. Spatial mean of each layer's map, summed over the layers.

Weights are never downloaded: the backbone comes from a local torchvision ImageNet state dict (``backbone_path``)
and the linear layers from the file the installed ``lpips`` package ships (``lpips/weights/v0.1/<net>.pth``),
or ``linear_path``. The ``lpips`` package itself is not imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10

# net -> (slice bounds into torchvision's ``features``, torchvision's ImageNet weights)
NETS = {
    "vgg": (((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)), models.VGG16_Weights.IMAGENET1K_V1),
    "alex": (((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)), models.AlexNet_Weights.IMAGENET1K_V1),
}


def _features(net: str) -> nn.Sequential:
    """torchvision's ``features`` of ``net`` with random weights (VGG16's without building its 100M-param head)."""
    if net == "vgg":
        return models.vgg.make_layers(models.vgg.cfgs["D"])  # the layers of ``vgg16(weights=None).features``
    return models.alexnet(weights=None).features


def _load(path: Path) -> dict[str, Tensor]:
    """The state dict saved at ``path``, on the CPU."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"LPIPS: {path} does not hold a state dict ({type(state).__name__})")
    return state


def _lpips_linear_path(net: str) -> Path:
    """``<lpips package dir>/weights/v0.1/<net>.pth``, found without importing ``lpips``."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"LPIPS: the lpips package is not installed; pass linear_path (its v0.1/{net}.pth)")
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / f"{net}.pth"


def _backbone_state(net: str, backbone_path: str | None, random_backbone: bool) -> dict[str, Tensor] | None:
    """The ``features.*`` entries (prefix stripped) of the torchvision state dict at ``backbone_path``; ``None`` for
    a random backbone. Raises before anything is built if the file is missing."""
    if random_backbone:
        if backbone_path is not None:
            raise ValueError(f"LPIPS: both random_backbone and backbone_path={backbone_path!r} given; pick one")
        return None
    expected = NETS[net][1].url.rsplit("/", 1)[-1]
    if backbone_path is None:
        raise FileNotFoundError(
            f"LPIPS({net!r}): no backbone_path given; it must name torchvision's ImageNet weights file "
            f"{expected} (weights are never downloaded). random_backbone: true builds a random one for tests."
        )
    path = Path(backbone_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"LPIPS({net!r}): backbone file not found: {path} (expected torchvision's ImageNet weights "
            f"{expected}; weights are never downloaded). random_backbone: true builds a random one for tests."
        )
    return {k.removeprefix("features."): v for k, v in _load(path).items() if k.startswith("features.")}


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between images ``x, y [B, 3, H, W]`` in ``[0, 1]`` -> ``[B]``; frozen, always in eval mode.

    ``net``: ``"vgg"`` (VGG16, the usual choice for a loss) or ``"alex"``. ``backbone_path``: a local torchvision
    ImageNet state dict of that network (``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth``; only its
    ``features.*`` entries are used). ``random_backbone``: a randomly initialised backbone instead, for tests.
    ``linear_path``: the linear layers' weights (keys ``lin{k}.model.1.weight``, ``[1, C_k, 1, 1]``), by default
    the file shipped with the installed ``lpips`` package.
    """

    def __init__(
        self,
        net: str = "vgg",
        backbone_path: str | None = None,
        linear_path: str | None = None,
        random_backbone: bool = False,
    ):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS: unknown net {net!r}; choose one of {sorted(NETS)}")
        state = _backbone_state(net, backbone_path, random_backbone)
        features = _features(net)
        if state is not None:
            try:
                features.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(f"LPIPS({net!r}): {backbone_path}: not torchvision {net} weights: {err}") from err
        self.slices = nn.ModuleList(features[a:b] for a, b in NETS[net][0])

        channels = [s[-2].out_channels for s in self.slices]  # each slice ends in conv, ReLU
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in channels)
        lin_file = Path(linear_path) if linear_path is not None else _lpips_linear_path(net)
        if not lin_file.is_file():
            raise FileNotFoundError(f"LPIPS({net!r}): linear-layer weights file not found: {lin_file}")
        lin_state = _load(lin_file)
        for k, (lin, c) in enumerate(zip(self.lins, channels)):
            weight = lin_state.get(f"lin{k}.model.1.weight")
            if weight is None or weight.shape != (1, c, 1, 1):
                got = None if weight is None else list(weight.shape)
                raise ValueError(f"LPIPS({net!r}): {lin_file}: lin{k}.model.1.weight must be [1, {c}, 1, 1], got {got}")
            with torch.no_grad():
                lin.weight.copy_(weight)

        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Stays in eval mode whatever ``mode`` is (a frozen metric)."""
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``x, y [B, 3, H, W]`` in ``[0, 1]`` (scaled to ``[-1, 1]`` here) -> distance ``[B]``, float32.

        Differentiable in ``x`` and ``y``; computed in float32 even under autocast.
        """
        if x.ndim != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise ValueError(f"LPIPS: need x, y of one shape [B, 3, H, W], got {tuple(x.shape)}, {tuple(y.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = (torch.cat([x.float(), y.float()]) * 2 - 1 - self.shift) / self.scale  # [2B, 3, H, W]
            distance = h.new_zeros(x.shape[0])
            for block, lin in zip(self.slices, self.lins):
                h = block(h)  # [2B, C_k, H_k, W_k]
                f = h / (h.square().sum(1, keepdim=True).sqrt() + EPS)
                fx, fy = f.chunk(2)
                distance = distance + lin((fx - fy).square()).mean((1, 2, 3))
        return distance
