"""A callback that a ``python -m d4s.fit`` run loads by class path (``--trainer.callbacks+=...``) to show a test
what happened in each process: the loss of every training step and the sum of the trained weights when training
starts (gathered whole under the sharded strategy), written to ``<folder>/rank<k>.json`` at the end."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from torch.distributed.tensor import DTensor


class RecordSteps(L.Callback):
    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.losses: list[float] = []
        self.weight_sum = 0.0

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        trained = [p for p in module.parameters() if p.requires_grad]
        whole = [p.full_tensor() if isinstance(p, DTensor) else p for p in trained]  # every rank gathers together
        self.weight_sum = float(sum(p.detach().double().sum() for p in whole))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"losses": self.losses, "weight_sum": self.weight_sum, "step": trainer.global_step}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def trained_weight_sum(checkpoint_path: Path, prefixes: tuple[str, ...]) -> float:
    """The sum of a checkpoint's weights whose names start with ``prefixes`` (float64)."""
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["state_dict"]
    return float(sum(v.double().sum() for k, v in state.items() if k.startswith(prefixes)))
