"""3D point tracks for clips whose dataset has none: query points chained through optical flow, lifted to 3D.

Query pixels on a regular grid of the first frame are followed through forward flow, frame to frame; a step
is kept only if the backward flow brings the point back (forward-backward consistency, Sundaram et al. 2010),
and a track that fails once stays lost. Points on static surfaces (the whole clip, when it has no dynamic
mask, or query pixels outside the dynamic mask) are world-fixed: their 3D position is the query pixel lifted
with depth and camera, and they are visible where that point projects inside the image and is not occluded.
Points on moving objects are lifted frame by frame from the chained pixel and that frame's depth.
"""

from __future__ import annotations

import numpy as np

from annotation.pixels import float64_tensors, inside_image, query_grid, sample_bilinear, sample_nearest
from d4s.geometry.cameras import project_points, unproject_pixels


def chain_flow(
    query_uv: np.ndarray,
    forward: np.ndarray,
    backward: np.ndarray,
    fb_absolute: float = 0.5,
    fb_relative: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """Follow pixels ``query_uv [N, 2]`` of frame 0 through ``forward [T-1, H, W, 2]`` flow.

    ``backward[t]`` maps frame ``t+1`` to frame ``t``. A step is consistent when
    ``|f + b|^2 <= fb_relative * (|f|^2 + |b|^2) + fb_absolute`` (pixels squared).
    Returns positions ``uv [N, T, 2]`` and ``valid [N, T]`` (false from the first failed step or exit on).
    """
    steps, height, width = forward.shape[:3]
    uv = np.empty((len(query_uv), steps + 1, 2))
    valid = np.zeros((len(query_uv), steps + 1), bool)
    uv[:, 0], valid[:, 0] = query_uv, inside_image(query_uv, height, width)
    for t in range(steps):
        f = sample_bilinear(forward[t], uv[:, t])
        uv[:, t + 1] = uv[:, t] + f
        b = sample_bilinear(backward[t], uv[:, t + 1])
        consistent = ((f + b) ** 2).sum(-1) <= fb_relative * ((f**2).sum(-1) + (b**2).sum(-1)) + fb_absolute
        valid[:, t + 1] = valid[:, t] & consistent & inside_image(uv[:, t + 1], height, width)
    return uv, valid


def _lift(uv: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """World points ``[N, 3]`` of pixels ``uv [N, 2]`` with z-depth ``depth [N]`` in one camera."""
    points = unproject_pixels(*float64_tensors(uv, depth, K, c2w))
    return points.numpy()


def visible_from_depth(
    xyz: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, tolerance: float = 0.03
) -> np.ndarray:
    """Whether points ``xyz [N, T, 3]`` are seen in each frame: in front, inside the image, not occluded.

    A point is not occluded when its z-depth is within ``tolerance`` (relative) of the depth map
    ``depth [T, H, W]`` at the pixel it projects to. ``K [T,3,3]``, ``c2w [T,4,4]``. Returns ``[N, T]`` bool.
    """
    T, height, width = depth.shape
    uv, z = project_points(*float64_tensors(xyz.transpose(1, 0, 2), c2w, K))
    uv, z = uv.numpy(), z.numpy()
    visible = np.zeros(xyz.shape[:2], bool)
    for t in range(T):
        seen = sample_nearest(depth[t], uv[t])
        ok = inside_image(uv[t], height, width) & (z[t] > 0) & (seen > 0)
        visible[:, t] = ok & (np.abs(z[t] - seen) <= tolerance * np.maximum(seen, 1e-6))
    return visible


def flow_tracks(
    forward: np.ndarray,
    backward: np.ndarray,
    depth: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    dynamic_mask: np.ndarray | None = None,
    query_stride: int = 8,
    query_uv: np.ndarray | None = None,
    occlusion_tolerance: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """Tracks from optical flow, depth and cameras for a clip of ``T`` frames.

    Args:
        forward, backward: ``[T-1, H, W, 2]`` flow (see :func:`chain_flow`).
        depth: ``[T, H, W]`` metric z-depth (0 = invalid); ``K [T,3,3]``; ``c2w [T,4,4]``.
        dynamic_mask: ``[T, H, W]`` bool, or ``None`` when the clip is static.
        query_stride: grid spacing of the query pixels in frame 0 (ignored if ``query_uv [N, 2]`` is given).
    Returns:
        ``xyz [N, T, 3]`` world metres (NaN where a moving point is unknown) and ``visible [N, T]`` bool, for the
        query points with valid depth in frame 0.
    """
    T, height, width = depth.shape
    uv0 = query_grid(height, width, query_stride) if query_uv is None else query_uv
    z0 = sample_nearest(depth[0], uv0)
    uv0, z0 = uv0[z0 > 0], z0[z0 > 0]
    moving = np.zeros(len(uv0), bool) if dynamic_mask is None else sample_nearest(dynamic_mask[0], uv0)

    fixed = np.repeat(_lift(uv0, z0, K[0], c2w[0])[:, None], T, axis=1)
    xyz, visible = fixed, visible_from_depth(fixed, depth, K, c2w, occlusion_tolerance)
    if moving.any():
        uv, chained = chain_flow(uv0[moving], forward, backward)
        lifted = np.full((int(moving.sum()), T, 3), np.nan)
        seen = np.zeros((int(moving.sum()), T), bool)
        for t in range(T):
            z = sample_nearest(depth[t], uv[:, t])
            seen[:, t] = chained[:, t] & (z > 0)
            lifted[seen[:, t], t] = _lift(uv[seen[:, t], t], z[seen[:, t]], K[t], c2w[t])
        xyz[moving], visible[moving] = lifted, seen
    return xyz.astype(np.float32), visible
