"""Generator probe: how fast does the tiny video DiT learn to generate held-out clips, apart from the LDRM?

    python bench/generator_probe.py --index data/toy4d/index.json [--model configs/tiny/model.yaml]
        [--set video_dit.transformer.num_layers=4 ...] [--steps 2000] [--every 500] [--batch-size 8] [--lr 2e-3]
        [--pool 100] [--out bench/results/generator_probe.json]

Trains the video DiT of ``--model`` (``--set KEY=VALUE`` edits it, dotted keys) alone, with stage 0's step
(:class:`d4s.stages.VideoPretrain`: Eq. 2, text and camera dropped together 10% of the time), on a pool of ``--pool``
batches of random training clips (9 frames at 64², frame step ``--frame-step`` to 4), decoded once so that the probe measures
learning, not the loader. Every ``--every`` steps it samples the held-out test clips as ``make eval`` reads them
(their first 9 frames at step 4) from their first frame, cameras and caption with the paper's sampler (30 Euler
steps, cosine guidance 7.5) and reports the latent PSNR (with ``--ema``: of an exponential moving average of the weights) of each latent frame against the real video's, beside frame 0's latents held still (what a
generator that predicts no change scores), and the same for training clips (the generalisation gap). Prints a table
and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch
from common import model_yaml, toy4d_clips, write_rows

from d4s.diffusion import FlowMatching, Guidance
from d4s.eval.metrics import latent_psnr, still_latent_psnr
from d4s.stages import Recipe, VideoPretrain
from d4s.stages.ema import ParameterEMA


@torch.no_grad()
def latent_rows(module: VideoPretrain, batch) -> tuple[list[float], list[float]]:
    """Mean latent PSNR per latent frame of the DiT's samples and of frame 0 held still, over ``batch``'s clips."""
    dit = module.video_dit.eval()
    z0 = dit.encode(batch.video)
    condition = module.conditioning(batch, z0.shape[1], None)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    shift = module.recipe.flow_matching.shift
    sampled = dit.sample(noise, condition, num_steps=30, guidance=Guidance(), shift=shift)
    dit.train()
    peak = dit.vae.value_range
    generated = torch.tensor([latent_psnr(s, z, peak) for s, z in zip(sampled, z0)]).mean(0)
    still = torch.tensor([still_latent_psnr(z, peak) for z in z0]).mean(0)
    return generated.tolist(), still.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="toy4d index.json with train and test clips")
    parser.add_argument("--eval-index", help="index.json whose test split to sample (default: --index's)")
    parser.add_argument("--model", type=Path, default=Path("configs/tiny/model.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="edit the model YAML, e.g. video_dit.transformer.num_layers=4 (repeatable)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pool", type=int, default=100, help="training batches decoded once and cycled through")
    parser.add_argument("--shift", type=float, default=1.0, help="flow-matching time shift (training and sampling)")
    parser.add_argument("--frame-step", type=int, default=2, help="smallest training frame step (the largest is 4)")
    parser.add_argument("--ema", type=float, default=None, help="sample with an EMA of the weights of this decay")
    parser.add_argument("--held-out", type=int, default=8, help="test clips (at most; and as many training clips)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/generator_probe.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        recipe = Recipe(flow_matching=FlowMatching(shift=args.shift))
        module = VideoPretrain(str(model_yaml(args.model, args.overrides, work)), recipe=recipe)
        stream = toy4d_clips(args.index, None, work, args.frame_step, args.batch_size, motion="any")
        pool = [next(stream).prepare() for _ in range(args.pool)]
        test_index = args.eval_index or args.index
        held = next(toy4d_clips(test_index, "test", work, 4, args.held_out, motion="any", fixed=True)).prepare()
        seen = next(toy4d_clips(args.index, None, work, 4, args.held_out, motion="any")).prepare()
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=1e-4)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / args.warmup))
    ema = ParameterEMA(module.video_dit, args.ema) if args.ema else None
    generator = torch.Generator().manual_seed(0)
    rows, losses, start = [], [], time.perf_counter()
    for step in range(args.steps + 1):
        batch = pool[step % len(pool)]
        z0 = module.video_dit.encode(batch.video)
        loss = module.flow_matching_step(batch, z0, generator, drop_conditions=True)[0]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        warmup.step()
        if ema is not None:
            ema.update(module.video_dit)
        losses.append(loss.item())
        if step % args.every == 0:
            seconds = time.perf_counter() - start
            with ema.swapped_in(module.video_dit) if ema is not None else contextlib.nullcontext():
                (test, still), (train, train_still) = latent_rows(module, held), latent_rows(module, seen)
            rows.append({"step": step, "seconds": seconds, "loss": sum(losses) / len(losses), "test": test,
                         "test_still": still, "train": train, "train_still": train_still})  # fmt: skip
            losses.clear()
            later = " ".join(f"{g:5.1f}/{s:5.1f}" for g, s in zip(test[1:], still[1:]))
            print(f"step {step:5d} {seconds:6.0f} s  loss {rows[-1]['loss']:.3f}  test frame 0 {test[0]:5.1f} dB, "
                  f"later frames (generated/still) {later}", flush=True)  # fmt: skip
    write_rows(args, rows)


if __name__ == "__main__":
    main()
