"""Training-step benchmark: seconds per step (forward + backward + AdamW) of the stage modules, and where it goes.

    python bench/train.py [--out bench/results/train.json] [--steps 5] [--warmup 2] [--device cpu|cuda]
    python bench/train.py --model-config configs/model/paper.yaml --paper      # a GPU only

Times ``compute_losses(batch, train=True)`` + ``backward`` + ``AdamW.step`` of ``StaticPretrain`` (stage 1: no
deformation head, no motion loss) and ``DynamicFinetune`` (stage 3: everything) on a synthetic batch: a smooth
camera arc, a textured video, positive depth, a dynamic mask and 1024 moving 3D tracks in front of the cameras.
Default: the tiny random models of ``configs/tiny/model.yaml``, 9 frames at 64x64, batch sizes 1 and 2, float32.
``--paper``: a temporary copy of the model YAML with ``video_dit.random_init: true`` (no weight files) and text mode
``null`` (zero captions of the config's T5 shape), 49 frames at 256x256 and 512x512, batch size 1, bf16 autocast,
a random VGG LPIPS backbone; it needs CUDA and is skipped without it (``--model-config`` defaults to
``configs/model/paper.yaml`` then). ``recipe.dit: full`` (``--dit``, the paper's) trains all 5.6 B DiT weights: fp32
weights, gradients and AdamW state take about 16 bytes per parameter (~90 GB), so on an 80 GB GPU that row reports
"out of memory" unless sharded; ``--dit lora`` or ``--dit camera`` fit on one GPU.

Per configuration, in a fresh process (so that the memory high-water marks are its own): seconds per step (the
median of ``--steps`` timed steps after ``--warmup`` untimed ones), samples per second, peak memory (CPU: the
process's resident-set high-water mark from ``resource.getrusage``, read before and after the reset below, which
clears it too; "steps peak": that of the warm-up and timed steps alone, ``VmHWM`` reset through Linux
``/proc/self/clear_refs`` once the module and batch are built; GPU: ``torch.cuda.max_memory_allocated`` over the
steps, weights and optimiser state included), and the median step split into: VAE encode (``video_dit.encode``:
the clip and the condition image), DiT forward (``video_dit.forward``), LDRM forward (``ldrm.forward``), rendering
(``render_frames``), losses (the rest of ``compute_losses``: the loss terms, text, noise and view sampling),
backward and the optimiser step. The split wraps those methods in timers; on a GPU each timer synchronises, which
removes some CPU/GPU overlap, so GPU step times are slight overestimates. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
PARTS = ("vae_encode", "dit_forward", "ldrm_forward", "render", "losses", "backward", "optimizer")
PART_TITLES = ("VAE enc", "DiT fwd", "LDRM fwd", "render", "losses", "backward", "AdamW")
STAGES = ("StaticPretrain", "DynamicFinetune")


# ------------------------------------------------------------------------------------------------------- the batch
def synthetic_batch(batch_size: int, frames: int, height: int, width: int, num_tracks: int = 1024, seed: int = 0):
    """A :class:`~d4s.data.batch.Batch` as the loader would hand it over (uint8 video, float16 depth), on the CPU.

    Each clip: the camera arcs 12 degrees around a point 4 m ahead (and dollies in 0.3 m), c2w relative to frame 0;
    K of a 60 degree field of view; a smooth random texture; depth 3-5 m; a dynamic square; tracks of points 2.5-5.5 m
    ahead of the first camera that drift up to 0.3 m over the clip, visible where they project inside the image."""
    from d4s.data.batch import Batch
    from d4s.geometry import intrinsics_from_fov, look_at, project_points, relative_to_first

    g = torch.Generator().manual_seed(seed)
    B, T, H, W, N = batch_size, frames, height, width, num_tracks
    progress = torch.linspace(0.0, 1.0, T)
    c2w = []
    for b in range(B):
        angle = math.radians(12.0) * progress * (1.0 if b % 2 == 0 else -1.0)
        target = torch.tensor([0.0, 0.0, 4.0])
        radius = 4.0 - 0.3 * progress
        eye = torch.stack([radius * torch.sin(angle), 0.1 * progress, 4.0 - radius * torch.cos(angle)], dim=-1)
        c2w.append(relative_to_first(look_at(eye, target.expand(T, 3))))
    c2w = torch.stack(c2w)  # [B, T, 4, 4]
    K = intrinsics_from_fov(W, H, 60.0).expand(B, T, 3, 3).clone()

    coarse = torch.rand(B * T, 3, max(2, H // 8), max(2, W // 8), generator=g)
    texture = torch.nn.functional.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
    video = (texture.reshape(B, T, 3, H, W) * 255).round().to(torch.uint8)
    coarse_depth = 3.0 + 2.0 * torch.rand(B * T, 1, max(2, H // 16), max(2, W // 16), generator=g)
    depth = torch.nn.functional.interpolate(coarse_depth, size=(H, W), mode="bilinear", align_corners=False)
    depth = depth.reshape(B, T, H, W).to(torch.float16)
    dynamic_mask = torch.zeros(B, T, H, W, dtype=torch.bool)
    dynamic_mask[..., H // 4 : 3 * H // 4, W // 4 : 3 * W // 4] = True

    # tracks: pixels of frame 0 lifted to 2.5-5.5 m, then a linear drift over the clip
    u, v = torch.rand(B, N, generator=g) * W, torch.rand(B, N, generator=g) * H
    z = 2.5 + 3.0 * torch.rand(B, N, generator=g)
    focal, cx, cy = K[0, 0, 0, 0], K[0, 0, 0, 2], K[0, 0, 1, 2]
    start = torch.stack([(u - cx) / focal * z, (v - cy) / focal * z, z], dim=-1)  # first camera = world
    drift = 0.3 * (torch.rand(B, N, 1, 3, generator=g) * 2 - 1)
    track_xyz = start[:, :, None] + drift * progress[None, None, :, None]  # [B, N, T, 3]
    uv, depth_in_view = project_points(track_xyz.permute(0, 2, 1, 3), c2w, K)  # [B, T, N, 2], [B, T, N]
    inside = (depth_in_view > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < W) & (uv[..., 1] >= 0) & (uv[..., 1] < H)
    false = torch.zeros(B, dtype=torch.bool)
    return Batch(
        keys=[f"synthetic/{b}" for b in range(B)],
        datasets=["synthetic"] * B,
        captions=[""] * B,
        video=video,
        K=K,
        c2w=c2w,
        times=(torch.arange(T, dtype=torch.float32) / 8.0).expand(B, T).clone(),  # 8 fps
        frame_indices=torch.arange(T).expand(B, T).clone(),
        depth=depth,
        has_depth=~false,
        dynamic_mask=dynamic_mask,
        has_dynamic_mask=~false,
        track_xyz=track_xyz,
        track_visible=inside.permute(0, 2, 1).contiguous(),
        track_valid=torch.ones(B, N, dtype=torch.bool),
        has_tracks=~false,
        is_dynamic=~false,
        is_padding=false,
    )


# ----------------------------------------------------------------------------------------- one configuration
def paper_model_config(path: Path, directory: Path) -> Path:
    """A copy of the model YAML with random DiT weights and null text (no weight files needed)."""
    values = yaml.safe_load(path.read_text())
    values["video_dit"]["random_init"] = True
    values.setdefault("text", {})["mode"] = "null"
    copy = directory / path.name
    copy.write_text(yaml.safe_dump(values, sort_keys=False))
    return copy


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_method(owner, name: str, part: str, record: dict[str, float], device: torch.device) -> None:
    """Replace ``owner.name`` by a wrapper that adds its wall time to ``record[part]`` (nn.Module.__call__ finds the
    instance attribute, so ``module(...)`` goes through the wrapper too)."""
    original: Callable = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        sync(device)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            sync(device)
            record[part] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def reset_rss_peak() -> bool:
    """Reset the resident-set high-water mark ``VmHWM`` (Linux ``/proc/self/clear_refs``); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def proc_status_mb(key: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of ``/proc/self/status`` in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def run_one(spec: dict) -> dict:
    """Build the stage module, then warm-up and timed training steps on one synthetic batch; the row's numbers."""
    from d4s.stages import DynamicFinetune, LPIPSConfig, Recipe, StaticPretrain
    from d4s.stages.base import adamw

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux; after the imports
    stage = {"StaticPretrain": StaticPretrain, "DynamicFinetune": DynamicFinetune}[spec["stage"]]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as directory:
        model_config = Path(spec["model_config"])
        if not model_config.exists() and (REPO / model_config).exists():  # relative to the repository
            model_config = REPO / model_config
        if spec["paper"]:
            model_config = paper_model_config(model_config, Path(directory))
            lpips = LPIPSConfig(net="vgg", backbone_path=None, random_backbone=True)
        else:
            lpips = LPIPSConfig(net="alex", backbone_path=None, random_backbone=True)
        recipe = Recipe(dit=spec["dit"], num_target_views=spec["views"], images_every_n_steps=0)
        with device if device.type == "cuda" else contextlib.nullcontext():
            module = stage(str(model_config), lpips=lpips, recipe=recipe)
    module = module.to(device).train()
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = adamw(trainable, module.optim, mixed_precision=False)  # autocast here, no Lightning plugin
    batch = synthetic_batch(spec["batch_size"], spec["frames"], spec["size"], spec["size"], spec["tracks"])
    batch = batch.to(device).prepare()

    record = dict.fromkeys(PARTS, 0.0)
    timed_method(module.video_dit, "encode", "vae_encode", record, device)
    timed_method(module.video_dit, "forward", "dit_forward", record, device)
    timed_method(module.ldrm, "forward", "ldrm_forward", record, device)
    timed_method(module, "render_frames", "render", record, device)
    bf16 = spec["precision"] == "bf16"
    build_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # clear_refs resets ru_maxrss too
    steps_peak = device.type == "cpu" and reset_rss_peak()  # then VmHWM is the peak of the training steps alone
    rss_before_steps = proc_status_mb("VmRSS") if steps_peak else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> tuple[float, dict[str, float]]:
        record.update(dict.fromkeys(PARTS, 0.0))
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            terms, _ = module.compute_losses(batch, train=True)
        loss = terms["loss"]
        sync(device)
        forward_end = time.perf_counter()
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss.item()} (terms {sorted(terms)})")
        loss.backward()
        sync(device)
        backward_end = time.perf_counter()
        optimizer.step()
        sync(device)
        end = time.perf_counter()
        parts = dict(record)
        inside = sum(parts[p] for p in ("vae_encode", "dit_forward", "ldrm_forward", "render"))
        parts["losses"] = forward_end - start - inside
        parts["backward"] = backward_end - forward_end
        parts["optimizer"] = end - backward_end
        return end - start, parts

    for _ in range(spec["warmup"]):
        step()
    steps = [step() for _ in range(spec["steps"])]
    order = sorted(range(len(steps)), key=lambda i: steps[i][0])
    seconds, parts = steps[order[len(order) // 2]]  # the median step (the upper median for an even count)
    row = {key: spec[key] for key in ("stage", "model_config", "size", "frames", "batch_size", "precision", "dit")} | {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "trainable_params_M": sum(p.numel() for p in trainable) / 1e6,
        "seconds_per_step": seconds,
        "samples_per_s": spec["batch_size"] / seconds,
        "step_seconds_all": [s for s, _ in steps],
        "parts_s": parts,
    }
    if device.type == "cuda":
        row["peak_memory_MB"] = torch.cuda.max_memory_allocated(device) / 2**20
        row["peak_memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        row["peak_memory_MB"] = max(build_peak_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        row["peak_memory_kind"] = "process max RSS (getrusage)"
        row["baseline_rss_MB"] = baseline_mb
        row["build_peak_rss_MB"] = build_peak_mb
        row["rss_before_steps_MB"] = rss_before_steps
        row["steps_peak_rss_MB"] = proc_status_mb("VmHWM") if steps_peak else None
    return row


def run_in_fresh_process(spec: dict) -> dict:
    """``run_one(spec)`` in a child process (its own memory high-water mark); an error becomes the row's note."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # d4s without an install
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        check=False,
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": path},
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    oom = "OutOfMemoryError" in result.stderr or "out of memory" in result.stderr
    return dict(spec, error="out of memory" if oom else tail[:300])


# ------------------------------------------------------------------------------------------------------ report
def table(rows: list[dict]) -> str:
    head = "| stage | size | T | B | precision | s/step | samples/s | peak MB | steps peak MB | "
    lines = [
        head + " | ".join(PART_TITLES) + " |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|" + "---:|" * len(PARTS),
    ]
    for row in rows:
        config = f"| {row['stage']} | {row['size']}² | {row['frames']} | {row['batch_size']} | {row['precision']} |"
        if "error" in row:
            lines.append(f"{config} {row['error']} |" + " |" * (3 + len(PARTS)))
            continue
        parts = " | ".join(f"{row['parts_s'][p] * 1e3:.0f} ms" for p in PARTS)
        steps_peak = row.get("steps_peak_rss_MB")
        steps_peak = "-" if steps_peak is None else f"{steps_peak:.0f}"
        lines.append(
            f"{config} {row['seconds_per_step']:.3f} | {row['samples_per_s']:.2f} | {row['peak_memory_MB']:.0f} | "
            f"{steps_peak} | {parts} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model-config", default=None, help="model YAML (default configs/tiny/model.yaml; --paper: model/paper.yaml)"
    )
    parser.add_argument(
        "--paper",
        action="store_true",
        help="paper scale: random DiT weights, null text, 49 frames at 256² and 512², batch 1, bf16 (needs CUDA)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda for --paper, else cpu)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--sizes", default=None, help="square frame sizes, comma-separated (default 64; paper 256,512)")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip, 4k+1 (default 9; paper 49)")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,2; paper 1)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated of {', '.join(STAGES)}")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default fp32; paper bf16")
    parser.add_argument("--dit", choices=("full", "camera", "lora", "frozen"), default="full", help="recipe.dit")
    parser.add_argument("--views", type=int, default=4, help="recipe.num_target_views (default 4)")
    parser.add_argument("--tracks", type=int, default=1024, help="tracks per clip (default 1024)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/train.json"), help="JSON (default %(default)s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
        return

    device = args.device or ("cuda" if args.paper else "cpu")
    args.model_config = args.model_config or ("configs/model/paper.yaml" if args.paper else "configs/tiny/model.yaml")
    if args.paper and (device != "cuda" or not torch.cuda.is_available()):
        print("paper scale (49 frames at 256²/512², bf16, CogVideoX-5B sizes) needs a GPU (CUDA): skipped")
        return
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    sizes = [int(s) for s in (args.sizes or ("256,512" if args.paper else "64")).split(",")]
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1" if args.paper else "1,2")).split(",")]
    frames = args.frames or (49 if args.paper else 9)
    precision = args.precision or ("bf16" if args.paper else "fp32")
    stages = args.stages.split(",")
    if unknown := set(stages) - set(STAGES):
        parser.error(f"--stages: unknown {sorted(unknown)}")
    if (frames - 1) % 4:
        parser.error("--frames: must be 4k + 1 (the VAE's temporal compression)")

    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    rows = []
    for stage in stages:
        for size in sizes:
            for batch_size in batch_sizes:
                spec = {
                    "stage": stage,
                    "model_config": args.model_config,
                    "paper": args.paper,
                    "device": device,
                    "size": size,
                    "frames": frames,
                    "batch_size": batch_size,
                    "precision": precision,
                    "dit": args.dit,
                    "views": args.views,
                    "tracks": args.tracks,
                    "threads": args.threads,
                    "steps": args.steps,
                    "warmup": args.warmup,
                }
                rows.append(run_in_fresh_process(spec))
                row = rows[-1]
                done = row.get("error") or f"{row['seconds_per_step']:.3f} s/step"
                print(f"{stage} {size}² T={frames} B={batch_size}: {done}", file=sys.stderr)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(
        f"{args.model_config}, {device}, threads {rows[0].get('threads', '?')}, median of {args.steps} steps after "
        f"{args.warmup} warm-up; the split is of the median step; peak memory per configuration (fresh process)\n"
    )
    print(table(rows))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
