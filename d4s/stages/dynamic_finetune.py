"""Stage 3, dynamic scene fine-tuning (paper Sec. 3.4): dynamic datasets, everything unfrozen, the full loss with
the motion term (20K iterations from the stage-2 weights, ``configs/stage3.yaml``)."""

from __future__ import annotations

from d4s.stages.base import Diff4SplatModule


class DynamicFinetune(Diff4SplatModule):
    """Stage 3: see the module docstring; arguments as :class:`~d4s.stages.base.Diff4SplatModule`."""

    deformation_trains = True
    uses_motion = True
    expects_init = True
