"""Atomic file output: a reader (or a resumed job) never sees a half-written file; JSON documents written so."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    The parent directory is created if needed. On an exception the temporary file is removed and ``path``
    keeps its previous content (or stays absent). The temporary name keeps ``path``'s suffix, so writers
    that pick a format from the extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists; paths and other objects as their ``str``)."""
    return json.loads(json.dumps(value, default=str))


def read_json(path: str | Path) -> Any:
    """A JSON file's content, or ``None`` when it is missing or unreadable (unfinished work)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def reusable_record(record: str | Path, settings: Any, *outputs: str | Path, key: str = "settings") -> dict | None:
    """The one test of every "skip work already done with the same settings" in d4s (generated scenes, evaluation
    samples and their features): the JSON document at ``record`` when its ``key`` equals ``settings`` (compared as
    JSON values, :func:`as_json`) and every file of ``outputs`` exists; else ``None``: missing or unreadable, made
    with other settings, or unfinished. Progress journals (annotation's per rank, the demo's per phase) record
    where a long run stands instead, and refuse to resume a run made with other settings."""
    document = read_json(record)
    if (
        isinstance(document, dict)
        and document.get(key) == as_json(settings)
        and all(Path(p).is_file() for p in outputs)
    ):
        return document
    return None


def write_json(path: str | Path, document: Any, sort_keys: bool = False) -> Path:
    """``document`` as indented JSON with a final newline, written atomically (:func:`atomic_output`); returns
    ``path``. Non-finite floats are written as ``NaN`` / ``Infinity``, which Python's ``json`` reads back."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(document, indent=1, sort_keys=sort_keys) + "\n")
    return Path(path)
