"""Train and show a real 4D model on a CPU, end to end on built-in data: ``make demo`` (python -m d4s.demo).

Annotates the synthetic toy4d dataset, trains the video generator (stage 0) and the three tiny stages with hand-off,
generates 4D scenes from held-out first frames, evaluates the trained and the untrained model, and writes
<out>/SUMMARY.md (metrics table, the generator's latents apart from the LDRM, learning checks, contact sheet, loss
curves, where everything is). About 20 minutes on 2 cores (--fast: about 7).
A killed demo resumes when run again with the same options.

examples:
  python -m d4s.demo                       # the full demo -> runs/demo/SUMMARY.md
  python -m d4s.demo --fast                # the small variant -> runs/demo-fast/SUMMARY.md
  python -m d4s.demo --restart             # start over (deletes the run folder, keeps data/toy4d)
  python -m d4s.demo --fast --check        # exit 1 unless every learning check passes
  python -m d4s.demo --fast --model-config configs/tiny/model_wan.yaml --out runs/demo-fast-wan   # on Wan2.2's twin
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from d4s.utils.cli import doc_parser, run_cli


def main(argv: list[str] | None = None) -> int:
    from d4s.demo.plan import FAST, FULL

    parser = doc_parser("python -m d4s.demo", __doc__)
    parser.add_argument(
        "--fast", action="store_true", help="the small variant (about 7 minutes; make test-slow checks that it learns)"
    )
    parser.add_argument("--out", type=Path, help=f"run folder (default: {FULL.out}, with --fast {FAST.out})")
    parser.add_argument(
        "--data",
        type=Path,
        help=f"toy4d annotation folder (default: {FULL.data} as `make annotate` writes it; with --fast, inside --out)",
    )
    parser.add_argument(
        "--restart", action="store_true", help="delete the run folder first (and the data with it if it lies inside)"
    )
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a learning check fails")
    parser.add_argument(
        "--model-config",
        type=Path,
        help="other tiny models for every stage (default: configs/tiny/model.yaml, the CogVideoX twin; "
        "configs/tiny/model_wan.yaml: the Wan2.2-TI2V twin)",
    )
    args = parser.parse_args(argv)
    plan = FAST if args.fast else FULL
    if args.out is not None:
        plan = dataclasses.replace(plan, out=args.out)
    if args.data is not None:
        plan = dataclasses.replace(plan, data=args.data)
    if args.model_config is not None:  # its own run: a folder of the other models is refused, not resumed
        plan = dataclasses.replace(plan, model_config=args.model_config, name=f"{plan.name}, {args.model_config.stem}")
    from d4s.demo.run import DemoError, run_demo

    try:
        summary = run_demo(plan, restart=args.restart)
    except DemoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    from d4s.demo.summary import learned

    checks = json.loads((plan.out / "summary.json").read_text())["checks"]
    print(f"\nThe demo's summary: {summary}")
    return 1 if args.check and not learned(checks) else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
