"""Stage 2, high-resolution refinement (paper Sec. 3.4): static scenes at 512 x 512 from the stage-1 weights
(``init_from``), the deformation head still frozen (40K iterations, ``configs/stage2.yaml``)."""

from __future__ import annotations

from d4s.stages.base import Diff4SplatModule
from d4s.stages.objective import StageConfig


class HiResRefine(Diff4SplatModule):
    """Stage 2: a preset of :class:`~d4s.stages.base.Diff4SplatModule` (same arguments) whose ``stage`` defaults to
    reconstructing with the deformation head frozen, continuing from stage 1."""

    default_stage = StageConfig(reconstruct=True, deformation=False, expects_init=True)
