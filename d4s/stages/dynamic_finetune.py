"""Stage 3, dynamic scene fine-tuning (paper Sec. 3.4): dynamic datasets, everything unfrozen, the full loss with
the motion term (20K iterations from the stage-2 weights, ``configs/stage3.yaml``)."""

from __future__ import annotations

from d4s.stages.base import Diff4SplatModule
from d4s.stages.objective import StageConfig


class DynamicFinetune(Diff4SplatModule):
    """Stage 3: a preset of :class:`~d4s.stages.base.Diff4SplatModule` (same arguments) whose ``stage`` defaults to
    training everything, the deformation head included, continuing from stage 2."""

    default_stage = StageConfig(reconstruct=True, deformation=True, expects_init=True)
