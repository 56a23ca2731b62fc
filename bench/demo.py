"""Demo benchmark: wall time, peak memory and final metrics of ``make demo`` (the full demo), from a clean run folder.

    python bench/demo.py [--out bench/results/demo.json] [--quick] [--keep-data]

Runs ``python -m d4s.demo --restart`` in a child process into ``runs/demo-bench`` (``--quick``: the ``--fast`` variant)
and measures its wall time from outside. Peak memory is the demo's own record: each phase samples the whole process
tree (the demo, its training processes and their data-loader workers) every second, and the phases run one after
another, so the largest phase peak is the run's (a second sampler here would slow the run it measures). The data
phase annotates toy4d into the run folder unless ``--keep-data`` reuses ``data/toy4d``. Goal (issue): under 20
minutes and 8 GB on 2 CPU cores. Prints a table (time per phase, the learning checks) and writes JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import bench_parser, machine_info


REPO = Path(__file__).resolve().parents[1]
RUN = Path("runs/demo-bench")


def main() -> None:
    parser = bench_parser(__doc__, "demo", repeats=1, quick_help="the fast variant (--fast) instead of the full demo")
    parser.add_argument("--keep-data", action="store_true", help="reuse data/toy4d instead of annotating afresh")
    args = parser.parse_args()
    run = RUN.with_name(RUN.name + ("-fast" if args.quick else ""))
    data = run / "data" / "toy4d"
    if not args.quick and args.keep_data:
        data = Path("data/toy4d")
    elif data.exists():
        shutil.rmtree(data)
    command = [sys.executable, "-m", "d4s.demo", "--restart", "--out", str(run)]
    command += ["--fast"] if args.quick else ["--data", str(data)]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    seconds = time.perf_counter() - start
    summary = json.loads((REPO / run / "summary.json").read_text())
    peak = max(phase["peak_memory_gib"] or 0.0 for phase in summary["phases"].values())
    result = {
        "machine": machine_info(),
        "variant": "fast" if args.quick else "full",
        "command": " ".join(command[1:]),
        "wall_seconds": seconds,
        "peak_memory_gib": peak,
        "phases": {
            name: {k: p.get(k) for k in ("seconds", "peak_memory_gib")} for name, p in summary["phases"].items()
        },
        "metrics": summary["metrics"],
        "checks": summary["checks"],
    }
    print("\n| phase | seconds | peak GiB |\n|---|---:|---:|")
    for name, phase in result["phases"].items():
        print(f"| {name} | {phase['seconds']:.0f} | {phase['peak_memory_gib']:.2f} |")
    print(f"| **total** | {seconds:.0f} | {peak:.2f} |\n")
    for check in summary["checks"]:
        print(
            f"{'ok  ' if check['passed'] else 'FAIL'} {check['check']}: {check['value']:.3f} (>= {check['threshold']})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
