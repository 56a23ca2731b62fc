"""The generator of trained checkpoints apart from the LDRM, averaged over noise seeds.

    python bench/generator_seeds.py CKPT [CKPT ...] [--index data/toy4d/index.json] [--seeds 4]
        [--steps 30] [--guidance 7.5] [--out bench/results/generator_seeds.json]

``make demo``'s evaluation samples each held-out clip once (seed 0), so its latent PSNRs carry the noise of one draw
per clip. This benchmark samples the same clips (``configs/tiny/eval.yaml``'s test split: 9 frames at frame step 4,
64²) from their first frame, cameras and caption with ``--seeds`` noise seeds and the paper's sampler (30 Euler
steps, cosine guidance 7.5, the checkpoint's flow shift), and reports the latent PSNR of each latent frame against
the real video's, averaged over clips and seeds, beside frame 0's latents held still. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import write_rows

from d4s.diffusion import Guidance
from d4s.eval.config import load_config
from d4s.eval.metrics import latent_psnr, still_latent_psnr
from d4s.eval.scenes import load_scenes
from d4s.geometry.plucker import plucker_embedding
from d4s.pipeline import Diff4SplatPipeline


@torch.no_grad()
def checkpoint_rows(path: str, scenes, seeds: int, steps: int, guidance: float) -> tuple[list[float], list[float]]:
    """Mean latent PSNR per latent frame of ``path``'s samples (over scenes and seeds) and of frame 0 held still."""
    pipeline = Diff4SplatPipeline.from_checkpoint(path)
    dit, generated, still = pipeline.video_dit, [], []
    for scene in scenes:
        real = pipeline.encode_video(scene.video.float() / 255.0)[0]
        peak = pipeline.latent_range or float(real.max() - real.min())
        text, null = pipeline.encode_prompt(scene.caption)
        plucker = plucker_embedding(scene.c2w.float(), scene.K_video.float(), *scene.image.shape[-2:])[None]
        condition = dit.conditioning(
            scene.image[None], plucker, text, null, real.shape[0], torch.Generator().manual_seed(0)
        )
        for seed in range(seeds):
            noise = torch.randn(condition.image.shape, generator=torch.Generator().manual_seed(seed))
            sample = dit.sample(noise, condition, steps, Guidance(guidance), pipeline.flow.shift)
            generated.append(latent_psnr(sample[0], real, peak))
        still.append(still_latent_psnr(real, peak))
    return np.mean(generated, 0).tolist(), np.mean(still, 0).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="d4s training checkpoints (any stage)")
    parser.add_argument("--index", default="data/toy4d/index.json", help="toy4d index.json whose test split to use")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/generator_seeds.json"))
    args = parser.parse_args()
    config = load_config(Path("configs/tiny/eval.yaml"), {"scenes.index": args.index})
    scenes = load_scenes(config.scenes, config.generation, config.metrics.motion_tracks)
    rows = []
    for path in args.checkpoints:
        generated, still = checkpoint_rows(path, scenes, args.seeds, args.steps, args.guidance)
        rows.append({"checkpoint": path, "generated": generated, "still": still})
    frames = len(rows[0]["generated"])
    print("\n| checkpoint | " + " | ".join(f"latent frame {k} (dB)" for k in range(frames)) + " |")
    print("|---|" + "---:|" * frames)
    for row in rows:
        cells = [f"{row['generated'][0]:.2f}"]
        cells += [f"{g:.2f} (still {s:.2f})" for g, s in zip(row["generated"][1:], row["still"][1:])]
        print(f"| {row['checkpoint']} | " + " | ".join(cells) + " |")
    write_rows(args, rows)


if __name__ == "__main__":
    main()
