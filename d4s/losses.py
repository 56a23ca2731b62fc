"""Training losses (paper Sec. 3.4): photometric (Eq. 3), geometric (Eq. 4 + total variation), motion (Eq. 5).

The flow-matching loss (Eq. 2) lives with its path in :class:`d4s.diffusion.FlowMatching`. Every function here
returns per-view or per-clip values, never a batch mean: the training module weights clips (padding clips get
0) and skips views without supervision, then averages. All computations run in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from d4s.geometry.cameras import project_points
from d4s.models.perceptual import LPIPS


def mse(rendered: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per view: ``rendered, target [..., 3, H, W]`` in ``[0, 1]`` -> ``[...]``."""
    return (rendered.float() - target.float()).pow(2).flatten(-3).mean(-1)


def lpips_distance(lpips: LPIPS, rendered: Tensor, target: Tensor) -> Tensor:
    """LPIPS per view (Eq. 3's perceptual term): ``rendered, target [..., 3, H, W]`` in ``[0, 1]`` -> ``[...]``."""
    lead = rendered.shape[:-3]
    return lpips(rendered.reshape(-1, *rendered.shape[-3:]), target.reshape(-1, *target.shape[-3:])).reshape(lead)


def pearson_depth_loss(depth: Tensor, reference: Tensor, valid: Tensor, min_pixels: int = 16) -> tuple[Tensor, Tensor]:
    """Eq. 4: ``1 - Cov(D, D*) / sqrt(Var(D) Var(D*))`` per view, over the pixels where ``valid`` holds.

    Args:
        depth: ``[..., H, W]`` rendered z-depth; reference: ``[..., H, W]`` annotated depth; valid: ``[..., H, W]``
            bool (reference depth known, > 0).
        min_pixels: views with fewer valid pixels, or a reference without variance (a fronto-parallel plane,
            where the correlation is undefined), are not supervised.
    Returns:
        ``(loss [...], supervised [...])``: the loss (0 where not supervised) and which views it covers. The loss
        is invariant to an affine change of either depth (scale and shift), so metric and relative depth supervise
        alike.
    """
    mask = valid.float()
    count = mask.flatten(-2).sum(-1)
    n = count.clamp_min(1.0)[..., None, None]
    d, r = depth.float(), reference.float()
    d_centred = (d - (d * mask).flatten(-2).sum(-1)[..., None, None] / n) * mask
    r_centred = (r - (r * mask).flatten(-2).sum(-1)[..., None, None] / n) * mask
    n = n[..., 0, 0]
    covariance = (d_centred * r_centred).flatten(-2).sum(-1) / n
    var_d = d_centred.pow(2).flatten(-2).sum(-1) / n
    var_r = r_centred.pow(2).flatten(-2).sum(-1) / n
    mean_r = (r * mask).flatten(-2).sum(-1) / n
    supervised = (count >= min_pixels) & (var_r > 1e-10 * mean_r.pow(2).clamp_min(1e-12))
    correlation = covariance / torch.sqrt(var_d * var_r + 1e-12)
    return torch.where(supervised, 1.0 - correlation, torch.zeros_like(correlation)), supervised


def depth_total_variation(depth: Tensor) -> Tensor:
    """``||grad D||_1`` (Sec. 3.4): mean absolute horizontal plus vertical neighbour difference, ``[..., H, W] -> [...]``.

    For a plane ``D = a u + b v + c`` this is ``|a| + |b|`` (metres per pixel).
    """
    depth = depth.float()
    horizontal = (depth[..., :, 1:] - depth[..., :, :-1]).abs().flatten(-2).mean(-1)
    vertical = (depth[..., 1:, :] - depth[..., :-1, :]).abs().flatten(-2).mean(-1)
    return horizontal + vertical


def random_visible_frame(visible: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A uniformly random frame where each track is visible: ``visible [B, N, T]`` -> ``(frame [B, N], any [B, N])``.

    ``any`` is false for tracks never visible (their ``frame`` is 0 and must not be used).
    """
    scores = torch.rand(visible.shape, generator=generator, device=visible.device) + 1.0
    return (scores * visible).argmax(-1), visible.any(-1)


def track_motion(
    dmu: Tensor,
    grid_size: tuple[int, int],
    track_xyz: Tensor,
    track_visible: Tensor,
    track_valid: Tensor,
    c2w: Tensor,
    K: Tensor,
    image_size: tuple[int, int],
    target_frames: Tensor,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Predicted and true 3D displacements of tracked points (the inputs of Eq. 5).

    Each valid track gets a random source frame ``f`` where it is visible; the Gaussian of frame ``f`` at the
    track's pixel there (nearest Gaussian of the pixel-aligned grid) stands for the point. That Gaussian's
    canonical position is its own frame's (it was unprojected there), so its predicted displacement to target
    time ``k`` is ``dmu_k`` and the true one is ``X(k) - X(f)``.

    Args:
        dmu: ``[B, V, T * h * w, 3]`` mean offsets at the ``V`` target times, Gaussians ordered (frame, row, col).
        grid_size: ``(h, w)``, the Gaussian grid of one frame (``H / s``, ``W / s``).
        track_xyz: ``[B, N, T, 3]`` world points; track_visible: ``[B, N, T]``; track_valid: ``[B, N]``.
        c2w: ``[B, T, 4, 4]``; K: ``[B, T, 3, 3]`` pixels of ``image_size = (H, W)``.
        target_frames: ``[B, V]`` frame index of each target time.
    Returns:
        ``(predicted [B, V, N, 3], true [B, V, N, 3], supervised [B, V, N])``: supervised where the track is
        valid, visible at its source frame (inside the image, in front of the camera) and at the target frame.
    """
    B, N = track_xyz.shape[:2]
    h, w = grid_size
    H, W = image_size
    frame, seen = random_visible_frame(track_visible, generator)
    batch = torch.arange(B, device=frame.device)[:, None].expand(B, N)
    source = track_xyz[batch, torch.arange(N, device=frame.device)[None].expand(B, N), frame]  # [B, N, 3]
    uv, z = project_points(source.float()[:, :, None], c2w[batch, frame].float(), K[batch, frame].float())
    uv, z = uv[:, :, 0], z[:, :, 0]
    inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < W) & (uv[..., 1] >= 0) & (uv[..., 1] < H)
    col = (uv[..., 0] * (w / W)).long().clamp(0, w - 1)
    row = (uv[..., 1] * (h / H)).long().clamp(0, h - 1)
    gaussian = (frame * h + row) * w + col  # [B, N]
    V = target_frames.shape[1]
    predicted = dmu.gather(2, gaussian[:, None, :, None].expand(B, V, N, 3))
    target_xyz = track_xyz.gather(2, target_frames[:, None, :, None].expand(B, N, V, 3)).transpose(1, 2)
    true = target_xyz.float() - source.float()[:, None]
    visible_then = track_visible.gather(2, target_frames[:, None, :].expand(B, N, V)).transpose(1, 2)
    supervised = visible_then & (track_valid & seen & inside)[:, None]
    return predicted, true, supervised


def motion_loss(
    predicted: Tensor,
    true: Tensor,
    supervised: Tensor,
    squared_scale: float | None = None,
    balance_threshold: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The two terms of Eq. 5 per clip, averaged over its supervised (track, target time) pairs.

    Args:
        predicted, true: ``[B, V, N, 3]`` displacements (metres); supervised: ``[B, V, N]`` bool.
        squared_scale: ``None`` for Eq. 5's norm ``||e||_2``; a length ``c`` (metres) for ``||e||_2^2 / c`` instead.
            With mostly static tracks the plain norm behaves like a median and holds an untrained head at zero
            motion; the squared error's gradient vanishes on the static pairs it already fits (an option, not the
            paper's loss; see ``configs/README.md``).
        balance_threshold: ``None`` averages the error over all supervised pairs (Eq. 5); a length ``m`` (metres)
            averages it separately over the moving pairs (true displacement at least ``m``) and the static ones and
            takes the mean of the two, so a few moving tracks among many static ones still pull (an option).
    Returns:
        ``(error [B], magnitude [B], count [B])``: the mean error term (weighted by ``lambda_m`` in Eq. 5),
        ``mean ||dX_pred||_1`` (the second term), and the number of supervised pairs (both terms are 0 where it is 0).
    """
    mask = supervised.float()
    count = mask.flatten(1).sum(-1)
    error = (predicted.float() - true.float()).norm(dim=-1)
    if squared_scale is not None:
        error = error.pow(2) / squared_scale
    magnitude = predicted.float().abs().sum(-1)
    denominator = count.clamp_min(1.0)
    mean_magnitude = (magnitude * mask).flatten(1).sum(-1) / denominator
    if balance_threshold is None:
        return (error * mask).flatten(1).sum(-1) / denominator, mean_magnitude, count
    moving = (true.float().norm(dim=-1) >= balance_threshold).float()
    means = []
    for part in (mask * moving, mask * (1.0 - moving)):
        part_count = part.flatten(1).sum(-1)
        means.append(((error * part).flatten(1).sum(-1) / part_count.clamp_min(1.0), part_count > 0))
    (moving_mean, has_moving), (static_mean, has_static) = means
    classes = has_moving.float() + has_static.float()
    return (moving_mean + static_mean) / classes.clamp_min(1.0), mean_magnitude, count


def weighted_mean(values: Tensor, weight: Tensor) -> Tensor:
    """``sum(w v) / max(1, sum(w))`` over a batch: ``values [B]``, ``weight [B]`` (0 drops a clip) -> scalar.

    Normalising by at least 1 keeps an all-zero-weight batch finite (0), so DDP ranks still run backward.
    """
    weight = weight.to(values.dtype)
    return (weight * values).sum() / weight.sum().clamp_min(1.0)
