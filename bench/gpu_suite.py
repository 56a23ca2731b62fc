"""The paper-scale suite in one run: renderer parity with gsplat, and the speed and memory of the whole chain.

    bench/gpu_suite.sh [--out bench/results/gpu_suite.json]   # on the GPU machine (installs carried wheels first)
    bench/gpu_suite.sh --model configs/model/wan22_ti2v.yaml --out bench/results/gpu_suite_wan.json   # Wan2.2
    python bench/gpu_suite.py --small                         # CPU: every section with the tiny models

Compute does not depend on weight values, so paper-scale models with random weights measure it honestly
(``configs/model/paper.yaml``: CogVideoX-5B-I2V sizes, bf16; ``--model configs/model/wan22_ti2v.yaml``: the
Wan2.2-TI2V-5B backbone; run both to compare them). Sections, all in one table and one JSON:

- ``parity``: our torch renderer against gsplat on random scenes (forward rgb, depth, alpha; gradients with
  respect to means, quats, scales, opacities and colours), judged elementwise as ``tests/render/test_gsplat_parity.py``
  judges them (``bench/render.gpu_parity``). CUDA only.
- ``generation``: one scene as ``python -m d4s.generate`` makes it (``generate_scene``: condition-image encoding,
  30 Euler steps with the cosine guidance schedule of Eq. 6, the LDRM with its deformation head, rendering and
  writing), seconds per stage, the DiT passes it made, and peak memory (``torch.cuda.max_memory_allocated``: tensors;
  the CUDA context and the allocator's cache come on top); paper scale is 49 frames at 512², ``--small`` 9 at 64².
- ``viewer``: milliseconds per rendered frame of that scene at its size (a camera move; a time change).
- ``training``: one training step of each stage with gradient checkpointing off and on (samples/s, peak memory),
  each in a fresh process (``bench/train.py``); at paper scale with LoRA on the DiT by default (``--train-dit``).
  Run last, as the slowest section; the JSON is saved after each section, so a call stopped at its time limit
  keeps what was measured.
- ``flops``: one DiT forward at the scene's size counted by ``torch.utils.flop_counter`` on the meta device (no
  memory, no GPU needed), and the fraction of the GPU's dense bf16 peak the timed sampling steps imply.
- ``goals``: 15 s per scene (every stage of ``generate_scene``, rendering and writing the videos included), 16 GB
  (1e9 bytes) peak, 2 ms per rendered frame: each met, or its gap and the largest stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from common import machine_info
from generate import random_pipeline, scene_rows, viewer_row
from render import bench_field, gpu_parity
from train import run_in_fresh_process

from d4s.models import ModelConfig
from d4s.models.cost import dit_pass
from d4s.render import gsplat_available

REPO = Path(__file__).resolve().parents[1]
GOALS = {"seconds_per_scene": 15.0, "peak_gb": 16.0, "ms_per_frame": 2.0}
# Dense bf16 tensor-core peaks from the vendor datasheets (no sparsity), most specific name first; a large bf16 matrix
# product reaches only part of it in practice, so a ``fraction_of_peak`` well below 1 is expected.
DENSE_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


@dataclasses.dataclass(frozen=True)
class Scale:
    """What one mode measures: the model config, the generated scene and the training steps."""

    model: Path
    frames: int
    size: int
    training_sizes: tuple[tuple[str, int], ...]  # (stage, square size) per training row
    precision: str
    train_dit: str  # recipe.dit of the training rows (full: all DiT weights; lora: LoRA adapters and the rest)


# stages 1, 2, 3; a HiResRefine step is a StaticPretrain step at 512² (both freeze the deformation head; stage 2 only
# differs in starting from stage 1's weights), so stage 2 is timed as StaticPretrain at 512²
PAPER_STEPS = (("StaticPretrain", 256), ("StaticPretrain", 512), ("DynamicFinetune", 512))
# full-DiT AdamW keeps 16 B per weight: 5.6B weights need ~90 GB, past one H100 (configs/stage*.yaml); the rows
# time LoRA there, and ``--train-dit full`` on an H200
PAPER = Scale(REPO / "configs/model/paper.yaml", 49, 512, PAPER_STEPS, "bf16", "lora")
SMALL = Scale(
    REPO / "configs/tiny/model.yaml", 9, 64, (("StaticPretrain", 64), ("DynamicFinetune", 64)), "fp32", "full"
)


# ------------------------------------------------------------------------------------------------------ sections
def parity(device: torch.device) -> list[dict]:
    """Torch renderer against gsplat on random scenes of ``bench_field`` (CUDA and gsplat's kernels only)."""
    if device.type != "cuda" or not gsplat_available():
        return [{"skipped": "needs CUDA and gsplat's compiled kernels"}]
    rows = []
    for num, size in ((2_000, 128), (20_000, 256)):
        rows.append({"gaussians": num, "size": size, **gpu_parity(bench_field(num, device), size)})
    return rows


def generation(scale: Scale, device: torch.device, work: Path, repeats: int) -> tuple[dict, dict]:
    """One scene's seconds per stage (``generate_scene``), the DiT passes it made, and the viewer's latency on it."""
    pipeline = random_pipeline(scale.model, device, text_null=True)
    passes = []
    forward = pipeline.video_dit.forward
    # clips through the DiT per call: a guided step runs its two passes as one batch of 2 (VideoDiT.sample)
    pipeline.video_dit.forward = lambda *args, **kwargs: passes.append(len(args[0])) or forward(*args, **kwargs)
    options = {"ply": False, **({"backend": "torch"} if device.type == "cpu" else {})}
    row, scene_dir = scene_rows(pipeline, scale.model.stem, scale.frames, scale.size, repeats, options, work)
    row["dit_passes"] = sum(passes) // (repeats + 1)  # scene_rows makes a warm-up scene, then ``repeats``
    return row, viewer_row(scene_dir, device, repeats, scale.size)


def training(scale: Scale, device: torch.device, work: Path) -> list[dict]:
    """One training step per (stage, size), gradient checkpointing off and on, each in a fresh process."""
    rows = []
    for checkpointing in (False, True):
        values = yaml.safe_load(scale.model.read_text())
        values["video_dit"]["gradient_checkpointing"] = values["ldrm"]["gradient_checkpointing"] = checkpointing
        config = work / f"model-checkpointing-{str(checkpointing).lower()}.yaml"
        config.write_text(yaml.safe_dump(values, sort_keys=False))
        for stage, size in scale.training_sizes:
            spec = {"stage": stage, "model_config": str(config), "paper": scale is PAPER, "device": device.type,
                    "size": size, "frames": scale.frames, "batch_size": 1, "precision": scale.precision,
                    "dit": scale.train_dit, "views": 4, "tracks": 1024, "threads": None, "steps": 2, "warmup": 1}  # fmt: skip
            rows.append(run_in_fresh_process(spec) | {"gradient_checkpointing": checkpointing})
    return rows


def dit_flops(scale: Scale) -> dict:
    """FLOPs of one DiT forward on one scene at the scene's size, counted on the meta device (``dit_pass``)."""
    one_pass = dit_pass(ModelConfig.from_yaml(scale.model), scale.frames, scale.size)
    return {"dit_forward_tflop": one_pass["flops"] / 1e12, "latent_tokens": one_pass["tokens"]}


def achieved_fraction(flops: dict, scene: dict) -> dict:
    """The TFLOP/s the scene's DiT passes (counted while it was generated) imply over its sampling time and, where
    the device's dense bf16 peak is known, that fraction of it and the sampling time the passes need at the peak."""
    passes = scene["dit_passes"]
    work = flops["dit_forward_tflop"] * passes
    peak = next((tflops for name, tflops in DENSE_BF16_TFLOPS if name in scene["device"]), None)
    return {
        "dit_passes": passes,
        "achieved_tflops": work / scene["sampling"],
        "peak_tflops": peak,
        "fraction_of_peak": work / scene["sampling"] / peak if peak else None,
        "sampling_seconds_at_peak": work / peak if peak else None,
    }


def goals(scene: dict, viewer: dict) -> list[dict]:
    """Each goal against its measurement; a missed time goal names its largest stage."""
    stages = {k: scene[k] for k in ("text", "encode", "sampling", "ldrm", "rendering", "writing")}
    measured = {
        "seconds_per_scene": scene["total"],
        "peak_gb": scene["peak_gib"] * 2**30 / 1e9,
        "ms_per_frame": max(viewer["camera_move_ms"], viewer["time_change_ms"]),
    }
    rows = []
    for name, goal in GOALS.items():
        row = {"goal": name, "target": goal, "measured": measured[name], "met": measured[name] <= goal}
        if name == "seconds_per_scene" and not row["met"]:
            row["bottleneck"] = max(stages, key=stages.get)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------------ report
def table(report: dict) -> str:
    """The whole report as aligned text."""
    machine = report["machine"]
    lines = [f"d4s GPU suite ({report['mode']}): {machine['gpu'] or machine['cpu']}, torch {machine['torch']}"]
    for row in report["parity"]:
        if "skipped" in row:
            lines.append(f"parity     skipped: {row['skipped']}")
            continue
        worst_image = max(v for k, v in row.items() if k.startswith("max_abs_diff"))
        worst_grad = max(v for k, v in row.items() if k.startswith("grad_rel_diff"))
        lines.append(f"parity     {row['gaussians']:>7} Gaussians at {row['size']}²: images {worst_image:.1e}, "
                     f"gradients {worst_grad:.1e} -> {'holds' if row['holds'] else 'FAILS'}")  # fmt: skip
    s = report["generation"]
    stages = ", ".join(f"{k} {s[k]:.2f}" for k in ("text", "encode", "sampling", "ldrm", "rendering", "writing"))
    lines.append(f"generation {s['frames']}x{s['size']}², {s['gaussians']} Gaussians: {s['total']:.2f} s ({stages}), "
                 f"peak {s['peak_gib']:.2f} GiB")  # fmt: skip
    v = report["viewer"]
    lines.append(f"viewer     {v['size']}² ({v['backend']}): camera move {v['camera_move_ms']:.2f} ms, "
                 f"time change {v['time_change_ms']:.2f} ms (deformation {v['deform_ms']:.2f} ms)")  # fmt: skip
    for row in report["training"]:
        head = f"training   {row['stage']:<16} {row['size']}² checkpointing {'on ' if row['gradient_checkpointing'] else 'off'}"
        if "error" in row:
            lines.append(f"{head}: {row['error']}")
        else:
            lines.append(f"{head}: {row['seconds_per_step']:.3f} s/step, {row['samples_per_s']:.2f} samples/s, "
                         f"peak {row['peak_memory_MB'] / 1024:.2f} GiB")  # fmt: skip
    f = report["flops"]
    fraction = f["fraction_of_peak"]
    share = (
        f"{100 * fraction:.1f}% of this device's {f['peak_tflops']:.0f} TFLOP/s peak"
        if fraction is not None
        else "no bf16 peak known"
    )
    lines.append(f"flops      DiT forward {f['dit_forward_tflop']:.3g} TFLOP x {f['dit_passes']} passes; sampling at "
                 f"{f['achieved_tflops']:.3g} TFLOP/s ({share})")  # fmt: skip
    if f["sampling_seconds_at_peak"] is not None:
        lines.append(f"           the passes need {f['sampling_seconds_at_peak']:.1f} s at the peak")
    if not report["goals"]:
        lines.append("goals      judged at paper scale only")
    for g in report["goals"]:
        state = "met" if g["met"] else f"missed by {g['measured'] - g['target']:.2f}"
        if "bottleneck" in g:
            state += f" (largest stage: {g['bottleneck']})"
        lines.append(f"goal       {g['goal']:<18} {g['measured']:9.2f} vs {g['target']:>5}: {state}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny models, 9 frames at 64² (CPU; the test suite)")
    parser.add_argument("--device", default=None, help="default: cuda for the paper scale, cpu for --small")
    parser.add_argument("--repeats", type=int, default=1, help="timed scenes after a warm-up (default 1)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_suite.json"))
    parser.add_argument("--train-dit", choices=("full", "camera", "lora", "frozen"), default=None,
                        help="recipe.dit of the training rows (default: lora at paper scale, which fits an H100; "
                        "full needs ~90 GB: an H200)")  # fmt: skip
    parser.add_argument("--model", type=Path, default=None,
                        help="the model config (default: configs/model/paper.yaml, CogVideoX; --small: "
                        "configs/tiny/model.yaml); the second backbone: configs/model/wan22_ti2v.yaml "
                        "(configs/tiny/model_wan.yaml with --small)")  # fmt: skip
    args = parser.parse_args(argv)
    scale = SMALL if args.small else PAPER
    if args.model:
        scale = dataclasses.replace(scale, model=args.model.resolve())
    if args.train_dit:
        scale = dataclasses.replace(scale, train_dit=args.train_dit)
    device = torch.device(args.device or ("cpu" if args.small else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("paper scale needs a GPU (CUDA is not available here); --small runs the CPU mode")
    report = {"mode": "small" if args.small else "paper", "machine": machine_info(), "goals_set": GOALS}

    def save() -> None:  # after each section: a call killed at its time limit keeps what was measured
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))

    flops = dit_flops(scale)  # no GPU needed: first, so that it survives anything below
    report["parity"] = parity(device)
    save()
    with tempfile.TemporaryDirectory(prefix="d4s-gpu-suite-") as work:
        report["generation"], report["viewer"] = generation(scale, device, Path(work) / "scene", args.repeats)
        report["flops"] = flops | achieved_fraction(flops, report["generation"])
        report["goals"] = [] if args.small else goals(report["generation"], report["viewer"])
        save()
        report["training"] = training(scale, device, Path(work))  # the slowest section (a process per row): last
        save()
    print(table(report))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
