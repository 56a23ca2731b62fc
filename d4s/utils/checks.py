"""Argument checks shared by every public function that takes tensors from a user.

Each check raises ``ValueError`` whose message starts with the argument's name and says what is wrong,
so that a bad camera or a corrupt field is reported where it enters, not deep inside a kernel.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def _format_shape(shape: Sequence[int | None], batched: bool) -> str:
    dims = ["*" if d is None else str(d) for d in shape]
    return "[" + ", ".join((["..."] if batched else []) + dims) + "]"


def choices(literal: Any) -> tuple[Any, ...]:
    """The values a ``Literal[...]`` type allows, in their written order."""
    if typing.get_origin(literal) is not typing.Literal:
        raise TypeError(f"expected a Literal type, got {literal!r}")
    return typing.get_args(literal)


def check_choice(value: object, name: str, literal: Any) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of the values of the ``Literal`` type
    ``literal``; the one message format for a bad choice anywhere in d4s (configs included)."""
    allowed = choices(literal)
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not one of {list(allowed)}")


def check_tensor(value: object, name: str) -> Tensor:
    """Return ``value`` if it is a tensor, else raise ``ValueError`` naming ``name``."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def check_shape(value: Tensor, name: str, shape: Sequence[int | None], batched: bool = False) -> Tensor:
    """Check a tensor's shape against ``shape`` (``None`` matches any size).

    Args:
        value: the tensor to check.
        name: the argument's name, used in the error message.
        shape: expected trailing sizes; ``None`` is a wildcard.
        batched: allow any number of leading batch dimensions before ``shape``.
    """
    check_tensor(value, name)
    ndim = len(shape)
    ok = value.dim() >= ndim if batched else value.dim() == ndim
    if ok:
        tail = value.shape[value.dim() - ndim :]
        ok = all(want is None or want == got for want, got in zip(shape, tail))
    if not ok:
        raise ValueError(f"{name}: expected shape {_format_shape(shape, batched)}, got {list(value.shape)}")
    return value


def check_finite(value: Tensor, name: str) -> Tensor:
    """Raise ``ValueError`` if ``value`` holds NaN or infinite entries."""
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name}: contains {bad} non-finite value(s) (NaN or inf)")
    return value


def check_floating(value: Tensor, name: str) -> Tensor:
    """Raise ``ValueError`` unless ``value`` has a floating-point dtype."""
    if not value.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    return value


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value
