"""Stage 1, static geometry pre-training (paper Sec. 3.4): static scenes at 256 x 256, photometric and geometric
losses, the deformation head frozen at the identity (40K iterations, ``configs/stage1.yaml``)."""

from __future__ import annotations

from d4s.stages.base import Diff4SplatModule
from d4s.stages.objective import StageConfig


class StaticPretrain(Diff4SplatModule):
    """Stage 1: a preset of :class:`~d4s.stages.base.Diff4SplatModule` (same arguments) whose ``stage`` defaults to
    reconstructing with the deformation head frozen."""

    default_stage = StageConfig(reconstruct=True, deformation=False, expects_init=False)
