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


def write_json(path: str | Path, document: Any, sort_keys: bool = False) -> Path:
    """``document`` as indented JSON with a final newline, written atomically (:func:`atomic_output`); returns
    ``path``. Non-finite floats are written as ``NaN`` / ``Infinity``, which Python's ``json`` reads back."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(document, indent=1, sort_keys=sort_keys) + "\n")
    return Path(path)
