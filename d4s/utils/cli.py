"""Small pieces the command-line tools share: image sizes, trajectory arguments, one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from d4s.geometry.trajectories import TRAJECTORY_NAMES

NAMED_TRAJECTORIES = tuple(name for name in TRAJECTORY_NAMES if name != "from_file")
TRAJECTORY_FILE_SUFFIXES = (".json", ".txt")


def doc_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows a module docstring: the first paragraph above the options, the rest (usage
    examples, file lists) below them, as written."""
    summary, _, details = doc.partition("\n\n")
    return argparse.ArgumentParser(
        prog=prog, description=summary, epilog=details, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def parse_size(value: str) -> tuple[int, int]:
    """``"512"`` (square) or ``"480x720"`` (height x width) as ``(height, width)``; ``ValueError`` otherwise."""
    parts = value.lower().split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise ValueError(f"resolution: expected a positive size such as 512 or HEIGHTxWIDTH (480x720), got {value!r}")
    return (sizes[0], sizes[-1])


def parse_trajectory(value: str) -> tuple[str, Path | None]:
    """A ``--trajectory`` value as ``(name, camera file or None)``: a named trajectory, or a camera file (a path
    ending in .json or .txt, or any existing file) as ``("from_file", path)``."""
    if value in NAMED_TRAJECTORIES:
        return value, None
    path = Path(value)
    if path.suffix.lower() in TRAJECTORY_FILE_SUFFIXES or path.is_file():
        return "from_file", path
    raise ValueError(
        f"trajectory: unknown name {value!r}; choose one of {', '.join(NAMED_TRAJECTORIES)}, or give a camera file "
        "(.json as written in cameras.json, or a RealEstate10K .txt)"
    )


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main``; a bad input (``OSError``, ``ValueError``, ``KeyError``) becomes one ``error:`` line on stderr and
    exit status 2, Ctrl-C exit status 130, instead of a traceback."""
    try:
        return main(argv)
    except (OSError, ValueError, KeyError) as error:
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)  # no repr quotes
        message = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
