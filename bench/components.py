"""Component benchmark: each of d4s's hand-made kernels against the same computation written the plain way.

    python bench/components.py [--out bench/results/components.json] [--repeats 20] [--quick]

The ratios behind bench/RESULTS.md's "Making the demo faster", measured in one run on the same inputs:

- ``composite``: forward + backward of one view's compositing (10k Gaussians at 64², the pairs a real render
  enumerates, captured from :func:`d4s.render.render`) through the analytic backward (``_Composite``) against
  autograd through the same formulas; also the pairs a whole-box enumeration would visit against those the row
  trimming visits, and the largest relative gradient difference between the two (a check that they agree);
- ``guidance``: one guided Euler step of the tiny DiT (``configs/tiny/model.yaml``, 9 frames at 64²) with the
  conditional and unconditional passes as one batch (:meth:`d4s.models.VideoDiT.sample`) against two passes;
- ``adamw``: one AdamW step over the tiny DiT's weights, PyTorch's fused kernel against the per-tensor
  ``foreach`` loop (:func:`d4s.stages.base.adamw`);
- ``plucker``: the Plücker maps of 72 cameras at 64² (:func:`d4s.geometry.plucker_embedding`: one ``[6, 3]`` map
  per camera applied to the pixel grid) against rays built pixel by pixel.

Milliseconds are medians over ``--repeats`` after two warm-up runs, with torch's default threads. Prints a table
and writes JSON.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import bench_parser, machine_info
from render import bench_field

from d4s.diffusion.sampler import Guidance, euler_sample
from d4s.geometry.cameras import intrinsics_from_fov
from d4s.geometry.plucker import plucker_embedding
from d4s.geometry.trajectories import make_trajectory
from d4s.models.config import ModelConfig
from d4s.models.video_dit import Conditioning, VideoDiT
from d4s.render import render, torch_backend
from d4s.stages.base import OptimizerConfig, adamw

REPO = Path(__file__).resolve().parents[1]


def median_ms(work: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``work()`` in milliseconds, after two warm-up calls."""
    for _ in range(2):
        work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


# ------------------------------------------------------------------------------------------------- compositing
def captured_band(size: int) -> tuple:
    """The arguments of the compositing of one real render of 10k Gaussians at ``size``² (one row band)."""
    captured = []
    original = torch_backend._composite_band
    torch_backend._composite_band = lambda *args: captured.append(args) or original(*args)
    try:
        field = bench_field(10_000, torch.device("cpu"))
        render(field, torch.eye(4)[None], intrinsics_from_fov(size, size, 60.0)[None], size, size, "torch")
    finally:
        torch_backend._composite_band = original
    (band,) = captured
    return band


def autograd_composite(means2d, conics, opacities, features, boxes, row_start, row_end, width):
    """``_composite_band``'s output with autograd through alpha, transmittance and the weighted sums."""
    with torch.no_grad():
        pixel, gauss, _, _ = torch_backend._contributing_pairs(
            means2d, conics, opacities, boxes, row_start, row_end, width
        )
    num_pixels = (row_end - row_start) * width
    mx, my = means2d.index_select(0, gauss).unbind(-1)
    a, b, c = conics.index_select(0, gauss).unbind(-1)
    dx = (pixel % width).to(mx.dtype) + 0.5 - mx
    dy = (pixel // width + row_start).to(mx.dtype) + 0.5 - my
    sigma = 0.5 * a * dx * dx + b * dx * dy + 0.5 * c * dy * dy
    alpha = torch.clamp_max(opacities.index_select(0, gauss) * torch.exp(-sigma), torch_backend.ALPHA_MAX)
    weight = (alpha.double() * torch_backend._transmittance(alpha, pixel, num_pixels)).to(features.dtype)
    channels = torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1).index_select(0, gauss)
    summed = features.new_zeros(num_pixels, channels.shape[1]).index_add(0, pixel, channels * weight[:, None])
    return summed[:, :-1], summed[:, -1]


def composite_case(repeats: int, size: int) -> dict:
    means2d, conics, opacities, features, boxes, r0, r1, width = captured_band(size)
    inputs = [x.detach().clone().requires_grad_(True) for x in (means2d, conics, opacities, features)]
    grad = torch.randn(r1 * width - r0 * width, features.shape[1] + 1, generator=torch.Generator().manual_seed(0))

    def step(composite) -> list[torch.Tensor]:
        for x in inputs:
            x.grad = None
        colour, alpha = composite(*inputs, boxes, r0, r1, width)
        (torch.cat([colour, alpha[:, None]], dim=1) * grad).sum().backward()
        return [x.grad.clone() for x in inputs]

    analytic, reference = step(torch_backend._composite_band), step(autograd_composite)
    difference = max(float((a - r).norm() / r.norm().clamp_min(1e-30)) for a, r in zip(analytic, reference))
    x0, x1, y0, y1 = boxes.unbind(-1)
    box_pairs = int(((x1 - x0 + 1).clamp_min(0) * (y1 - y0 + 1).clamp_min(0)).sum())
    with torch.no_grad():
        pixel = torch_backend._contributing_pairs(means2d, conics, opacities, boxes, r0, r1, width)[0]
    return {
        "case": f"composite forward + backward, 10k Gaussians at {size}²",
        "plain_ms": median_ms(lambda: step(autograd_composite), repeats),
        "d4s_ms": median_ms(lambda: step(torch_backend._composite_band), repeats),
        "box_pairs": box_pairs,
        "contributing_pairs": int(pixel.numel()),
        "max_relative_gradient_difference": difference,
    }


# ---------------------------------------------------------------------------------------------------- guidance
def tiny_dit() -> VideoDiT:
    torch.manual_seed(0)
    return VideoDiT.from_config(ModelConfig.from_yaml(REPO / "configs/tiny/model.yaml").video_dit).eval()


def guidance_case(repeats: int) -> dict:
    dit, frames, size = tiny_dit(), 9, 64
    c = dit.transformer.config
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=g)
    K = intrinsics_from_fov(size, size, 55.0).expand(frames, 3, 3)
    camera = plucker_embedding(make_trajectory("spiral", frames, 2.0), K, size, size)
    text = torch.randn(1, c.max_text_seq_length, c.text_embed_dim, generator=g)
    condition = dit.conditioning(image, camera[None], text, torch.zeros_like(text), (frames - 1) // 4 + 1)
    noise = torch.randn(condition.image.shape, generator=g)
    guidance = Guidance(max_scale=7.5, schedule="constant")  # every step guided
    unconditional = condition.dropped()

    def velocity(z, t, conditional: bool):
        chosen: Conditioning = condition if conditional else unconditional
        return dit(z, chosen.image, chosen.camera, chosen.text, t)

    with torch.no_grad():
        batched = median_ms(lambda: dit.sample(noise, condition, 1, guidance), repeats)
        separate = median_ms(lambda: euler_sample(velocity, noise, 1, guidance), repeats)
    return {
        "case": f"one guided Euler step, tiny DiT, {frames} frames at {size}²",
        "plain_ms": separate,
        "d4s_ms": batched,
    }


# ------------------------------------------------------------------------------------------------------- AdamW
def adamw_case(repeats: int) -> dict:
    weights = [p for p in tiny_dit().parameters() if p.requires_grad]
    for p in weights:
        p.grad = torch.randn_like(p)
    count = sum(p.numel() for p in weights)
    times = {}
    for fused in (False, True):
        optimizer = adamw(weights, OptimizerConfig(lr=1e-4, fused=fused), mixed_precision=False)
        times[fused] = median_ms(optimizer.step, repeats)
    return {
        "case": f"AdamW step, {count / 1e6:.1f}M weights in {len(weights)} tensors",
        "plain_ms": times[False],
        "d4s_ms": times[True],
    }


# ----------------------------------------------------------------------------------------------------- Plücker
def plucker_per_pixel(c2w: torch.Tensor, K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[C, 6, H, W]`` ``(o x d, d)`` with each pixel's ray built from its own ``K^-1`` and rotation products."""
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3, 1)  # [HW, 3, 1]
    rays = c2w[:, None, :3, :3] @ (torch.linalg.inv(K)[:, None] @ pixels[None])  # [C, HW, 3, 1]
    d = torch.nn.functional.normalize(rays[..., 0], dim=-1)
    o = c2w[:, None, :3, 3].expand_as(d)
    return torch.cat([torch.cross(o, d, dim=-1), d], dim=-1).transpose(1, 2).reshape(-1, 6, height, width)


def plucker_case(repeats: int) -> dict:
    cameras, size = 72, 64
    c2w = make_trajectory("spiral", cameras, 2.0)
    K = intrinsics_from_fov(size, size, 55.0).expand(cameras, 3, 3)
    torch.testing.assert_close(plucker_per_pixel(c2w, K, size, size), plucker_embedding(c2w, K, size, size))
    return {
        "case": f"Plücker maps, {cameras} cameras at {size}²",
        "plain_ms": median_ms(lambda: plucker_per_pixel(c2w, K, size, size), repeats),
        "d4s_ms": median_ms(lambda: plucker_embedding(c2w, K, size, size), repeats),
    }


def main() -> None:
    parser = bench_parser(__doc__, "components", repeats=20, quick_help="3 repeats")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    rows = [composite_case(repeats, 64), guidance_case(repeats), adamw_case(repeats), plucker_case(repeats)]
    print(f"{'case':62s} {'plain ms':>9s} {'d4s ms':>8s} {'ratio':>6s}")
    for row in rows:
        row["ratio"] = row["plain_ms"] / row["d4s_ms"]
        print(f"{row['case']:62s} {row['plain_ms']:9.2f} {row['d4s_ms']:8.2f} {row['ratio']:5.1f}x")
    composite = rows[0]
    print(
        f"compositing: {composite['box_pairs']} box pairs, {composite['contributing_pairs']} contributing; "
        f"gradients agree to {composite['max_relative_gradient_difference']:.1e} (relative)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(), "repeats": repeats, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
