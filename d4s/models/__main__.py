"""Model tools.

    python -m d4s.models --config configs/model/paper.yaml --summary     # parameter counts, no memory used
    python -m d4s.models --config configs/model/paper.yaml --cache-captions captions.txt --out captions.pt

``--summary`` builds every model on the meta device (random layout, no weights read) and prints parameter counts
per part, the latent tokens and FLOPs of one video DiT pass over a 49-frame 512² clip (``FlopCounterMode``), then
the size of the Gaussian field the LDRM outputs for one 49-frame 512² scene (its shapes from a
meta-device forward pass, in float32): with this config's ``gaussian_stride`` and ``sh_degree``, and with the
paper's one Gaussian per pixel at SH degree 0 and 3. ``--cache-captions`` encodes one caption per line with the config's local T5 encoder and saves the
``{caption: [L, D]}`` file that ``text: {mode: cache, path: ...}`` reads (the paper's generic prompt included).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from d4s.data.schema import GENERIC_PROMPT
from d4s.models.config import ModelConfig
from d4s.models.cost import FIELD_FRAMES, FIELD_SIZE, dit_pass, field_size
from d4s.models.ldrm import LatentDynamicReconstructionModel, parameter_count
from d4s.models.text import TextEncoder
from d4s.models.video_dit import VideoDiT
from d4s.utils.fileio import atomic_output


def summary(config: ModelConfig) -> str:
    """A table of parameter counts (millions) per model part, then the Gaussian field of one paper-sized scene."""
    with torch.device("meta"):
        dit = VideoDiT.from_config(dataclasses.replace(config.video_dit, random_init=True))
        ldrm = LatentDynamicReconstructionModel(config.ldrm)
    rows = [
        ("video DiT: transformer", parameter_count(dit.transformer)),
        (
            "  of which camera adapter",
            parameter_count(dit.plucker) + parameter_count(dit.camera_adapter),
        ),
        ("video DiT: VAE (frozen)", parameter_count(dit.vae)),
        *((f"LDRM: {name}", parameter_count(part)) for name, part in ldrm.named_children()),
        ("LDRM total", parameter_count(ldrm)),
    ]
    lines = [f"{name:32s} {count / 1e6:12.2f} M" for name, count in rows]
    one_pass = dit_pass(config)
    backbone = config.video_dit.backbone
    lines += ["", f"video DiT ({backbone}), one pass over a {FIELD_FRAMES}-frame {FIELD_SIZE}² clip:"]
    lines.append(f"{'':32s} {one_pass['tokens']} latent tokens, {one_pass['flops'] / 1e12:.1f} TFLOP")
    lines += ["", f"Gaussian field of one {FIELD_FRAMES}-frame {FIELD_SIZE}² scene (float32):"]
    lines.append(f"{'':32s} {'Gaussians':>12s} {'canonical':>12s} {'per time':>12s}")
    c = config.ldrm
    settings = [("this config", c.gaussian_stride, c.sh_degree), ("per pixel, SH 0", 1, 0), ("per pixel, SH 3", 1, 3)]
    for name, stride, degree in settings:
        size = field_size(
            dataclasses.replace(config, ldrm=dataclasses.replace(c, gaussian_stride=stride, sh_degree=degree))
        )
        label = f"{name} (stride {stride}, SH {degree})"
        lines.append(
            f"{label:32s} {size['gaussians'] / 1e6:10.2f} M {size['canonical_bytes'] / 2**20:9.0f} MiB "
            f"{size['bytes_per_time'] / 2**20:9.0f} MiB"
        )
    return "\n".join(lines)


def cache_captions(config: ModelConfig, captions: Path, out: Path, batch_size: int = 8) -> int:
    """Encode the captions of ``captions`` (one per line) and the generic prompt; returns how many."""
    text = TextEncoder(**{**config.text, "mode": "t5"})
    lines = [line.strip() for line in captions.read_text().splitlines() if line.strip()]
    unique = sorted(set(lines) | {GENERIC_PROMPT, ""})  # "": the unconditional branch of guidance
    cache = {}
    for start in tqdm(range(0, len(unique), batch_size), desc="captions", unit="batch"):
        chunk = unique[start : start + batch_size]
        cache.update(zip(chunk, text.embed(chunk, "cpu").cpu().unbind(0)))
    with atomic_output(out) as tmp:
        torch.save(cache, tmp)
    return len(cache)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="model YAML (configs/model/, configs/tiny/)")
    parser.add_argument("--summary", action="store_true", help="print parameter counts (meta device, no memory)")
    parser.add_argument("--cache-captions", type=Path, help="a text file of captions, one per line, to encode")
    parser.add_argument("--out", type=Path, default=Path("captions.pt"), help="where --cache-captions writes")
    args = parser.parse_args(argv)
    if not (args.summary or args.cache_captions):
        parser.error("nothing to do: give --summary and/or --cache-captions")
    try:
        config = ModelConfig.from_yaml(args.config)
        if args.summary:
            print(summary(config))
        if args.cache_captions:
            print(f"wrote {cache_captions(config, args.cache_captions, args.out)} captions to {args.out}")
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
