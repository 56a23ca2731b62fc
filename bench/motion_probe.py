"""Motion probe: how fast does the LDRM learn the direction of object motion, apart from everything else?

    python bench/motion_probe.py --index data/toy4d/index.json [--model configs/tiny/model.yaml]
        [--set ldrm.deformation_time=target ...] [--init CKPT] [--steps 400] [--lr 3e-3] [--frame-step 2]
        [--out bench/results/motion_probe.json]

Trains the LDRM of ``--model`` (default the tiny one; ``--set KEY=VALUE`` edits it, dotted keys) on the motion loss
alone (Eq. 5's squared error on the dataset's 3D tracks, moving and static pairs averaged separately as
``LossWeights.motion_balance_threshold`` does) over streamed dynamic training clips, and every ``--every`` steps
reports, on fixed held-out clips (the val and test splits), the mean cosine between each moving track's predicted
and true displacement: in 3D, and in the image plane (x, y of the first camera, whose frame the clips' world is).

What it separates (``bench/RESULTS.md``, "Motion probe"): the data (toy4d's ``by_colour`` motion, predictable from
the first frame, against ``random`` motion, which only the video shows: annotate with ``--set reader.motion=...``),
the codec (``video_dit.codec``: the space-to-depth codec or, with ``--model configs/tiny/model_vae.yaml``, a random
tiny VAE) and the deformation head's time input (``ldrm.deformation_time``). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import model_yaml, toy4d_clips, write_rows

from d4s.losses import track_motion
from d4s.stages import DynamicFinetune, LPIPSConfig

MOVING_METRES = 0.02  # a track pair moves when its true displacement is longer (motion_balance_threshold)
MOTION_SCALE = 0.1  # the squared error's scale, as configs/tiny/stage3.yaml's motion_squared_scale


def motion_terms(ldrm, video_dit, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The balanced motion loss of a batch and ``[P, 2]`` cosines (3D, image plane) of its moving track pairs."""
    with torch.no_grad():
        latents = video_dit.encode(batch.video)
    B, T = batch.video.shape[:2]
    frames = torch.arange(T).expand(B, T)
    out = ldrm(latents, batch.plucker, batch.K, batch.c2w, frames.float() / (T - 1))
    s = ldrm.config.gaussian_stride
    size = tuple(batch.video.shape[-2:])
    predicted, true, supervised = track_motion(
        out.dmu, (size[0] // s, size[1] // s), batch.track_xyz, batch.track_visible, batch.track_valid, batch.c2w,
        batch.K, size, frames,
    )  # fmt: skip
    moving = supervised & (true.norm(dim=-1) > MOVING_METRES)
    static = supervised & ~moving
    error = (predicted - true).pow(2).sum(-1) / MOTION_SCALE
    loss = (error * moving).sum() / moving.sum().clamp_min(1) + (error * static).sum() / static.sum().clamp_min(1)
    p, t = predicted[moving], true[moving]
    cosines = [torch.nn.functional.cosine_similarity(p[:, :k], t[:, :k], dim=-1, eps=1e-9) for k in (3, 2)]
    return loss, torch.stack(cosines, dim=-1).detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="toy4d index.json with dynamic val and test clips")
    parser.add_argument("--model", type=Path, default=Path("configs/tiny/model.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="edit the model YAML, e.g. ldrm.deformation_time=target (repeatable)")  # fmt: skip
    parser.add_argument("--init", default=None, help="a training checkpoint whose LDRM to start from")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--frame-step", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/motion_probe.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        lpips = LPIPSConfig(net="alex", backbone_path=None, random_backbone=True)
        stage = DynamicFinetune(str(model_yaml(args.model, args.overrides, work)), lpips=lpips)
        if args.init:
            stage.load_init(args.init)
        ldrm, video_dit = stage.ldrm.train(), stage.video_dit.eval()
        optimizer = torch.optim.AdamW(ldrm.parameters(), lr=args.lr)
        train = toy4d_clips(args.index, None, work, args.frame_step, args.batch_size)
        held = []
        for split in ("val", "test"):
            stream = toy4d_clips(args.index, split, work, args.frame_step, args.batch_size)
            held += [next(stream).prepare() for _ in range(3)]
        rows, recent, start = [], [], time.perf_counter()
        for step in range(args.steps + 1):
            loss, cosines = motion_terms(ldrm, video_dit, next(train).prepare())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            recent.append(cosines[:, 0].mean().item() if len(cosines) else 0.0)
            if step % args.every == 0:
                with torch.no_grad():
                    held_cosines = torch.cat([motion_terms(ldrm, video_dit, b)[1] for b in held])
                rows.append({"step": step, "seconds": time.perf_counter() - start,
                             "train_cos_3d": sum(recent) / len(recent), "held_cos_3d": held_cosines[:, 0].mean().item(),
                             "held_cos_image": held_cosines[:, 1].mean().item(), "held_pairs": len(held_cosines)})  # fmt: skip
                recent.clear()
                r = rows[-1]
                print(f"step {step:5d}  train 3D {r['train_cos_3d']:+.3f}  held-out 3D {r['held_cos_3d']:+.3f}  "
                      f"image plane {r['held_cos_image']:+.3f}  ({r['held_pairs']} moving pairs)", flush=True)  # fmt: skip
    write_rows(args, rows)


if __name__ == "__main__":
    main()
