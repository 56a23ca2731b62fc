"""Dense optical flow between video frames with OpenCV's DIS (Dense Inverse Search); no learned weights.

Flow convention: ``flow [H, W, 2]`` in pixels, x (column) then y (row); the flow from ``src`` to ``dst`` at
pixel ``p`` is ``d`` such that ``src(p) ~ dst(p + d)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def _check_frames(frames: np.ndarray, min_frames: int) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < min_frames:
        raise ValueError(
            f"frames: expected uint8 RGB [T>={min_frames}, H, W, 3], got {frames.dtype} {list(frames.shape)}"
        )


class DISFlow:
    """DIS optical flow with a fixed ``preset`` (``"ultrafast"``, ``"fast"`` or ``"medium"``).

    Holds only its settings (the OpenCV object is made per call), so it can be pickled to worker processes.
    """

    def __init__(self, preset: Literal["ultrafast", "fast", "medium"] = "medium"):
        if preset not in DIS_PRESETS:
            raise ValueError(f"preset: expected one of {sorted(DIS_PRESETS)}, got {preset!r}")
        self.preset = preset

    def pairs(self, frames: np.ndarray, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
        """Flow from frame ``i`` to frame ``j`` for each ``(i, j)`` in ``pairs``.

        Args:
            frames: ``[T, H, W, 3]`` uint8 RGB (converted to grayscale inside).
            pairs: ``(i, j)`` frame indices, each in ``[0, T)``.
        Returns:
            ``[P, H, W, 2]`` float32 flows in pixels (x, y), ``frames[i](p) ~ frames[j](p + flow[k, p])``.
        """
        _check_frames(frames, min_frames=1)
        num, height, width = frames.shape[:3]
        for i, j in pairs:
            if not (0 <= i < num and 0 <= j < num):
                raise ValueError(f"pairs: ({i}, {j}) is out of range for {num} frames")
        gray = [cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY) for frame in frames]
        dis = cv2.DISOpticalFlow_create(DIS_PRESETS[self.preset])
        flows = np.empty((len(pairs), height, width, 2), dtype=np.float32)
        for k, (i, j) in enumerate(pairs):
            flows[k] = dis.calc(gray[i], gray[j], None)
        return flows

    def forward_backward(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flows between consecutive frames ``[T, H, W, 3]`` uint8 RGB.

        Returns:
            ``forward [T-1, H, W, 2]`` (``forward[t]`` maps frame ``t`` to ``t+1``) and ``backward [T-1, H, W, 2]``
            (``backward[t]`` maps frame ``t+1`` to ``t``), float32 pixels (x, y).
        """
        _check_frames(frames, min_frames=2)
        steps = range(frames.shape[0] - 1)
        flows = self.pairs(frames, [(t, t + 1) for t in steps] + [(t + 1, t) for t in steps])
        return flows[: len(steps)], flows[len(steps) :]


def optical_flow(
    frames: np.ndarray, pairs: Sequence[tuple[int, int]], preset: Literal["ultrafast", "fast", "medium"] = "medium"
) -> np.ndarray:
    """``[P, H, W, 2]`` flows from frame ``i`` to ``j`` of ``frames [T, H, W, 3]`` uint8 (:meth:`DISFlow.pairs`)."""
    return DISFlow(preset).pairs(frames, pairs)


def forward_backward_flow(
    frames: np.ndarray, preset: Literal["ultrafast", "fast", "medium"] = "medium"
) -> tuple[np.ndarray, np.ndarray]:
    """``(forward, backward)`` flows of ``frames [T, H, W, 3]`` uint8 (:meth:`DISFlow.forward_backward`)."""
    return DISFlow(preset).forward_backward(frames)
