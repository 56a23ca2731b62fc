"""Model benchmark: training-step time of the tiny models on CPU; the paper-scale sampler on a GPU.

    python bench/models.py [--out bench/results/models.json] [--repeats 5] [--quick]

CPU (always): forward and forward+backward per step of the tiny video DiT (flow-matching loss, 9 frames at 64²)
and the tiny LDRM (latents of that clip, 9 target times), ``configs/tiny/model.yaml``. GPU (when CUDA is there):
the paper-scale models of ``configs/model/paper.yaml`` with random weights (compute does not depend on them) in
bf16: seconds per 49-frame 480x720 scene for the sampler (30 Euler steps, cosine guidance: a conditional and an
unconditional DiT pass per step, the latter skipped where Eq. 6 has decayed to 1, 49 passes in all), the LDRM forward
at 49 frames, and peak GPU memory. Prints a table and writes JSON.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import bench_parser, machine_info

from d4s.diffusion import FlowMatching, Guidance, euler_sample
from d4s.geometry import intrinsics_from_fov, plucker_embedding
from d4s.models import LatentDynamicReconstructionModel, ModelConfig, VideoDiT, parameter_count

REPO = Path(__file__).resolve().parents[1]


def timed(step: Callable[[], None], repeats: int, device: torch.device) -> list[float]:
    """Seconds per call of ``step`` after one untimed warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def scene_inputs(frames: int, height: int, width: int, text_length: int, text_dim: int, device, dtype):
    """Cameras of a slow dolly, their Plücker maps and random text, for ``frames`` frames."""
    c2w = torch.eye(4, device=device).repeat(frames, 1, 1)
    c2w[:, 2, 3] = torch.linspace(0.0, 1.0, frames, device=device)
    K = intrinsics_from_fov(width, height, 60.0).to(device).expand(frames, 3, 3)
    plucker = plucker_embedding(c2w, K, height, width)[None].to(dtype)
    return c2w[None], K[None], plucker, torch.randn(1, text_length, text_dim, device=device, dtype=dtype)


def cpu_rows(repeats: int) -> list[dict]:
    """Forward and forward+backward seconds per step of the tiny models."""
    torch.manual_seed(0)
    config = ModelConfig.from_yaml(REPO / "configs" / "tiny" / "model.yaml")
    device = torch.device("cpu")
    dit = VideoDiT.from_config(config.video_dit)
    ldrm = LatentDynamicReconstructionModel(config.ldrm)
    c2w, K, plucker, text = scene_inputs(
        9, 64, 64, config.text["max_length"], config.text["dim"], device, torch.float32
    )
    video = torch.rand(1, 9, 3, 64, 64)
    z0 = dit.encode(video)
    image = dit.image_latents(video[:, 0], z0.shape[1])
    fm = FlowMatching()
    times = torch.linspace(0, 1, 9)[None]

    def dit_loss():
        noise, t = torch.randn_like(z0), fm.sample_times(1)
        prediction = dit(fm.interpolate(z0, noise, t), image, plucker, text, t)
        return fm.loss(prediction, z0, noise, t)

    def ldrm_loss():
        out = ldrm(z0, plucker, K, c2w, times)
        return out.means.square().mean() + out.dmu.square().mean()

    rows = []
    for name, loss, model in (("video DiT (tiny)", dit_loss, dit), ("LDRM (tiny)", ldrm_loss, ldrm)):
        with torch.no_grad():
            forward = timed(loss, repeats, device)
        backward = timed(lambda loss=loss: loss().backward(), repeats, device)
        model.zero_grad(set_to_none=True)
        rows.append(
            {
                "model": name,
                "device": "cpu",
                "params_M": parameter_count(model) / 1e6,
                "forward_s": statistics.median(forward),
                "forward_backward_s": statistics.median(backward),
            }
        )
    return rows


def gpu_rows(repeats: int) -> list[dict]:
    """Paper-scale sampler and LDRM at 49 frames, 480x720, bf16, random weights."""
    device, dtype = torch.device("cuda"), torch.bfloat16
    config = ModelConfig.from_yaml(REPO / "configs" / "model" / "paper.yaml")
    torch.manual_seed(0)
    with device:
        dit = VideoDiT.from_config(dataclasses.replace(config.video_dit, random_init=True)).to(dtype).eval()
        ldrm = LatentDynamicReconstructionModel(config.ldrm).to(dtype).eval()
    frames, height, width = 49, 480, 720
    c2w, K, plucker, text = scene_inputs(frames, height, width, 226, 4096, device, dtype)
    latents_shape = (1, (frames - 1) // 4 + 1, 16, height // 8, width // 8)
    image = torch.randn(latents_shape, device=device, dtype=dtype)

    def velocity(z, t, conditional):
        camera = plucker if conditional else torch.zeros_like(plucker)
        return dit(z, image, camera, text if conditional else torch.zeros_like(text), t)

    rows = []
    with torch.no_grad():
        torch.cuda.reset_peak_memory_stats()
        sample = lambda: euler_sample(velocity, torch.randn(latents_shape, device=device, dtype=dtype), 30, Guidance())
        seconds = timed(sample, max(1, repeats // 3), device)
        rows.append(
            {
                "model": "sampler, 30 steps + guidance",
                "device": torch.cuda.get_device_name(),
                "params_M": parameter_count(dit.transformer) / 1e6,
                "seconds": statistics.median(seconds),
                "peak_GiB": torch.cuda.max_memory_allocated() / 2**30,
            }
        )
        torch.cuda.reset_peak_memory_stats()
        latents = torch.randn(latents_shape, device=device, dtype=dtype)
        times = torch.linspace(0, 1, frames, device=device, dtype=dtype)[None]
        seconds = timed(lambda: ldrm(latents, plucker, K, c2w, times), repeats, device)  # cameras in float32
        rows.append(
            {
                "model": "LDRM forward, 49 target times",
                "device": torch.cuda.get_device_name(),
                "params_M": parameter_count(ldrm) / 1e6,
                "seconds": statistics.median(seconds),
                "peak_GiB": torch.cuda.max_memory_allocated() / 2**30,
            }
        )
    return rows


def main() -> None:
    parser = bench_parser(__doc__, "models", 5, "one timed repeat (a smoke run)")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats

    machine = machine_info()

    def save(rows: list[dict]) -> None:  # after each section: a later failure keeps what was measured
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))

    rows = cpu_rows(repeats)
    save(rows)
    print(f"{'model':32s} {'device':10s} {'params':>10s} {'forward':>10s} {'fwd+bwd':>10s}")
    for row in rows:
        print(
            f"{row['model']:32s} {row['device']:10s} {row['params_M']:9.2f}M {row['forward_s'] * 1e3:8.1f}ms "
            f"{row['forward_backward_s'] * 1e3:8.1f}ms"
        )
    if torch.cuda.is_available():
        for row in gpu_rows(repeats):
            print(
                f"{row['model']:32s} {row['device']:10s} {row['params_M']:9.2f}M {row['seconds']:9.2f}s "
                f"peak {row['peak_GiB']:.1f} GiB"
            )
            rows.append(row)
        save(rows)
    else:
        print("(no GPU: the paper-scale sampler rows need CUDA)")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
