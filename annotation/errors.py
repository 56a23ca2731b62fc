"""The one exception the pipeline treats as bad input: log the file and reason, skip, carry on."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A raw file is missing, corrupt or breaks its dataset's format; ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
