"""Evaluate a checkpoint with the paper's protocol (Sec. 4.2, Appendix D): generate every scene along the five
trajectories (plus an orbit and the real cameras), score the renders and write a report.

    python -m d4s.eval --config configs/eval.yaml --ckpt outputs/stage3/checkpoints/last.ckpt --out eval/stage3

Writes OUT/report.json, OUT/report.md and OUT/*.png; OUT/samples/ caches every sample, so a re-run resumes (samples
already generated with the same settings are reused). Metrics whose feature-network weights are not configured in
the config's ``weights`` section are listed as skipped with the missing file named. Nothing is downloaded: Hugging Face
and transformers are switched offline before they load, and no torch hub or torchvision download is ever requested
(every network is built without weights and loads a local file).
"""

from __future__ import annotations

import sys
from pathlib import Path

from d4s.eval.offline import go_offline

go_offline()  # before any heavy import below or in the d4s.eval modules

from d4s.utils.cli import doc_parser, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m d4s.eval", __doc__)
    parser.add_argument("--config", type=Path, default=Path("configs/eval.yaml"), help="evaluation YAML")
    parser.add_argument("--ckpt", help="checkpoint (default: the config's ckpt)")
    parser.add_argument("--out", help="run folder (default: the config's out)")
    parser.add_argument("--scenes", type=int, help="evaluate the first N scenes only (default: the config's)")
    parser.add_argument("--device", help="torch device, or auto (default: the config's)")
    args = parser.parse_args(argv)
    if args.scenes is not None and args.scenes < 1:
        parser.error(f"--scenes must be >= 1, got {args.scenes}")

    from d4s.eval.config import load_config
    from d4s.eval.run import run_protocol

    overrides = {"ckpt": args.ckpt, "out": args.out, "scenes.max_scenes": args.scenes, "device": args.device}
    config = load_config(args.config, {key: value for key, value in overrides.items() if value is not None})
    report = run_protocol(config)
    out = Path(config.out)
    run = report["run"]
    print(
        f"wrote {out / 'report.md'} ({run['samples']} samples: {run['generated']} generated, {run['reused']} reused; "
        f"{len(report['skipped'])} metrics skipped)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
