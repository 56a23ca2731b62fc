"""The result type every render backend returns."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class RenderOutput(NamedTuple):
    """Rendered images of ``C`` cameras.

    Attributes:
        rgb: ``[C, H, W, 3]`` colour, composited over the background (not clamped, as gsplat).
        depth: ``[C, H, W]`` expected z-depth ``sum w z / sum w`` in metres (gsplat's "ED"); 0 where empty.
        alpha: ``[C, H, W]`` accumulated opacity ``sum w`` in [0, 1].
    """

    rgb: Tensor
    depth: Tensor
    alpha: Tensor
