"""Checkpoints written atomically: a run killed while saving leaves the previous file, never a truncated one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from d4s.utils.fileio import atomic_output


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, then an atomic rename (local paths).

    Lightning's own writer opens the final path and writes into it, so a kill mid-save leaves a corrupt
    ``last.ckpt`` that ``--ckpt_path`` then fails on. Remote URLs (``s3://`` ...) keep fsspec's transactional write,
    which only publishes a complete object.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options}")
        protocol = fsspec.utils.get_protocol(str(path))
        if protocol not in ("file", "local"):
            super().save_checkpoint(checkpoint, path)
            return
        with atomic_output(path) as tmp:
            torch.save(checkpoint, tmp)
