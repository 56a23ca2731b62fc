"""Command line: ``python -m annotation --dataset NAME --root PATH --out DIR`` (and ``manifest``, ``index``).

Examples::

    python -m annotation --dataset toy4d --out data/toy4d                  # the built-in synthetic dataset
    python -m annotation --dataset realestate10k --root /data/re10k --out shards/re10k --config my.yaml
    python -m annotation manifest --dataset pointodyssey --root /data/pointodyssey
    python -m annotation index --dataset toy4d --out data/toy4d            # rebuild index.json

Work is split by rank and world size from ``--rank/--world-size``, a SLURM array (``SLURM_ARRAY_TASK_ID``),
torchrun (``RANK``, ``WORLD_SIZE``) or SLURM tasks (``SLURM_PROCID``, ``SLURM_NTASKS``), in that order.
Rerunning the same command resumes where a killed run stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from annotation.config import CONFIG_DIR, load_config
from annotation.errors import InputError
from annotation.manifest import build_manifest, default_manifest_path, read_manifest, write_manifest
from annotation.pipeline import AbortRun, run, summary_table
from annotation.readers import READERS, make_reader
from annotation.writer import PROGRESS_DIR, journal_dataset, write_index

log = logging.getLogger("annotation")


def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's rank and the world size: flags first, then SLURM array, torchrun, SLURM tasks."""
    env = os.environ
    if (rank is None) != (world_size is None):
        raise ValueError("give both --rank and --world-size, or neither (then they come from the environment)")
    if rank is None:
        if "SLURM_ARRAY_TASK_ID" in env:
            low = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            count = env.get("SLURM_ARRAY_TASK_COUNT")
            world = int(count) if count else int(env["SLURM_ARRAY_TASK_MAX"]) - low + 1
            rank, world_size = int(env["SLURM_ARRAY_TASK_ID"]) - low, world
        elif "RANK" in env and "WORLD_SIZE" in env:
            rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            rank, world_size = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
    rank, world_size = rank or 0, world_size or 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world size {world_size})")
    return rank, world_size


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (values in YAML syntax) to a dict; ``key`` may be ``section.name``."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected key=value")
        overrides[key] = yaml.safe_load(value)
    return overrides


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="toy4d", choices=sorted(READERS), help="dataset to read (default: toy4d)")
    parser.add_argument("--root", type=Path, help="dataset root on disk (not needed for toy4d)")
    parser.add_argument("--config", type=Path, help=f"annotation settings (default: {CONFIG_DIR}/<dataset>.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set reader.num_scenes=4 --set clips.stride=8 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m annotation",
        description="Annotate a dataset into webdataset shards of metric 4D clips (run), write a scene manifest "
        "(manifest), or rebuild a shard index (index). Without a command, runs `run`. Options of a command: "
        "python -m annotation run --help.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:" + __doc__.split("Examples::")[1],
    )
    commands = parser.add_subparsers(dest="command")
    run_parser = commands.add_parser("run", help="annotate into shards (the default command)")
    _common(run_parser)
    run_parser.add_argument("--out", type=Path, required=True, help="output directory for shards and index.json")
    run_parser.add_argument(
        "--manifest",
        default=None,
        help="scene list and splits (default: data_manifests/<dataset>.json if present; "
        "'none' lists scenes from the reader)",
    )
    run_parser.add_argument("--rank", type=int, help="this process's rank (default: from the environment, else 0)")
    run_parser.add_argument("--world-size", type=int, help="number of ranks (default: from the environment, else 1)")
    run_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    manifest_parser = commands.add_parser("manifest", help="write data_manifests/<dataset>.json from the reader")
    _common(manifest_parser)
    manifest_parser.add_argument("--out", type=Path, help="where to write it (default: data_manifests/<dataset>.json)")
    index_parser = commands.add_parser("index", help="rebuild <out>/index.json from the ranks' journals")
    index_parser.add_argument(
        "--dataset", choices=sorted(READERS), help="default: the one dataset whose journals are in --out"
    )
    index_parser.add_argument("--out", type=Path, required=True, help="the annotation output directory")
    return parser


def _scene_list(args, config, reader) -> list[tuple[str, str]]:
    if args.manifest == "none":
        return [(name, reader.split_of(name)) for name in reader.scene_names()]
    path = Path(args.manifest) if args.manifest else default_manifest_path(config.dataset)
    if args.manifest is None and not path.exists():
        log.warning(
            "no manifest at %s; listing scenes from the reader (write one with `python -m annotation manifest`)", path
        )
        return [(name, reader.split_of(name)) for name in reader.scene_names()]
    return read_manifest(path, config.dataset, config.reader)


def _add_file_log(out: Path, dataset: str, rank: int) -> None:
    path = out / PROGRESS_DIR / f"{dataset}-r{rank:03d}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("run", "manifest", "index", "-h", "--help"):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "index":
            index = write_index(args.out, args.dataset or journal_dataset(args.out))
            print({split: info["samples"] for split, info in index["splits"].items()})
            return 0
        config = load_config(args.dataset, args.config, parse_overrides(args.overrides))
        reader = make_reader(args.dataset, args.root, **config.reader)
        if args.command == "manifest":
            path = args.out or default_manifest_path(args.dataset)
            manifest = build_manifest(reader, config.reader)
            write_manifest(manifest, path)
            print(f"{path}: {len(manifest['scenes'])} scenes {manifest['counts']}")
            return 0
        rank, world_size = rank_and_world(args.rank, args.world_size)
        scenes = _scene_list(args, config, reader)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _add_file_log(args.out, args.dataset, rank)
    try:
        journal = run(config, reader, scenes, args.out, rank, world_size, progress=not args.no_progress)
    except (ValueError, InputError) as error:  # found at the start: configuration, resume state, estimators (a
        print(f"error: {error}", file=sys.stderr)  # checkout or weights file they refuse before the first clip)
        return 2
    except AbortRun as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary_table(journal))
    if not scenes[rank::world_size]:
        print(f"rank {rank} of {world_size}: no scenes to annotate")
    elif journal.written == 0:
        print(f"error: no clip could be written (see {args.out / PROGRESS_DIR})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
