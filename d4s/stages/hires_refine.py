"""Stage 2, high-resolution refinement (paper Sec. 3.4): static scenes at 512 x 512 from the stage-1 weights
(``init_from``), the deformation head still frozen (40K iterations, ``configs/stage2.yaml``)."""

from __future__ import annotations

from d4s.stages.base import Diff4SplatModule


class HiResRefine(Diff4SplatModule):
    """Stage 2: see the module docstring; arguments as :class:`~d4s.stages.base.Diff4SplatModule`."""

    deformation_trains = False
    uses_motion = False
    expects_init = True
