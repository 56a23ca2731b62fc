"""Renderer benchmark: milliseconds per frame and peak memory.

    python bench/render.py [--out bench/results/render.json] [--quick]

CPU (always): the torch backend, forward and forward+backward, for 10k and 100k Gaussians at 64², 128² and
256². Peak memory is the process's resident-set high-water mark above the level before the render
(Linux ``/proc/self/clear_refs``). GPU (when CUDA and gsplat load): torch vs gsplat forward+backward at 512²
with 1M Gaussians, and the parity of their outputs and gradients. Prints a table and writes JSON.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import statistics
import time

import torch
from common import bench_parser, machine_info

from d4s.gaussians.field import GaussianField
from d4s.gaussians.procedural import random_field
from d4s.geometry.cameras import intrinsics_from_fov
from d4s.render import gsplat_available, render


def bench_field(num: int, device: torch.device) -> GaussianField:
    """Random Gaussians sized so that their 3-sigma discs cover the view about 20 times over, whatever
    ``num`` is (the view spans about 21 m² at the scene's middle depth of 4 m)."""
    sigma = math.sqrt(21.0 * 20.0 / (9.0 * math.pi * num))  # ~3.9 cm at 10k, ~1.2 cm at 100k
    return random_field(num, seed=0, sh_degree=1, scale_range=(0.5 * sigma, 1.5 * sigma)).to(device)


def _reset_peak_rss() -> int:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _read_status("VmRSS")


def _read_status(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def objective(out) -> torch.Tensor:
    """The scalar every timed backward pass differentiates: touches rgb, depth and alpha."""
    return out.rgb.sum() + out.depth.mean() + out.alpha.sum()


def run_case(num: int, size: int, backend: str, backward: bool, repeats: int, device: str) -> dict:
    """Time one configuration. The first render is the measured cold run for memory: the peak resident
    memory (CPU) or the peak allocated memory (CUDA) above the level just before it."""
    device = torch.device(device)
    field = bench_field(num, device)
    K = intrinsics_from_fov(size, size, 60.0).to(device)[None]
    c2w = torch.eye(4, device=device)[None]
    params = {k: v.detach().clone().requires_grad_(backward) for k, v in field.tensors().items()}

    def once() -> None:
        with torch.set_grad_enabled(backward):
            out = render(GaussianField(**params), c2w, K, size, size, backend=backend)
            if backward:
                objective(out).backward()
        _sync(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        once()
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        base = _reset_peak_rss()
        once()
        peak = _read_status("VmHWM") - base
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return {
        "gaussians": num,
        "size": size,
        "backend": backend,
        "pass": "fwd+bwd" if backward else "fwd",
        "ms_per_frame": 1000 * statistics.median(times),
        "peak_mb": peak / 2**20,
        "device": device.type,
    }


def run_case_in_fresh_process(*args) -> dict:
    """``run_case`` in a new interpreter, so that memory freed by earlier cases cannot hide this one's peak."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_case, args)


def gpu_parity(field: GaussianField, size: int) -> dict:
    """Max absolute differences between torch and gsplat renders and gradients of one scene."""
    K = intrinsics_from_fov(size, size, 60.0).cuda()[None]
    c2w = torch.eye(4, device="cuda")[None]
    results, grads = {}, {}
    for backend in ("torch", "gsplat"):
        params = {k: v.detach().clone().requires_grad_(True) for k, v in field.tensors().items()}
        out = render(GaussianField(**params), c2w, K, size, size, backend=backend)
        objective(out).backward()
        results[backend] = out
        grads[backend] = {k: p.grad for k, p in params.items()}
    report = {
        f"max_abs_diff_{name}": float((a - b).abs().max())
        for name, a, b in zip(("rgb", "depth", "alpha"), *results.values())
    }
    for key in grads["torch"]:
        a, b = grads["torch"][key], grads["gsplat"][key]
        report[f"grad_rel_diff_{key}"] = float((a - b).norm() / b.norm().clamp_min(1e-12))
    # tests/render/test_gsplat_parity.py's criterion, elementwise: |ours - gsplat| <= atol + rtol |gsplat|, depth
    # where gsplat's alpha > 1e-2; <= 0 holds (1e-4 for images, 5e-3 for gradients; gsplat's own are 1e-3 .. 8e-3)
    ours, theirs = results["torch"], results["gsplat"]
    covered = theirs.alpha > 1e-2
    pairs = {"rgb": (ours.rgb, theirs.rgb), "alpha": (ours.alpha, theirs.alpha)}
    pairs["depth"] = (ours.depth[covered], theirs.depth[covered])
    excess = {name: _excess(a, b, 1e-4) for name, (a, b) in pairs.items()}
    excess |= {f"grad_{key}": _excess(grads["torch"][key], grads["gsplat"][key], 5e-3) for key in grads["torch"]}
    report["tolerance_excess"] = excess
    report["holds"] = all(value <= 0 for value in excess.values())
    return report


def _excess(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float) -> float:
    """``max(|ours - theirs| - (tolerance + tolerance |theirs|))``: positive where the pair breaks the tolerance."""
    if ours.numel() == 0:
        return float("-inf")
    return float(((ours - theirs).abs() - tolerance * (1 + theirs.abs())).max())


HEADER = f"{'device':<8} {'backend':<7} {'pass':<8} {'gaussians':>9} {'size':>5} {'ms/frame':>10} {'peak MB':>9}"


def format_row(r: dict) -> str:
    return (
        f"{r['device']:<8} {r['backend']:<7} {r['pass']:<8} {r['gaussians']:>9} {r['size']:>5} "
        f"{r['ms_per_frame']:>10.1f} {r['peak_mb']:>9.1f}"
    )


def main() -> None:
    parser = bench_parser(__doc__, "render", 3, "10k Gaussians at 64² only (a smoke run)")
    args = parser.parse_args()

    rows = []
    print(HEADER)
    counts, sizes = ([10_000], [64]) if args.quick else ([10_000, 100_000], [64, 128, 256])
    for num in counts:
        for size in sizes:
            for backward in (False, True):
                rows.append(run_case_in_fresh_process(num, size, "torch", backward, args.repeats, "cpu"))
                print(format_row(rows[-1]), flush=True)

    parity = None
    if gsplat_available():
        for backend in ("gsplat", "torch"):
            for backward in (False, True):
                rows.append(run_case(1_000_000, 512, backend, backward, args.repeats, "cuda"))
                print(format_row(rows[-1]), flush=True)
        parity = gpu_parity(bench_field(100_000, torch.device("cuda")), 256)

    if parity:
        print("\ntorch vs gsplat parity:", json.dumps(parity, indent=1))
    machine = machine_info()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows, "parity": parity}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
