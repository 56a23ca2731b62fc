"""Generation benchmark: seconds per scene and per stage of ``python -m d4s.generate``, and viewer frame latency.

    python bench/generate.py [--out bench/results/generate.json] [--repeats 3] [--quick]

Each scene runs exactly what the command does for one image (``d4s.generation.generate_scene``: text, condition-image
encoding, 30 Euler steps with cosine guidance, the LDRM, rendering the scene's own video plus two novel views, and
writing scene.npz, videos and depth), with random weights: the networks' compute does not depend on them, but the
renderer's does (its cost grows with the Gaussians' screen footprint, which a trained model sets).

CPU (always): the tiny models of ``configs/tiny/model.yaml`` at 9 and 49 frames of 64² (their training size).
GPU (when CUDA is there): the paper-scale models of ``configs/model/paper.yaml`` in bf16 at 49 frames of 512², gsplat
rendering, no per-time .ply files (49 files of ~200 MB); the text stage has no T5 there (the encoder needs local
weights), so it reads ~0. Paper: ~30 s per scene (Sec. 4.1).

Viewer latency: what the viewer's server-side rendering costs at 512² for the generated scene: a camera move (one
render) and a time change (the deformation to a new time plus one render). Paper: 6.7 ms (Table 6).
Prints a table and writes JSON; medians over ``--repeats`` after one warm-up.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import bench_parser, machine_info
from PIL import Image

from d4s.gaussians import load_scene
from d4s.generation import GenerationSettings, Job, generate_scene
from d4s.geometry import intrinsics_from_fov, make_trajectory
from d4s.models import LatentDynamicReconstructionModel, ModelConfig, TextEncoder, VideoDiT
from d4s.pipeline import Diff4SplatPipeline
from d4s.render import render, resolve_backend

REPO = Path(__file__).resolve().parents[1]
STAGES = ("text", "encode", "sampling", "ldrm", "rendering", "writing", "total")
PAPER = {"seconds_per_scene": 30.0, "viewer_ms": 6.7}


def random_pipeline(config_path: Path, device: torch.device, text_null: bool) -> Diff4SplatPipeline:
    """The models of a config with random weights (``text_null``: no text encoder, zeros of its shape)."""
    config = ModelConfig.from_yaml(config_path)
    text = {**config.text, "mode": "null"} if text_null else config.text
    with device:
        dit = VideoDiT.from_config(dataclasses.replace(config.video_dit, random_init=True))
        ldrm = LatentDynamicReconstructionModel(config.ldrm)
    return Diff4SplatPipeline(dit, ldrm, TextEncoder(**text), device=device)


def scene_rows(
    pipeline, label: str, frames: int, size: int, repeats: int, options: dict, work: Path
) -> tuple[dict, Path]:
    """Median seconds per stage of ``generate_scene`` over ``repeats`` scenes (after a warm-up) written under
    ``work``, with :class:`~d4s.generation.GenerationSettings` ``options`` besides the frames and size; returns the
    row and the last scene's folder."""
    work.mkdir(parents=True, exist_ok=True)
    photo = work / "photo.png"
    torch.manual_seed(0)
    Image.fromarray((torch.rand(size, size + size // 2, 3) * 255).byte().numpy()).save(photo)
    settings = GenerationSettings(frames=frames, size=(size, size), **options)
    job = Job(photo, "", work / "scene")
    runs = [generate_scene(pipeline, job, settings, {}) for _ in range(repeats + 1)][1:]
    row = {stage: statistics.median(run[stage] for run in runs) for stage in STAGES}
    row.update(
        model=label,
        device=torch.cuda.get_device_name() if pipeline.device.type == "cuda" else "cpu",
        frames=frames,
        size=size,
        gaussians=runs[-1]["gaussians"],
        peak_gib=max(run.get("peak_cuda_gib", run["peak_rss_gib"]) for run in runs),
    )
    return row, job.out


def viewer_row(scene_dir: Path, device: torch.device, repeats: int, size: int = 512) -> dict:
    """Milliseconds per viewer frame at ``size``²: a camera move (render), a time change (deform + render), and the
    deformation to a new time alone."""
    scene = load_scene(scene_dir / "scene.npz").to(device)
    K = intrinsics_from_fov(size, size, 60.0)[None].to(device)
    c2w = make_trajectory("orbit", 8, 2.0, orbit_degrees=30.0)[3:4].to(device)
    backend = resolve_backend("auto", device)
    field = scene.at(0)

    def timed_ms(step) -> float:
        step()
        times = []
        for _ in range(max(repeats, 5)):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    with torch.no_grad():
        move = timed_ms(lambda: render(field, c2w, K, size, size, backend))
        change = timed_ms(lambda: render(scene.at(scene.num_frames // 2), c2w, K, size, size, backend))
        deform = timed_ms(lambda: scene.at(scene.num_frames // 2))
    return {"gaussians": scene.num_gaussians, "size": size, "backend": backend, "camera_move_ms": move,
            "time_change_ms": change, "deform_ms": deform}  # fmt: skip


def measure(report: dict, save, repeats: int, quick: bool, work: Path) -> None:
    """Fill ``report``'s scene and viewer rows (module docstring), saving after each; scenes are written under
    ``work``."""
    cpu = torch.device("cpu")
    tiny = random_pipeline(REPO / "configs" / "tiny" / "model.yaml", cpu, text_null=False)
    sizes = [(9, 64)] if quick else [(9, 64), (49, 64)]
    for frames, size in sizes:
        row, scene_dir = scene_rows(tiny, "tiny", frames, size, repeats, {"backend": "torch"}, work / f"cpu{frames}")
        report["scenes"].append(row)
        save()
    report["viewer"].append({"model": "tiny", "device": "cpu", **viewer_row(scene_dir, cpu, repeats)})
    save()
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        paper = random_pipeline(REPO / "configs" / "model" / "paper.yaml", gpu, text_null=True)
        row, scene_dir = scene_rows(paper, "paper", 49, 512, max(1, repeats // 3), {"ply": False}, work / "gpu")
        report["scenes"].append(row)
        save()
        report["viewer"].append({"model": "paper", "device": row["device"], **viewer_row(scene_dir, gpu, repeats)})
        save()


def main() -> None:
    parser = bench_parser(__doc__, "generate", 3, "one timed repeat, small sizes only (a smoke run)")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats

    machine = machine_info()
    report = {"machine": machine, "paper": PAPER, "scenes": [], "viewer": []}

    def save() -> None:  # after each section: a later failure keeps what was measured
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))

    with tempfile.TemporaryDirectory(prefix="d4s-bench-generate-") as work:  # scenes of ~0.3 GB: not kept
        measure(report, save, repeats, args.quick, Path(work))

    print(f"{'model':6s} {'device':24s} {'scene':>10s} {'gauss.':>9s} " + " ".join(f"{s:>9s}" for s in STAGES)
          + f" {'peak GiB':>9s}")  # fmt: skip
    for row in report["scenes"]:
        scene = f"{row['frames']}x{row['size']}²"
        stages = " ".join(f"{row[s]:8.2f}s" for s in STAGES)
        print(
            f"{row['model']:6s} {row['device']:24s} {scene:>10s} {row['gaussians']:9d} {stages} {row['peak_gib']:9.2f}"
        )
    print(f"paper: ~{PAPER['seconds_per_scene']:.0f} s per scene (A100-class GPU)\n")
    for row in report["viewer"]:
        print(
            f"viewer {row['model']:6s} {row['device']:24s} {row['gaussians']:9d} Gaussians at {row['size']}² "
            f"({row['backend']}): camera move {row['camera_move_ms']:.1f} ms, time change {row['time_change_ms']:.1f} ms "
            f"(deformation alone {row['deform_ms']:.1f} ms)"
        )
    print(f"paper: {PAPER['viewer_ms']} ms interactive latency (Table 6)")
    if not torch.cuda.is_available():
        print("(no GPU: the paper-scale rows need CUDA)")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
