"""Pure-PyTorch differentiable Gaussian rasteriser: the CPU twin of gsplat's CUDA kernels.

Per camera: project (``projection.py``), cull, sort the visible Gaussians by depth once, then composite front
to back. Instead of gsplat's 16x16 tiles, every Gaussian is paired with exactly the pixels of its bounding box
where its ellipse reaches ``alpha >= 1/255`` (each box row trimmed to that interval); pairs are generated in
depth order and stably sorted by pixel, so each pixel's pairs form a contiguous, depth-ordered segment.
Transmittance is an exclusive segmented cumulative sum of ``log(1 - alpha)`` in float64. The backward pass is
written out (``_Composite``) rather than traced by autograd. The compositing rule is gsplat's:

    alpha = min(ALPHA_MAX, opacity * exp(-sigma)),  skipped if sigma < 0 or alpha < 1/255,
    a pixel stops (exclusive) at the first Gaussian that would take its transmittance to <= 1e-4,
    rgb = sum w_i c_i + (1 - sum w_i) background,  depth = sum w_i z_i / sum w_i  ("ED"),  w_i = alpha_i T_i.

Memory is bounded: image rows are grouped into bands of at most ``max_pairs`` (Gaussian, pixel) box pairs,
a gradient-free first pass finds the pairs that contribute, and only those are kept for the backward pass. With
several bands and gradients enabled, each band is recomputed during the backward pass (activation
checkpointing), so training memory is bounded as well. The bound is ``max_pairs`` or the pairs of a single
image row, whichever is larger: a row is never split, so a row crossed by very many large Gaussians (at
most ``width x N`` pairs) is processed whole.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from d4s.gaussians.field import GaussianField
from d4s.gaussians.sh import sh_to_color
from d4s.render.projection import ALPHA_THRESHOLD, project_gaussians, quat_scale_to_covariance
from d4s.render.output import RenderOutput

# gsplat 1.5.3's kernels clamp alpha at 0.999; the original 3DGS rasteriser uses 0.99. We follow gsplat so
# the two backends agree (see docs/renderer.md).
ALPHA_MAX = 0.999
TRANSMITTANCE_MIN = 1e-4
DEFAULT_MAX_PAIRS = 1 << 22


def _segment_exclusive_cumsum(values: Tensor, segment_ids: Tensor, num_segments: int) -> Tensor:
    """Exclusive cumulative sum of ``values [P]`` within runs of equal, sorted ``segment_ids [P]``."""
    exclusive = torch.cumsum(values, dim=0) - values
    counts = torch.bincount(segment_ids, minlength=num_segments)
    starts = torch.cumsum(counts, dim=0) - counts
    return exclusive - exclusive.index_select(0, starts.index_select(0, segment_ids))


def _transmittance(alpha: Tensor, pixel: Tensor, num_pixels: int) -> Tensor:
    """Transmittance in front of each pair, ``prod_{earlier pairs of the pixel} (1 - alpha)`` (float64)."""
    return torch.exp(_segment_exclusive_cumsum(torch.log1p(-alpha.double()), pixel, num_pixels))


def _row_interval(mx: Tensor, conic: tuple[Tensor, Tensor, Tensor], bound: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive pixel columns ``(x_first, x_last)`` ``[S]`` (int64; empty when ``x_last < x_first``) of the row
    segments ``S`` where ``sigma <= bound``: the roots of ``a dx^2 / 2 + b dy dx + c dy^2 / 2 - bound``, a quadratic
    in ``dx = x + 1/2 - mx`` (``mx``, the conic ``(a, b, c)``, ``bound`` and ``dy``: ``[S]``, float64)."""
    a, b, c = conic
    discriminant = (b * b - a * c) * dy * dy + 2.0 * a * bound
    half_width = torch.sqrt(discriminant.clamp_min(0.0)) / a
    centre = mx - 0.5 - b * dy / a
    first = torch.ceil(centre - half_width)
    last = torch.where(discriminant >= 0, torch.floor(centre + half_width), first - 1)
    return first.long(), last.long()


def _contributing_pairs(
    means2d: Tensor, conics: Tensor, opacities: Tensor, boxes: Tensor, row_start: int, row_end: int, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The (Gaussian, pixel) pairs of rows ``[row_start, row_end)`` that contribute under gsplat's rules.

    Works row segment by row segment: a Gaussian's box is cut into rows, each row into pixels, so the
    quadratic form factors as ``sigma = (A dx + B) dx + C`` with ``A, B, C`` constant along a row. Each row is
    trimmed to the interval where ``alpha >= 1/255`` (the roots of that quadratic, widened by a slack far above
    rounding), which drops the box's corners outside the ellipse before any per-pixel work; the per-pixel test
    below stays the rule. Pairs are generated front to back and stably sorted by pixel.

    Returns:
        pixel ``[P]`` (band-local, ascending), gauss ``[P]`` (index into the inputs), alpha ``[P]`` and the
        transmittance in front of each pair ``[P]`` (float64). Gradient-free.
    """
    x0, x1, y0, y1 = boxes.unbind(-1)
    gauss = ((y0 < row_end) & (y1 >= row_start)).nonzero().squeeze(1)  # stays front to back
    seg_y0 = y0[gauss].clamp_min(row_start)
    rows_per_gauss = (y1[gauss].clamp_max(row_end - 1) - seg_y0 + 1).clamp_min(0)
    seg_gauss = torch.repeat_interleave(gauss, rows_per_gauss)
    seg_first = torch.repeat_interleave(torch.cumsum(rows_per_gauss, 0) - rows_per_gauss, rows_per_gauss)
    seg_y = (
        torch.repeat_interleave(seg_y0, rows_per_gauss) + torch.arange(len(seg_gauss), device=gauss.device) - seg_first
    )
    mx, my = means2d[seg_gauss].unbind(-1)
    a, b, c = conics[seg_gauss].unbind(-1)
    seg_opacity = opacities[seg_gauss]
    dy = seg_y.to(mx.dtype) + 0.5 - my
    # alpha >= 1/255 <=> sigma <= log(255 o); in float64 with a slack of 1e-4 (relative and absolute), far above
    # rounding, so that the trimmed rows keep every pixel the per-pixel test below keeps
    bound = torch.log(seg_opacity.double() / ALPHA_THRESHOLD).clamp_min(0.0) * (1 + 1e-4) + 1e-4
    seg_x0, seg_x1 = _row_interval(mx.double(), (a.double(), b.double(), c.double()), bound, dy.double())
    seg_x0 = torch.maximum(seg_x0, x0[seg_gauss])
    seg_len = (torch.minimum(seg_x1, x1[seg_gauss]) - seg_x0 + 1).clamp_min(0)
    num_pairs = int(seg_len.sum())

    seg_of_pair = torch.repeat_interleave(
        torch.arange(len(seg_gauss), device=gauss.device), seg_len, output_size=num_pairs
    )

    def expand(per_segment: Tensor) -> Tensor:
        return per_segment.index_select(0, seg_of_pair)

    # a pair's column is its segment's first column plus (pair index - index of the segment's first pair), in
    # integers: as a float sum, the pair index (up to millions) would cost dx its fractional digits in float32
    seg_x_shift = seg_x0 - (torch.cumsum(seg_len, 0) - seg_len)
    pair_x = expand(seg_x_shift) + torch.arange(num_pairs, device=gauss.device)
    dx = pair_x.to(mx.dtype) + 0.5 - expand(mx)
    sigma = (expand(0.5 * a) * dx + expand(b * dy)) * dx + expand(0.5 * c * dy * dy)
    alpha = torch.clamp_max(expand(seg_opacity) * torch.exp(-sigma), ALPHA_MAX)
    valid = ((sigma >= 0) & (alpha >= ALPHA_THRESHOLD)).nonzero().squeeze(1)

    pixel = (expand((seg_y - row_start) * width) + pair_x).index_select(0, valid).int()
    pixel, order = torch.sort(pixel, stable=True)  # pixel-major; front-to-back order kept within a pixel
    source = valid.index_select(0, order)
    alpha = alpha.index_select(0, source)
    pair_gauss = seg_gauss.index_select(0, seg_of_pair.index_select(0, source))
    pixel = pixel.long()

    num_pixels = (row_end - row_start) * width
    transmittance = _transmittance(alpha, pixel, num_pixels)
    keep = (transmittance * (1.0 - alpha.double()) > TRANSMITTANCE_MIN).nonzero().squeeze(1)
    return tuple(t.index_select(0, keep) for t in (pixel, pair_gauss, alpha, transmittance))


class _Composite(torch.autograd.Function):
    """Per-pixel weighted sums of the contributing pairs' features, with an analytic backward pass.

    Forward: ``out[p] = sum_i w_i [features[g_i], 1]`` over the pairs ``i`` of pixel ``p`` (front to back),
    ``w_i = alpha_i T_i``; the last channel is the pixel's coverage. Backward, with ``s_i = [features[g_i], 1] .
    grad_out[p]`` and ``S_i = sum_{j behind i} w_j s_j`` (every ``T_j`` behind ``i`` holds a factor
    ``1 - alpha_i``):

        dL/dalpha_i = T_i s_i - S_i / (1 - alpha_i)
        alpha_i = min(ALPHA_MAX, o exp(-sigma)):  dalpha/do = alpha / o,  dalpha/dsigma = -alpha  (0 when clamped)
        sigma = a dx^2 / 2 + b dx dy + c dy^2 / 2,  dx = px + 1/2 - mx,  dy = py + 1/2 - my

    As ``a, b, c, o`` are constant per Gaussian, its gradients need only the sums over its pairs of
    ``g dx, g dy, g dx^2, g dx dy, g dy^2`` (``g = dL/dsigma``), ``alpha dL/dalpha`` and ``w grad_out[p]``, taken by
    one ``index_add``. These are autograd's gradients of the formulas above without autograd's graph of per-pair
    intermediates. Per-pair quantities are laid out channel-major (``[K, P]``), where gathers and ``index_add``
    run several times faster than pair-major on a CPU (bench/RESULTS.md, "Renderer").
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, pairs):
        pixel, gauss, alpha, transmittance, row_start, width, num_pixels = pairs
        weight = (alpha.double() * transmittance).to(features.dtype)
        channels = torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1).T.contiguous()  # [F+1, G]
        ctx.save_for_backward(means2d, conics, opacities, channels, pixel, gauss, alpha, transmittance)
        ctx.row_start, ctx.width = row_start, width
        summed = channels.new_zeros(channels.shape[0], num_pixels).index_add(
            1, pixel, channels.index_select(1, gauss) * weight
        )
        return summed.T

    @staticmethod
    def backward(ctx, grad_out):
        means2d, conics, opacities, channels, pixel, gauss, alpha, transmittance = ctx.saved_tensors
        num_pixels = grad_out.shape[0]
        pair_grad = grad_out.T.contiguous().index_select(1, pixel)  # [F+1, P]
        weight = alpha.double() * transmittance
        s = (channels.index_select(1, gauss) * pair_grad).sum(0).double()
        weighted = weight * s
        in_front = _segment_exclusive_cumsum(weighted, pixel, num_pixels)
        behind = weighted.new_zeros(num_pixels).index_add(0, pixel, weighted).index_select(0, pixel)
        behind = behind - in_front - weighted
        grad_alpha = (transmittance * s - behind / (1.0 - alpha.double())).to(alpha.dtype)
        grad_alpha = grad_alpha.masked_fill(alpha >= ALPHA_MAX, 0.0)  # clamped: no gradient to o or sigma
        mx, my = means2d.T.index_select(1, gauss)
        dx = (pixel % ctx.width).to(mx.dtype) + 0.5 - mx
        dy = (pixel // ctx.width + ctx.row_start).to(mx.dtype) + 0.5 - my
        g = -grad_alpha * alpha  # dL/dsigma
        g_dx, g_dy = g * dx, g * dy
        per_pair = torch.cat(
            [
                torch.stack([g_dx, g_dy, g_dx * dx, g_dx * dy, g_dy * dy, -g]),
                weight.to(pair_grad.dtype) * pair_grad[:-1],
            ]
        )
        sums = per_pair.new_zeros(per_pair.shape[0], means2d.shape[0]).index_add(1, gauss, per_pair)
        sx, sy, sxx, sxy, syy, s_alpha = sums[:6]
        a, b, c = conics.unbind(-1)
        grad_means2d = torch.stack([-(a * sx + b * sy), -(c * sy + b * sx)], dim=-1)
        grad_conics = torch.stack([0.5 * sxx, sxy, 0.5 * syy], dim=-1)
        return grad_means2d, grad_conics, s_alpha / opacities, sums[6:].T, None


def _composite_band(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    features: Tensor,
    boxes: Tensor,
    row_start: int,
    row_end: int,
    width: int,
) -> tuple[Tensor, Tensor]:
    """Composite image rows ``[row_start, row_end)``.

    Args:
        means2d, conics, opacities, features: ``[G, 2]``, ``[G, 3]``, ``[G]``, ``[G, F]`` of the visible
            Gaussians in front-to-back order (features are colour and depth channels).
        boxes: ``[G, 4]`` int64 inclusive pixel boxes ``(x0, x1, y0, y1)``, already clipped to the image.
    Returns:
        accumulated ``features [rows * width, F]`` and ``alpha [rows * width]``.
    """
    with torch.no_grad():
        pixel, gauss, alpha, transmittance = _contributing_pairs(
            means2d, conics, opacities, boxes, row_start, row_end, width
        )
    pairs = (pixel, gauss, alpha, transmittance, row_start, width, (row_end - row_start) * width)
    out = _Composite.apply(means2d, conics, opacities, features, pairs)
    return out[:, :-1], out[:, -1]


def _pixel_boxes(means2d: Tensor, radii: Tensor, width: int, height: int) -> Tensor:
    """Inclusive pixel boxes ``[G, 4]`` ``(x0, x1, y0, y1)`` of pixels whose centres lie within the radii."""
    mx, my = means2d.detach().unbind(-1)
    rx, ry = radii.to(means2d.dtype).unbind(-1)
    x0 = torch.ceil(mx - rx - 0.5).clamp_min(0)
    y0 = torch.ceil(my - ry - 0.5).clamp_min(0)
    x1 = torch.maximum(torch.floor(mx + rx - 0.5).clamp_max(width - 1), x0 - 1)  # empty: x1 = x0 - 1
    y1 = torch.maximum(torch.floor(my + ry - 0.5).clamp_max(height - 1), y0 - 1)
    return torch.stack([x0, x1, y0, y1], dim=-1).long()


def _row_bands(boxes: Tensor, height: int, max_pairs: int) -> list[tuple[int, int]]:
    """Split the rows into consecutive bands with at most ``max_pairs`` bounding-box pairs each."""
    x0, x1, y0, y1 = boxes.unbind(-1)
    nx = x1 - x0 + 1
    rows = y1 >= y0
    change = torch.zeros(height + 1, dtype=torch.long, device=boxes.device)
    change.index_add_(0, y0[rows], nx[rows])
    change.index_add_(0, y1[rows] + 1, -nx[rows])
    pairs_per_row = torch.cumsum(change, 0)[:height].tolist()
    bands, start, total = [], 0, 0
    for row, pairs in enumerate(pairs_per_row):
        if total and total + pairs > max_pairs:
            bands.append((start, row))
            start, total = row, 0
        total += pairs
    bands.append((start, height))
    return bands


def _render_view(
    field: GaussianField,
    covars: Tensor,
    opacities: Tensor,
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    eps2d: float,
    max_pairs: int,
) -> tuple[Tensor, Tensor, Tensor]:
    projected = project_gaussians(
        field.means, covars, c2w[None], K[None], width, height, eps2d, near_plane, far_plane, opacities
    )
    visible = (projected.radii[0] > 0).all(dim=-1).nonzero().squeeze(1)
    visible = visible[torch.argsort(projected.depths[0, visible], stable=True)]
    means2d = projected.means2d[0, visible]
    colors = sh_to_color(field.sh[visible], field.means[visible] - c2w[:3, 3])
    features = torch.cat([colors, projected.depths[0, visible, None]], dim=-1)
    boxes = _pixel_boxes(means2d, projected.radii[0, visible], width, height)
    args = (means2d, projected.conics[0, visible], opacities[visible], features, boxes)

    bands = _row_bands(boxes, height, max_pairs)
    recompute = len(bands) > 1 and torch.is_grad_enabled()
    parts = [
        checkpoint(_composite_band, *args, r0, r1, width, use_reentrant=False)
        if recompute
        else _composite_band(*args, r0, r1, width)
        for r0, r1 in bands
    ]
    accumulated = torch.cat([p[0] for p in parts]).reshape(height, width, -1)
    alpha = torch.cat([p[1] for p in parts]).reshape(height, width)
    depth = accumulated[..., 3] / alpha.clamp_min(1e-10)
    return accumulated[..., :3], depth, alpha


def render_torch(
    field: GaussianField,
    c2w: Tensor,
    K: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> RenderOutput:
    """Render ``field`` into ``C`` cameras with the pure-PyTorch rasteriser (inputs already validated).

    Args:
        field: ``N`` Gaussians (float32 or float64, any device).
        c2w: ``[C, 4, 4]`` camera-to-world poses; K: ``[C, 3, 3]`` intrinsics in pixels.
        background: ``[C, 3]`` colours behind the Gaussians, or ``None`` for black.
        max_pairs: bound on (Gaussian, pixel) pairs held at once, which bounds memory.
    Returns:
        ``RenderOutput`` with rgb ``[C, H, W, 3]``, depth ``[C, H, W]`` and alpha ``[C, H, W]``.
    """
    covars = quat_scale_to_covariance(field.quats, field.scales)
    opacities = field.opacities
    views = [
        _render_view(field, covars, opacities, c2w[i], K[i], width, height, near_plane, far_plane, eps2d, max_pairs)
        for i in range(c2w.shape[0])
    ]
    rgb = torch.stack([v[0] for v in views])
    depth = torch.stack([v[1] for v in views])
    alpha = torch.stack([v[2] for v in views])
    if background is not None:
        rgb = rgb + (1.0 - alpha[..., None]) * background[:, None, None, :]
    return RenderOutput(rgb=rgb, depth=depth, alpha=alpha)
