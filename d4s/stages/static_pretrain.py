"""Stage 1, static geometry pre-training (paper Sec. 3.4): static scenes at 256 x 256, photometric and geometric
losses, the deformation head frozen at the identity (40K iterations, ``configs/stage1.yaml``)."""

from __future__ import annotations

from d4s.stages.base import Diff4SplatModule


class StaticPretrain(Diff4SplatModule):
    """Stage 1: see the module docstring; arguments as :class:`~d4s.stages.base.Diff4SplatModule`."""

    deformation_trains = False
    uses_motion = False
    expects_init = False
