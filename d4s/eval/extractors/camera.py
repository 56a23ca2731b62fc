"""Weight-free camera poses of a generated video, for RPE (paper Table 3): OpenCV features + essential matrices.

Each frame is matched to the last frame that was registered (SIFT or ORB features, Lowe's ratio test), the essential
matrix is fitted with RANSAC (``cv2.findEssentialMat``) and decomposed with the cheirality check
(``cv2.recoverPose``), and the relative poses are chained from frame 0 = identity. Monocular two-view geometry
fixes the translation only up to scale. Without depth every step's translation has unit length (unit-free: compare
after a scale alignment, or compare directions; a trajectory whose steps differ in length then keeps an error floor).
With the video's own depth (a render's), each step is solved in metres instead: the reference frame's matched
keypoints are lifted to 3D with its depth and located in the new frame by PnP with RANSAC (better conditioned than
the essential matrix at the small baselines of a generated video). A frame with too few matches or inliers keeps
the previous frame's pose; such frames are counted
(``PoseStats``) and logged. Keypoints are taken at OpenCV's pixel coordinates + 0.5, d4s's pixel-centre convention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor

from d4s.utils.checks import check_choice

log = logging.getLogger(__name__)

Detector = Literal["sift", "orb"]


@dataclass
class PoseStats:
    """What ``estimate_poses`` could and could not register.

    Attributes:
        failed_frames: frames that kept the previous pose (too few matches or inliers).
        matches: ratio-test matches of each registered step, ``len == T - 1`` (0 for failed frames).
        inliers: essential-matrix inliers that pass the cheirality check (with depth: PnP inliers), per step (0 for
            failed frames).
    """

    failed_frames: list[int] = field(default_factory=list)
    matches: list[int] = field(default_factory=list)
    inliers: list[int] = field(default_factory=list)


def _detector(name: Detector, max_features: int):
    check_choice(name, "detector", Detector)
    if name == "sift":
        return cv2.SIFT_create(nfeatures=max_features), cv2.NORM_L2
    return cv2.ORB_create(nfeatures=max_features), cv2.NORM_HAMMING


def _check_video(video: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(video, np.ndarray) or video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        got = f"{video.dtype} {list(video.shape)}" if isinstance(video, np.ndarray) else type(video).__name__
        raise ValueError(f"video: expected a uint8 numpy array [T, H, W, 3], got {got}")
    if video.shape[0] == 0:
        raise ValueError("video: no frames")
    K = np.asarray(K.detach().cpu() if isinstance(K, Tensor) else K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"K: expected finite pinhole intrinsics [3, 3] with positive focal lengths, got {K.tolist()}")
    return video, K


def estimate_poses(
    video: np.ndarray,
    K: np.ndarray | Tensor,
    *,
    detector: Detector = "sift",
    max_features: int = 4000,
    ratio: float = 0.75,
    min_matches: int = 20,
    ransac_threshold: float = 1.0,
    return_stats: bool = False,
    depth: np.ndarray | Tensor | None = None,
) -> Tensor | tuple[Tensor, PoseStats]:
    """Camera-to-world poses of a video, chained two-view estimates, frame 0 = identity.

    Args:
        video: ``[T, H, W, 3]`` uint8 RGB frames.
        K: ``[3, 3]`` intrinsics in pixels of these frames (numpy or torch).
        detector: ``"sift"`` or ``"orb"``; ``max_features`` keypoints per frame.
        ratio: Lowe's ratio test threshold on the two nearest descriptor distances.
        min_matches: fewer ratio-test matches, or fewer pose inliers, and the frame keeps the previous pose.
        ransac_threshold: RANSAC inlier threshold in pixels for the essential matrix.
        return_stats: also return ``PoseStats``.
        depth: ``[T, H, W]`` z-depth of the frames in metres (0 = unknown), e.g. the render's: metric steps.
    Returns:
        ``c2w [T, 4, 4]`` float32, OpenCV axes; the translation from each registered frame to the next one has
        unit length (unit-free) without ``depth``, metres with it. With ``return_stats`` the tuple ``(c2w, stats)``.
    """
    video, K = _check_video(video, K)
    if depth is not None:
        depth = np.asarray(depth.detach().cpu() if isinstance(depth, Tensor) else depth, dtype=np.float64)
        if depth.shape != video.shape[:3]:
            raise ValueError(f"depth: expected [T, H, W] = {list(video.shape[:3])}, got {list(depth.shape)}")
    features, norm = _detector(detector, max_features)
    matcher = cv2.BFMatcher(norm)
    stats = PoseStats()
    c2w = np.tile(np.eye(4), (video.shape[0], 1, 1))
    ref_index = 0
    ref_points, ref_desc = features.detectAndCompute(cv2.cvtColor(video[0], cv2.COLOR_RGB2GRAY), None)
    for t in range(1, video.shape[0]):
        points, desc = features.detectAndCompute(cv2.cvtColor(video[t], cv2.COLOR_RGB2GRAY), None)
        ref_depth = None if depth is None else depth[ref_index]
        relative, matches, inliers = _relative_pose(
            ref_points, ref_desc, points, desc, K, matcher, ratio, min_matches, ransac_threshold, ref_depth
        )
        stats.matches.append(matches)
        stats.inliers.append(inliers)
        if relative is None:
            c2w[t] = c2w[t - 1]
            stats.failed_frames.append(t)
            continue
        c2w[t] = c2w[ref_index] @ np.linalg.inv(relative)
        ref_index, ref_points, ref_desc = t, points, desc
    if stats.failed_frames:
        log.warning(
            "estimate_poses: %d of %d frames kept the previous pose (too few matches): %s",
            len(stats.failed_frames),
            video.shape[0],
            stats.failed_frames,
        )
    c2w = torch.from_numpy(c2w).float()
    return (c2w, stats) if return_stats else c2w


def _relative_pose(points_a, desc_a, points_b, desc_b, K, matcher, ratio, min_matches, threshold, depth_a=None):
    """``(T_b<-a [4, 4] or None, matches, inliers)``: the rigid map from camera a's to camera b's coordinates, its
    translation of unit length, or in metres when camera a's ``depth_a [H, W]`` is given."""
    if desc_a is None or desc_b is None or len(points_a) < 2 or len(points_b) < 2:
        return None, 0, 0
    good = [
        pair[0]
        for pair in matcher.knnMatch(desc_a, desc_b, k=2)
        if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance
    ]
    if len(good) < max(min_matches, 5):
        return None, len(good), 0
    xy_a = np.float64([points_a[m.queryIdx].pt for m in good]) + 0.5
    xy_b = np.float64([points_b[m.trainIdx].pt for m in good]) + 0.5
    if depth_a is not None:
        relative, inliers = _pnp_pose(xy_a, xy_b, K, depth_a, min_matches, threshold)
        return relative, len(good), inliers
    E, mask = cv2.findEssentialMat(xy_a, xy_b, K, method=cv2.RANSAC, prob=0.999, threshold=threshold)
    if E is None or E.shape != (3, 3):  # degenerate, or several solutions stacked
        return None, len(good), 0
    inliers, R, t, _ = cv2.recoverPose(E, xy_a, xy_b, K, mask=mask)
    if inliers < min_matches:
        return None, len(good), int(inliers)
    relative = np.eye(4)
    relative[:3, :3], relative[:3, 3] = R, t[:, 0] / max(np.linalg.norm(t), 1e-12)
    return relative, len(good), int(inliers)


def _pnp_pose(xy_a, xy_b, K, depth_a, min_points: int, threshold: float) -> tuple[np.ndarray | None, int]:
    """``(T_b<-a [4, 4] in metres or None, inliers)`` from the matches ``xy_a``, ``xy_b [N, 2]``: camera a's
    keypoints lifted to 3D with its depth, then PnP with RANSAC in camera b (``None`` below ``min_points`` inliers)."""
    H, W = depth_a.shape
    rows = np.clip(np.floor(xy_a[:, 1]).astype(int), 0, H - 1)
    cols = np.clip(np.floor(xy_a[:, 0]).astype(int), 0, W - 1)
    z = depth_a[rows, cols]
    known = z > 0
    if known.sum() < min_points:
        return None, 0
    rays = np.linalg.solve(K, np.concatenate([xy_a[known], np.ones((int(known.sum()), 1))], axis=1).T).T
    points = rays * z[known, None]  # camera a's coordinates, metres
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        points, xy_b[known], K, None, reprojectionError=2.0 * threshold, confidence=0.999, flags=cv2.SOLVEPNP_EPNP
    )
    if not ok or inliers is None or len(inliers) < min_points:
        return None, 0 if inliers is None else len(inliers)
    keep = inliers[:, 0]
    _, rvec, tvec = cv2.solvePnP(points[keep], xy_b[known][keep], K, None, rvec, tvec, True, cv2.SOLVEPNP_ITERATIVE)
    relative = np.eye(4)
    relative[:3, :3], relative[:3, 3] = cv2.Rodrigues(rvec)[0], tvec[:, 0]
    return relative, len(keep)
