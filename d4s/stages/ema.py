"""Exponential moving average of the trainable weights (optional; the paper does not use one)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def _buffer_name(name: str) -> str:
    return name.replace(".", "__")


class ParameterEMA(nn.Module):
    """Shadow copies ``ema = decay * ema + (1 - decay) * param`` of a model's trainable parameters.

    The copies are buffers of this module, so they follow the LightningModule to its device and into its
    checkpoints (exact resume keeps the average). Frozen parameters are not copied: they never change.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay: expected a value in (0, 1), got {decay}")
        self.decay = decay
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        parameters = dict(model.named_parameters())
        for name in self.names:
            self.register_buffer(_buffer_name(name), parameters[name].detach().clone().float())

    def _pairs(self, model: nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        parameters = dict(model.named_parameters())
        for name in self.names:
            yield getattr(self, _buffer_name(name)), parameters[name]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step (after an optimiser step)."""
        for average, parameter in self._pairs(model):
            average.lerp_(parameter.detach().float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Run a block with the averaged weights in ``model``, then put the trained ones back."""
        saved = [parameter.detach().clone() for _, parameter in self._pairs(model)]
        with torch.no_grad():
            for average, parameter in self._pairs(model):
                parameter.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, parameter), original in zip(self._pairs(model), saved):
                    parameter.copy_(original)
