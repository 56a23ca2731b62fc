"""Stage 0, camera-controlled video pre-training: the video DiT alone on the flow-matching loss (Eq. 2), no LDRM.

The paper starts from CogVideoX, a video generator pretrained on millions of clips (Sec. 4.1), and adds the camera
adapter; stage 1 then trains the LDRM on its latents. A model built from random weights (the tiny CPU configs,
``make demo``) has no such prior, and the joint stages, whose steps are dominated by the LDRM and the renderer,
give the DiT far too few updates to learn one. This optional stage is that prior: only the DiT's steps, several
times cheaper, on the same clips, text and camera conditioning (dropped together for guidance), before stage 1
starts from its weights (``init_from``). Not in the paper; ``configs/tiny/stage0.yaml``.
"""

from __future__ import annotations

from d4s.stages.base import Diff4SplatModule
from d4s.stages.objective import StageConfig


class VideoPretrain(Diff4SplatModule):
    """Stage 0: a preset of :class:`~d4s.stages.base.Diff4SplatModule` (same arguments) whose ``stage`` defaults to
    the DiT alone (``recipe.dit`` must train it; the LDRM stays at its initialisation)."""

    default_stage = StageConfig(reconstruct=False, deformation=False, expects_init=False)
