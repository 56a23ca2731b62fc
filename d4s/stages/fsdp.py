"""FSDP for training the full video DiT: ``--trainer.strategy=d4s.stages.fsdp.DiTFSDPStrategy`` (CUDA only).

DDP keeps a full copy of the 5B DiT, its gradients and AdamW's two moments on every GPU (about 80 GB in bf16/fp32
mixes); FSDP shards them. Each transformer block (CogVideoX's, the LDRM's, T5's) becomes one FSDP unit, and
``use_orig_params`` lets frozen and trained weights (the VAE, T5, a frozen deformation head) share units.
"""

from __future__ import annotations

from typing import Any

from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from transformers.models.t5.modeling_t5 import T5Block

#: the modules that become FSDP units
WRAPPED_BLOCKS = {CogVideoXBlock, nn.TransformerEncoderLayer, T5Block}


class DiTFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` with d4s's wrap policy; other arguments pass through (``sharding_strategy``,
    ``cpu_offload``, ``state_dict_type`` ...). The EMA (``recipe.ema_decay``) is not available under FSDP."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("auto_wrap_policy", WRAPPED_BLOCKS)
        kwargs.setdefault("use_orig_params", True)
        super().__init__(**kwargs)
