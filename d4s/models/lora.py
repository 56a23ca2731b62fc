"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") for the video DiT's attention.

A frozen ``nn.Linear`` ``W [out, in]`` gets a trainable low-rank update ``scale * B A`` with ``A [rank, in]``
(``down``, Kaiming-uniform) and ``B [out, rank]`` (``up``, zeros), ``scale = alpha / rank``: ``y = W x + b +
scale * B A x``. ``B = 0`` makes a freshly adapted model compute exactly what the pretrained one did.

Typical use on the CogVideoX transformer (load the pretrained weights first: the adapted layers' state-dict keys
become ``<name>.base.weight``, ``<name>.down.weight``, ``<name>.up.weight``)::

    add_lora(transformer, DEFAULT_TARGETS, rank=64)
    transformer.requires_grad_(False)
    for p in lora_parameters(transformer):
        p.requires_grad_(True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor, nn

# The attention projections of diffusers' CogVideoX ``Attention`` (``attn1`` of every ``CogVideoXBlock``).
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a low-rank update: ``[..., in] -> [..., out]``.

    ``forward(x) = base(x) + up(down(x)) * scale``, with ``down: [..., in] -> [..., rank]`` and
    ``up: [..., rank] -> [..., out]`` created on the base layer's device and dtype. ``up`` starts at zero, so the
    output equals ``base(x)`` exactly until ``up`` is trained.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRALinear: rank must be >= 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.rank = rank
        self.scale = (rank if alpha is None else alpha) / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        # nn.Linear's default init is Kaiming-uniform with a = sqrt(5), as LoRA's A is initialised.
        self.down = nn.Linear(base.in_features, rank, bias=False, **factory)
        self.up = nn.Linear(rank, base.out_features, bias=False, **factory)
        nn.init.zeros_(self.up.weight)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> nn.Parameter:
        """The base layer's (frozen) weight ``[out, in]``; without the LoRA update, see :meth:`merged_weight`."""
        return self.base.weight

    @property
    def bias(self) -> nn.Parameter | None:
        """The base layer's bias ``[out]``, or None."""
        return self.base.bias

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., in] -> [..., out]``."""
        return self.base(x) + self.up(self.down(x)) * self.scale

    def merged_weight(self) -> Tensor:
        """``W + scale * B A`` ``[out, in]``: an ``nn.Linear`` weight computing the same map (with :attr:`bias`)."""
        return self.base.weight + self.scale * self.up.weight @ self.down.weight

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale:g}"


def _matches(name: str, target: str) -> bool:
    """Whether the dotted ``name`` ends with the whole components of ``target`` ("a.to_out.0" ends with "to_out.0")."""
    parts, wanted = name.split("."), target.split(".")
    return parts[-len(wanted) :] == wanted


def add_lora(module: nn.Module, targets: Sequence[str], rank: int, alpha: float | None = None) -> list[str]:
    """Replace, in place, every ``nn.Linear`` of ``module`` whose name ends with one of ``targets`` by a LoRALinear.

    Names are matched on whole trailing components: ``("to_q", "to_out.0")`` matches
    ``transformer_blocks.3.attn1.to_q`` and ``transformer_blocks.3.attn1.to_out.0`` but not ``add_q``.
    ``alpha`` defaults to ``rank`` (scale 1). Returns the sorted qualified names replaced.

    Raises ValueError when ``rank < 1``, when no ``nn.Linear`` matches, or when a match is already a LoRALinear.
    """
    if rank < 1:
        raise ValueError(f"add_lora: rank must be >= 1, got {rank}")
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    matched = [
        (name, child)
        for name, child in module.named_modules()
        if isinstance(child, nn.Linear | LoRALinear) and any(_matches(name, t) for t in targets)
    ]
    adapted = [name for name, child in matched if isinstance(child, LoRALinear)]
    if adapted:
        raise ValueError(f"add_lora: already LoRALinear: {adapted}")
    if not matched:
        linears = [name for name, child in module.named_modules() if isinstance(child, nn.Linear)]
        raise ValueError(
            f"add_lora: no nn.Linear matches targets {list(targets)}; the module's Linear layers include "
            f"{linears[:8]}{' ...' if len(linears) > 8 else ''}"
        )
    for name, child in matched:
        parent_name, _, child_name = name.rpartition(".")
        setattr(module.get_submodule(parent_name), child_name, LoRALinear(child, rank, alpha))
    return sorted(name for name, _ in matched)


def lora_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """The trainable LoRA weights of ``module``: ``down.weight [rank, in]`` and ``up.weight [out, rank]`` of each."""
    for child in module.modules():
        if isinstance(child, LoRALinear):
            yield child.down.weight
            yield child.up.weight
