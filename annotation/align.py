"""Metric alignment of relative depth, paper Appendix B, Algorithm 1, plus the metric oracles it aligns to.

Algorithm 1: split the image into a set of masks; for every mask where the metric oracle has a valid
measurement, pair the median of the relative map inside the mask with the oracle's value there (an "anchor");
solve least squares for a scale and a shift over the anchors; apply them to the whole relative map.

Choices the paper leaves open, all configurable (see ``configs/annotate/``):
- the mask set: SLIC superpixels (scikit-image), a regular grid, or label maps supplied by an estimator;
- the oracle's value for a mask: the median of its valid pixels, valid when enough of the mask is covered;
- the alignment space: disparity for Video Depth Anything's relative output (affine-invariant inverse depth),
  depth otherwise; one scale and shift per clip (the relative model is temporally consistent), or per frame;
- an optional robust fit (RANSAC or IRLS with Tukey weights) beyond the paper's plain least squares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from skimage.segmentation import slic

Space = Literal["depth", "disparity"]
Robust = Literal["none", "ransac", "irls"]
MaskKind = Literal["superpixels", "grid"]
_EPS = 1e-8


@dataclass
class AlignmentResult:
    """Scale and shift (``metric ~ scale * relative + shift`` in ``space``) and how well they fit.

    ``anchor_rmse`` is the root-mean-square anchor residual in the alignment space (inliers only);
    ``depth_absrel`` the mean absolute relative depth error of the aligned map against the oracle's valid pixels.
    """

    scale: float
    shift: float
    space: str
    method: str
    num_anchors: int
    num_inliers: int
    anchor_rmse: float
    depth_absrel: float

    def as_dict(self) -> dict:
        return asdict(self)


def grid_labels(height: int, width: int, cell: int) -> np.ndarray:
    """A regular grid of ``cell x cell`` pixel masks as a label map ``[H, W]`` int64 (labels 0..M-1)."""
    if cell < 1:
        raise ValueError(f"cell: must be >= 1, got {cell}")
    rows = np.arange(height) // cell
    cols = np.arange(width) // cell
    return rows[:, None] * ((width + cell - 1) // cell) + cols[None, :]


def superpixel_labels(image: np.ndarray, num_segments: int = 256, compactness: float = 10.0) -> np.ndarray:
    """SLIC superpixels of an RGB ``image [H, W, 3]`` as a label map ``[H, W]`` int64 (labels 0..M-1)."""
    labels = slic(image, n_segments=num_segments, compactness=compactness, start_label=0, channel_axis=-1)
    return labels.astype(np.int64)


def mask_labels(
    frames: np.ndarray, kind: MaskKind = "superpixels", num_segments: int = 256, cell: int = 16
) -> np.ndarray:
    """The mask set of Algorithm 1 (line 4) for every frame ``[T, H, W, 3]`` uint8: label maps ``[T, H, W]``."""
    if kind == "superpixels":
        return np.stack([superpixel_labels(frame, num_segments) for frame in frames])
    if kind == "grid":
        return np.broadcast_to(grid_labels(*frames.shape[1:3], cell), frames.shape[:3]).copy()
    raise ValueError(f"masks: unknown kind {kind!r}; choose 'superpixels' or 'grid'")


def grouped_median(values: np.ndarray, groups: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Median and count of ``values [P]`` per group id ``groups [P]`` in ``[0, num_groups)``; NaN where empty."""
    order = np.lexsort((values, groups))
    values, groups = values[order], groups[order]
    counts = np.bincount(groups, minlength=num_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    medians = np.full(num_groups, np.nan)
    present = counts > 0
    low = starts[present] + (counts[present] - 1) // 2
    high = starts[present] + counts[present] // 2
    medians[present] = 0.5 * (values[low] + values[high])
    return medians, counts


def to_space(depth: np.ndarray, space: Space) -> np.ndarray:
    """Metric z-depth (0 = invalid) in the alignment space; invalid stays 0."""
    if space == "depth":
        return depth
    if space == "disparity":
        return np.where(depth > 0, 1.0 / np.maximum(depth, _EPS), 0.0)
    raise ValueError(f"space: unknown {space!r}; choose 'depth' or 'disparity'")


def from_space(values: np.ndarray, space: Space) -> np.ndarray:
    """Inverse of :func:`to_space`: non-positive values (behind the camera after alignment) become 0 = invalid."""
    values = np.where(np.isfinite(values), values, 0.0)
    if space == "depth":
        return np.maximum(values, 0.0)
    return np.where(values > _EPS, 1.0 / np.maximum(values, _EPS), 0.0)


def collect_anchors(
    relative: np.ndarray,
    oracle: np.ndarray,
    labels: np.ndarray,
    min_oracle_pixels: int = 1,
    min_oracle_fraction: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1, lines 5-13: anchor pairs ``(median relative value, oracle value)`` over all masks.

    Args:
        relative: ``[T, H, W]`` relative map in the alignment space (<= 0 or non-finite = invalid).
        oracle: ``[T, H, W]`` metric oracle in the same space (<= 0 or non-finite = invalid; may be sparse).
        labels: ``[T, H, W]`` mask labels per frame (masks of different frames are different masks).
        min_oracle_pixels, min_oracle_fraction: a mask's oracle value is a valid measurement when at least this
            many of its pixels, and this fraction of them, have a valid oracle value; its value is their median.
    Returns:
        ``relative_medians [M]`` and ``oracle_values [M]`` for the ``M`` masks with a valid measurement.
    """
    T = labels.shape[0]
    labels = labels.reshape(T, -1).astype(np.int64)
    per_frame = int(labels.max()) + 1
    groups = (labels + per_frame * np.arange(T)[:, None]).ravel()
    relative, oracle = relative.ravel(), oracle.ravel()
    num = T * per_frame
    sizes = np.bincount(groups, minlength=num)
    rel_ok = np.isfinite(relative) & (relative > 0)
    ora_ok = np.isfinite(oracle) & (oracle > 0) & rel_ok  # the oracle is read where the relative map is valid
    rel_median, _ = grouped_median(relative[rel_ok], groups[rel_ok], num)
    ora_median, ora_count = grouped_median(oracle[ora_ok], groups[ora_ok], num)
    valid = (
        (ora_count >= max(min_oracle_pixels, 1)) & (ora_count >= min_oracle_fraction * sizes) & np.isfinite(rel_median)
    )
    return rel_median[valid], ora_median[valid]


def _least_squares(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """Algorithm 1, line 15: ``argmin_{s,t} sum w (s x + t - y)^2`` in closed form."""
    w = np.ones_like(x) if weights is None else weights
    sw = w.sum()
    mx, my = (w * x).sum() / sw, (w * y).sum() / sw
    var = (w * (x - mx) ** 2).sum()
    if var <= _EPS * max(sw, 1.0) * max(mx * mx, 1.0):
        raise ValueError("alignment: the anchors' relative values do not vary, so scale and shift are not determined")
    scale = (w * (x - mx) * (y - my)).sum() / var
    return float(scale), float(my - scale * mx)


def _ransac(x, y, iterations: int, threshold: float, seed: int) -> np.ndarray:
    """Inlier mask of the two-point line hypothesis with the most anchors within ``threshold * |y|``."""
    rng = np.random.default_rng(seed)
    best = np.zeros(len(x), bool)
    for _ in range(iterations):
        i, j = rng.choice(len(x), 2, replace=False)
        if abs(x[i] - x[j]) <= _EPS * max(abs(x[i]), 1.0):
            continue
        scale = (y[i] - y[j]) / (x[i] - x[j])
        inliers = np.abs(scale * x + (y[i] - scale * x[i]) - y) <= threshold * np.abs(y)
        if inliers.sum() > best.sum():
            best = inliers
    return best


def _irls(x, y, iterations: int, seed: int) -> np.ndarray:
    """Tukey-biweight IRLS started from the best of a RANSAC-style pass; returns the final weights > 0 mask."""
    inliers = _ransac(x, y, iterations=64, threshold=0.1, seed=seed)
    scale, shift = _least_squares(x[inliers], y[inliers])
    for _ in range(iterations):
        residual = scale * x + shift - y
        sigma = 1.4826 * np.median(np.abs(residual - np.median(residual))) + _EPS
        u = residual / (4.685 * sigma)
        weights = np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0)
        scale, shift = _least_squares(x, y, weights)
    return np.abs(scale * x + shift - y) <= 4.685 * sigma


def fit_scale_shift(
    x: np.ndarray,
    y: np.ndarray,
    robust: Robust = "none",
    ransac_iterations: int = 256,
    ransac_threshold: float = 0.05,
    irls_iterations: int = 20,
    seed: int = 0,
) -> tuple[float, float, np.ndarray]:
    """Scale and shift with ``y ~ scale * x + shift`` over anchors ``x, y [M]``, and the inlier mask ``[M]``.

    ``robust="none"`` is the paper's least squares over all anchors; ``"ransac"`` keeps anchors within a relative
    error ``ransac_threshold`` of the best two-point hypothesis; ``"irls"`` down-weights outliers with Tukey's
    biweight. Both robust variants refit least squares on their inliers.
    """
    if len(x) < 2:
        raise ValueError(f"alignment: needs at least 2 anchors, got {len(x)} (too few masks with a valid oracle value)")
    if robust == "none":
        inliers = np.ones(len(x), bool)
    elif robust == "ransac":
        inliers = _ransac(x, y, ransac_iterations, ransac_threshold, seed)
    elif robust == "irls":
        inliers = _irls(x, y, irls_iterations, seed)
    else:
        raise ValueError(f"robust: unknown {robust!r}; choose 'none', 'ransac' or 'irls'")
    if inliers.sum() < 2:
        raise ValueError("alignment: fewer than 2 inlier anchors")
    scale, shift = _least_squares(x[inliers], y[inliers])
    return scale, shift, inliers


def align_to_oracle(
    relative: np.ndarray,
    oracle_depth: np.ndarray,
    labels: np.ndarray,
    space: Space = "disparity",
    robust: Robust = "none",
    min_oracle_pixels: int = 1,
    min_oracle_fraction: float = 0.5,
    per_frame: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, list[AlignmentResult]]:
    """Algorithm 1 over a clip: metric depth from a relative map and a metric oracle.

    Args:
        relative: ``[T, H, W]`` relative map already in ``space`` (disparity or depth), up to scale and shift;
            values <= 0 or non-finite are invalid and stay invalid (0) in the result.
        oracle_depth: ``[T, H, W]`` metric z-depth, 0 = invalid (dense ground truth, or sparse from tracks).
        labels: ``[T, H, W]`` mask set (see :func:`mask_labels`).
        space: where the affine ambiguity lives: ``"disparity"`` for affine-invariant inverse depth.
        per_frame: one scale and shift per frame instead of one per clip.
    Returns:
        metric depth ``[T, H, W]`` (line 17; 0 where the aligned value is not a valid depth) and the alignment
        results (one, or one per frame).
    """
    if not (relative.shape == oracle_depth.shape == labels.shape) or relative.ndim != 3:
        raise ValueError(
            f"alignment: relative, oracle_depth and labels must share one [T, H, W] shape, got "
            f"{list(relative.shape)}, {list(oracle_depth.shape)}, {list(labels.shape)}"
        )
    oracle = to_space(oracle_depth, space)
    chunks = [slice(t, t + 1) for t in range(len(relative))] if per_frame else [slice(None)]
    depth = np.zeros(relative.shape, np.float32)
    results = []
    for chunk in chunks:
        x, y = collect_anchors(relative[chunk], oracle[chunk], labels[chunk], min_oracle_pixels, min_oracle_fraction)
        scale, shift, inliers = fit_scale_shift(x, y, robust, seed=seed)
        values = relative[chunk]
        valid = np.isfinite(values) & (values > 0)
        depth[chunk] = np.where(valid, from_space(scale * np.where(valid, values, 0.0) + shift, space), 0.0)
        results.append(
            AlignmentResult(
                scale=scale,
                shift=shift,
                space=space,
                method="least_squares" if robust == "none" else robust,
                num_anchors=len(x),
                num_inliers=int(inliers.sum()),
                anchor_rmse=float(np.sqrt(np.mean((scale * x[inliers] + shift - y[inliers]) ** 2))),
                depth_absrel=depth_absrel(depth[chunk], oracle_depth[chunk]),
            )
        )
    return depth, results


def depth_absrel(depth: np.ndarray, reference: np.ndarray) -> float:
    """Mean ``|depth - reference| / reference`` over pixels valid in both (NaN when there are none)."""
    valid = (reference > 0) & (depth > 0) & np.isfinite(reference)
    if not valid.any():
        return float("nan")
    return float(np.mean(np.abs(depth[valid] - reference[valid]) / reference[valid]))


def median_scale(depth: np.ndarray, reference: np.ndarray) -> float:
    """The scale ``s`` with ``s * depth ~ reference`` (median ratio over pixels valid in both).

    Used to make MegaSaM's up-to-scale depth (and its camera translations, by the same factor) metric against a
    metric reference such as a metric depth model's output.
    """
    valid = (depth > 0) & (reference > 0) & np.isfinite(depth) & np.isfinite(reference)
    if valid.sum() < 16:
        raise ValueError(f"metric scale: only {int(valid.sum())} pixels valid in both maps")
    return float(np.median(reference[valid] / depth[valid]))


def trajectory_scale(c2w: np.ndarray, reference_c2w: np.ndarray) -> float:
    """The scale ``s`` that best maps the camera path ``c2w [T,4,4]`` onto ``reference_c2w [T,4,4]``.

    Both paths are expressed relative to their first camera (which removes any rigid change of world frame),
    then ``s = argmin || s t - t_ref ||^2`` over the relative translations.
    """

    def relative_translations(poses: np.ndarray) -> np.ndarray:
        first = poses[0]
        return (poses[:, :3, 3] - first[:3, 3]) @ first[:3, :3]

    t, t_ref = relative_translations(c2w), relative_translations(reference_c2w)
    denominator = float((t * t).sum())
    if denominator <= _EPS:
        raise ValueError("trajectory scale: the camera does not move, so its scale cannot be observed")
    return float((t * t_ref).sum()) / denominator


def sparse_depth_from_tracks(
    xyz: np.ndarray, visible: np.ndarray, K: np.ndarray, c2w: np.ndarray, height: int, width: int
) -> np.ndarray:
    """Sparse metric oracle: visible 3D track points ``xyz [N,T,3]`` z-buffered into depth maps ``[T,H,W]``.

    ``visible [N,T]``; ``K [T,3,3]``; ``c2w [T,4,4]``. Pixels no track lands on (and points behind the camera
    or outside the image) stay 0 = invalid; where several points land on one pixel the nearest wins.
    """
    T = c2w.shape[0]
    depth = np.full((T, height, width), np.inf)
    for t in range(T):
        points = xyz[visible[:, t], t]
        cam = (points - c2w[t, :3, 3]) @ c2w[t, :3, :3]
        z = cam[:, 2]
        front = np.isfinite(z) & (z > _EPS)
        uv = (cam[front] @ K[t].T)[:, :2] / z[front, None]
        col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
        np.minimum.at(depth[t], (row[inside], col[inside]), z[front][inside])
    return np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)
