"""Sharded data parallelism (PyTorch's FSDP2, ``fully_shard``) for the stages that train the 5B video DiT.

    trainer:
      strategy: {class_path: d4s.stages.sharding.ShardedStrategy}

DDP keeps on every GPU a whole copy of the trained weights, their gradients and AdamW's two moments: 16 bytes per
trained weight in float32, about 90 GB for CogVideoX-5B's transformer alone (``python -m d4s.stages.memory``
prints the plan of a stage config). :class:`ShardedStrategy` splits all three across the data-parallel ranks, so each
GPU holds ``1 / world_size`` of them, plus the whole weights of the one unit it is computing (gathered before the
unit's forward and backward, released after). The units (:func:`shard_networks`): each transformer block of the
video DiT, of the LDRM and of T5, then what remains of each network (embeddings, heads, the camera adapter). The VAE
and LPIPS are frozen, small and called outside ``forward``: they stay whole on every rank, as under DDP.

Checkpoints are one file, gathered on rank 0 (Lightning's ``save_distributed_checkpoint=False``), the same file DDP
writes: the next stage's ``init_from``, ``--ckpt_path``, ``python -m d4s.generate`` and the evaluation read it as
they read a DDP one, and a run may change strategy between stages. Lightning restores a sharded run after the
module's ``on_fit_start``, so a resumed run (``--ckpt_path``) reads its stage's ``init_from`` before the checkpoint
replaces it: if that file is gone, resume with ``--model.init_args.init_from=null``. The EMA of weights
(``recipe.ema_decay``) is not available. It runs on CPU with gloo (``tests/stages/test_sharding.py``) as on CUDA
with NCCL.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor


class ShardedStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as pure sharded data parallelism: one data-parallel group of every rank
    on every node (no tensor parallelism), single-file checkpoints. The module shards itself in ``configure_model``
    (:meth:`d4s.stages.base.Diff4SplatModule.configure_model` calls :func:`shard_networks`).

    Args:
        reshard_after_forward: free each unit's gathered weights after its forward and gather them again for its
            backward (ZeRO-3, the default: least memory); ``False`` keeps them from forward to backward (ZeRO-2-like:
            less communication, the whole trained weights on every GPU for the length of a step).
        process_group_backend, timeout: as Lightning's (default backend: NCCL on CUDA, gloo on CPU).
    """

    def __init__(
        self,
        reshard_after_forward: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = timedelta(minutes=30),
    ):
        super().__init__(
            save_distributed_checkpoint=False, process_group_backend=process_group_backend, timeout=timeout
        )
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every rank in one data-parallel group
        self._tensor_parallel_size = 1
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: str | Path, weights_only: bool | None = None) -> dict[str, Any]:
        """Resume from a d4s checkpoint: it leaves out the frozen weights that were read from files (T5, the VAE;
        ``Diff4SplatModule.on_save_checkpoint``), which the module already holds, so the rest loads non-strictly
        after the module has checked that nothing else is missing or unexpected."""
        module = self.lightning_module
        path = Path(self.broadcast(checkpoint_path))
        stored = torch.load(path, mmap=True, map_location="cpu", weights_only=True)["state_dict"].keys()
        module.check_checkpoint_keys(stored, path)
        strict, module.strict_loading = module.strict_loading, False
        try:
            return super().load_checkpoint(path, weights_only)
        finally:
            module.strict_loading = strict


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module``'s parameters are sharded (:func:`shard_networks` ran on it)."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def shard_networks(
    units: Iterable[nn.Module], networks: Iterable[nn.Module], mesh: DeviceMesh, reshard_after_forward: bool
) -> None:
    """Shard every module of ``units`` (transformer blocks), then each of ``networks`` (what of it is not in a unit),
    over ``mesh`` with ``fully_shard``. Each must be called through ``__call__``: FSDP gathers a unit's weights in its
    forward hooks."""
    for module in (*units, *networks):
        fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
