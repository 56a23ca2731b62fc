"""Latent probe: how much of the video do a model config's latents keep? Linear read-out of pixels from latents.

    python bench/latent_probe.py --index data/toy4d/index.json
        [--models configs/tiny/model.yaml configs/tiny/model_vae.yaml] [--batches 12] [--out bench/results/latent_probe.json]

For each model YAML: encodes toy4d clips (9 frames at 64², any motion) with its video DiT's codec (the space-to-depth
codec or a VAE), and fits by least squares, on 70% of the latent cells of frame 0, a linear map from a cell's latent
vector (and its 3 x 3 neighbourhood) to three targets of its 8 x 8 pixel block: the 192 pixel values, the block's
mean colour and its chroma (mean colour minus its grey). Reports R² on the other 30%: 1 keeps everything linearly,
0 keeps nothing. A model whose latents keep no colour cannot learn toy4d's colour-coded motion, whatever its LDRM.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import toy4d_clips, write_rows

from d4s.models.config import ModelConfig
from d4s.models.video_dit import VideoDiT

TRAIN_FRACTION = 0.7


def r_squared(features: torch.Tensor, targets: torch.Tensor) -> float:
    """Held-out R² of an affine least-squares fit: ``features [N, F]``, ``targets [N, D]`` (float64)."""
    n = len(features)
    cut = int(TRAIN_FRACTION * n)
    design = torch.cat([features, features.new_ones(n, 1)], dim=1)
    weights = torch.linalg.lstsq(design[:cut], targets[:cut]).solution
    residual = design[cut:] @ weights - targets[cut:]
    spread = targets[cut:] - targets[cut:].mean(0)
    return float(1.0 - residual.pow(2).sum() / spread.pow(2).sum())


def cells(video_dit: VideoDiT, stream, batches: int) -> dict[str, torch.Tensor]:
    """Per latent cell of frame 0: its latent ``own [N, C]``, 3 x 3 neighbourhood ``around [N, 9C]`` and pixel
    block ``pixels [N, 192]``."""
    own, around, pixels = [], [], []
    for _ in range(batches):
        video = next(stream).prepare().video
        with torch.no_grad():
            latent = video_dit.encode(video)[:, 0].double()  # [B, C, h, w]
        C = latent.shape[1]
        padded = torch.nn.functional.pad(latent, (1, 1, 1, 1), mode="replicate")
        own.append(latent.permute(0, 2, 3, 1).reshape(-1, C))
        around.append(torch.nn.functional.unfold(padded, 3).transpose(1, 2).reshape(-1, 9 * C))
        blocks = torch.nn.functional.pixel_unshuffle(video[:, 0].double(), video.shape[-1] // latent.shape[-1])
        pixels.append(blocks.permute(0, 2, 3, 1).reshape(-1, blocks.shape[1]))
    return {"own": torch.cat(own), "around": torch.cat(around), "pixels": torch.cat(pixels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="a toy4d index.json")
    parser.add_argument(
        "--models", nargs="+", type=Path, default=[Path("configs/tiny/model.yaml"), Path("configs/tiny/model_vae.yaml")]
    )
    parser.add_argument("--batches", type=int, default=12, help="batches of 4 clips")
    parser.add_argument("--out", type=Path, default=Path("bench/results/latent_probe.json"))
    args = parser.parse_args()
    rows = []
    print("| model | codec | latent channels | pixels R² (cell / 3x3) | mean colour R² | chroma R² |")
    print("|---|---|---:|---:|---:|---:|")
    for path in args.models:
        torch.manual_seed(0)
        config = ModelConfig.from_yaml(path)
        video_dit = VideoDiT.from_config(config.video_dit).eval()
        with tempfile.TemporaryDirectory() as work:
            data = cells(video_dit, toy4d_clips(args.index, None, Path(work), motion="any"), args.batches)
        colour = data["pixels"].reshape(len(data["pixels"]), 3, -1).mean(-1)  # channel-major blocks
        chroma = colour - colour.mean(-1, keepdim=True)
        row = {
            "model": str(path),
            "codec": config.video_dit.codec,
            "latent_channels": video_dit.latent_channels,
            "pixels_cell": r_squared(data["own"], data["pixels"]),
            "pixels_3x3": r_squared(data["around"], data["pixels"]),
            "colour_3x3": r_squared(data["around"], colour),
            "chroma_3x3": r_squared(data["around"], chroma),
        }
        rows.append(row)
        print(f"| {path} | {row['codec']} | {row['latent_channels']} | {row['pixels_cell']:.2f} / "
              f"{row['pixels_3x3']:.2f} | {row['colour_3x3']:.2f} | {row['chroma_3x3']:.2f} |", flush=True)  # fmt: skip
    write_rows(args, rows)


if __name__ == "__main__":
    main()
