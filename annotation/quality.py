"""Quality control of annotated clips (paper Sec. 3.1, Appendix B): dynamic masks, reprojection filtering, scores.

- Dynamic-object masks: ground truth where the dataset has them; otherwise the pixels whose optical flow
  disagrees with the flow the camera motion alone would induce on the depth map (the flow residual).
- Reprojection-error filter: each static pixel with depth is lifted, projected into a neighbouring frame,
  lifted again with that frame's depth and projected back; pixels that do not return within a threshold
  are inconsistent and lose their depth. The fraction that pass is the clip's consistency score.
- Scores and a verdict: valid-depth ratio, consistency, pose sanity (finite, proper rotations), and the
  alignment residual when there was an alignment; a clip failing a threshold is rejected with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from annotation.pixels import float64_tensors, inside_image, sample_nearest
from d4s.geometry.cameras import project_points, unproject_depth, unproject_pixels


@dataclass(frozen=True)
class QualityThresholds:
    """Accept/reject limits (configurable per dataset in ``configs/annotate/``)."""

    min_valid_depth: float = 0.5  # fraction of pixels with depth > 0
    min_consistency: float = 0.6  # fraction of static pixels passing the reprojection check
    reprojection_px: float = 2.0  # round-trip reprojection error limit, pixels ...
    reprojection_depth: float = 0.05  # ... and relative depth difference limit ...
    reprojection_gap: int = 2  # ... against the frames this many steps before and after
    max_depth_absrel: float = 0.25  # alignment residual (mean absolute relative error to the oracle)
    rotation_atol: float = 1e-3  # orthonormality and det(R) = +1 tolerance
    flow_residual_px: float = 1.5  # dynamic mask: flow disagreement limit, pixels ...
    flow_residual_relative: float = 0.1  # ... plus this fraction of the camera-induced flow magnitude ...
    flow_gap: int = 4  # ... of the flow between frames this far apart


DEFAULT_THRESHOLDS = QualityThresholds()


@dataclass
class QualityReport:
    """Scores of one clip and the verdict; ``reason`` names the first failed check (``None`` if accepted)."""

    scores: dict[str, float] = field(default_factory=dict)
    reason: str | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is None


def pose_problem(c2w: np.ndarray, atol: float = 1e-3) -> str | None:
    """Why camera-to-world poses ``[T, 4, 4]`` are unusable (non-finite, improper rotation), or ``None``."""
    if not np.isfinite(c2w).all():
        return "non-finite pose"
    R = c2w[:, :3, :3]
    if np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max() > atol:
        return "rotation not orthonormal"
    if np.abs(np.linalg.det(R) - 1).max() > atol:
        return "rotation with det != +1"
    if np.abs(c2w[:, 3] - np.array([0, 0, 0, 1])).max() > atol:
        return "last pose row is not [0, 0, 0, 1]"
    return None


def camera_flow(
    depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, K_next: np.ndarray, c2w_next: np.ndarray
) -> np.ndarray:
    """The flow ``[H, W, 2]`` a static world induces from one frame (``depth [H, W]``, ``K``, ``c2w``) to the next.

    Pixels without depth get NaN.
    """
    height, width = depth.shape
    points = unproject_depth(*float64_tensors(depth, K, c2w)).reshape(-1, 3)
    uv, _ = project_points(points, *float64_tensors(c2w_next, K_next))
    v, u = np.mgrid[0:height, 0:width]
    flow = uv.numpy().reshape(height, width, 2) - np.stack([u, v], -1) - 0.5
    return np.where((depth > 0)[..., None], flow, np.nan)


def mask_flow_pairs(num_frames: int, gap: int) -> list[tuple[int, int]]:
    """The frame pairs ``(t, other)`` whose flow judges frame ``t``: ``gap`` frames ahead, or back near the end;
    in a clip shorter than ``2 gap`` frames, a middle frame pairs with the farther end of the clip."""
    if num_frames < 2:
        raise ValueError(f"dynamic masks from flow need at least 2 frames, got {num_frames}")
    last = num_frames - 1
    gap = min(gap, last)

    def partner(t: int) -> int:
        if t + gap <= last:
            return t + gap
        if t - gap >= 0:
            return t - gap
        return last if last - t >= t else 0

    return [(t, partner(t)) for t in range(num_frames)]


def dynamic_mask_from_flow(
    pairs: list[tuple[int, int]],
    flows: np.ndarray,
    depth: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
) -> np.ndarray:
    """Dynamic-object masks ``[T, H, W]`` from the flow residual against the camera-induced flow.

    ``flows [P, H, W, 2]`` is the optical flow of each ``(t, other)`` of ``pairs`` (see :func:`mask_flow_pairs`:
    a gap of several frames lets slow objects move further than the flow's error); ``depth [T, H, W]``,
    ``K [T,3,3]``, ``c2w [T,4,4]``. Pixels without depth are not marked.
    """
    masks = np.zeros(depth.shape, bool)
    for (t, other), observed in zip(pairs, flows):
        expected = camera_flow(depth[t], K[t], c2w[t], K[other], c2w[other])
        residual = np.linalg.norm(observed - expected, axis=-1)
        limit = thresholds.flow_residual_px + thresholds.flow_residual_relative * np.linalg.norm(expected, axis=-1)
        masks[t] = np.nan_to_num(residual, nan=0.0) > np.nan_to_num(limit, nan=np.inf)
    return masks


def _check_against(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, t: int, other: int) -> tuple[np.ndarray, ...]:
    """Frame ``t``'s pixels checked against frame ``other``: round-trip pixel error, relative depth difference
    (both ``[H, W]``) and whether the check applies (depth in both frames, inside the other image)."""
    height, width = depth.shape[1:]
    v, u = np.mgrid[0:height, 0:width]
    pixels = np.stack([u, v], -1).reshape(-1, 2) + 0.5
    points = unproject_depth(*float64_tensors(depth[t], K[t], c2w[t])).reshape(-1, 3)
    uv, z = project_points(points, *float64_tensors(c2w[other], K[other]))
    uv, z = uv.numpy(), z.numpy()
    z_other = sample_nearest(depth[other], uv)
    back_points = unproject_pixels(*float64_tensors(uv, z_other, K[other], c2w[other]))
    back, _ = project_points(back_points, *float64_tensors(c2w[t], K[t]))
    pixel_error = np.linalg.norm(back.numpy() - pixels, axis=-1)
    depth_error = np.abs(z - z_other) / np.maximum(z_other, 1e-6)
    checked = (depth[t].ravel() > 0) & (z_other > 0) & inside_image(uv, height, width)
    return pixel_error.reshape(height, width), depth_error.reshape(height, width), checked.reshape(height, width)


def reprojection_check(
    depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, thresholds: QualityThresholds = DEFAULT_THRESHOLDS
) -> tuple[np.ndarray, np.ndarray]:
    """Geometric consistency of every pixel with the frames ``reprojection_gap`` before and after it.

    Against a neighbour, a pixel is consistent when the round trip (pixel -> 3D with its depth -> the other frame
    -> 3D with that frame's depth there -> back) lands within ``reprojection_px`` pixels and its projected depth
    differs from the other frame's depth by at most ``reprojection_depth`` (relative); the depth test catches
    wrong depth even when the camera barely moves. A pixel passes if either neighbour agrees, so one occluded
    side does not condemn it. ``depth [T,H,W]``, ``K [T,3,3]``, ``c2w [T,4,4]``.

    Returns ``passed`` and ``checked`` (some neighbour could judge the pixel), both ``[T, H, W]`` bool.
    """
    T = depth.shape[0]
    passed, checked = np.zeros(depth.shape, bool), np.zeros(depth.shape, bool)
    for t in range(T):
        for other in (t - thresholds.reprojection_gap, t + thresholds.reprojection_gap):
            if 0 <= other < T:
                pixel_error, depth_error, ok = _check_against(depth, K, c2w, t, other)
                agree = (pixel_error <= thresholds.reprojection_px) & (depth_error <= thresholds.reprojection_depth)
                passed[t] |= ok & agree
                checked[t] |= ok
    return passed, checked


def filter_depth(
    depth: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    dynamic_mask: np.ndarray | None,
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
) -> tuple[np.ndarray, float]:
    """Drop the depth of static pixels that fail :func:`reprojection_check`.

    Returns the filtered depth ``[T, H, W]`` and the consistency score: the fraction of checkable static pixels
    that passed. Dynamic pixels are not judged.
    """
    passed, checked = reprojection_check(depth, K, c2w, thresholds)
    static = np.ones(depth.shape, bool) if dynamic_mask is None else ~dynamic_mask
    failed = static & checked & ~passed
    score = 1.0 - failed.sum() / max(int((static & checked).sum()), 1)
    return np.where(failed, 0.0, depth).astype(depth.dtype), float(score)


def assess(
    c2w: np.ndarray,
    depth: np.ndarray | None,
    consistency: float | None,
    depth_absrel: float | None,
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
) -> QualityReport:
    """Score a clip and decide: pose sanity first, then valid-depth ratio, consistency and alignment residual."""
    report = QualityReport()
    problem = pose_problem(c2w, thresholds.rotation_atol)
    if problem is not None:
        report.reason = f"bad poses: {problem}"
        return report
    if depth is not None:
        report.scores["valid_depth"] = float((depth > 0).mean())
    if consistency is not None:
        report.scores["consistency"] = consistency
    if depth_absrel is not None:
        report.scores["depth_absrel"] = depth_absrel
    checks = [
        ("valid_depth", lambda v: v >= thresholds.min_valid_depth, f"valid depth below {thresholds.min_valid_depth}"),
        (
            "consistency",
            lambda v: v >= thresholds.min_consistency,
            f"reprojection consistency below {thresholds.min_consistency}",
        ),
        (
            "depth_absrel",
            lambda v: v <= thresholds.max_depth_absrel,
            f"alignment residual above {thresholds.max_depth_absrel}",
        ),
    ]
    for name, passes, reason in checks:
        if name in report.scores and not passes(report.scores[name]):
            report.reason = reason
            break
    return report
