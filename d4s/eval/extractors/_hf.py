"""Loading a transformers model from a local folder, offline, with wrong folders reported as ``ValueError``."""

from __future__ import annotations

import json
from pathlib import Path

from d4s.eval.extractors.errors import WEIGHTS, require_path


def load_local_model(name: str, path: str | Path | None, model_class, model_type: str, **kwargs):
    """``model_class.from_pretrained(path)`` from the local folder ``path`` only, in eval mode, frozen.

    Raises ``MissingWeights`` when ``path`` is ``None`` or absent, ``ValueError`` naming the folder when its
    ``config.json`` is missing or not of ``model_type`` or its weights do not fill every parameter.
    """
    folder = require_path(name, path, folder=True)
    metric = WEIGHTS[name].metric
    config_file = folder / "config.json"
    try:
        found = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as err:
        raise ValueError(f"{metric}: {config_file}: unreadable or missing ({err})") from err
    if found != model_type:
        raise ValueError(f"{metric}: {folder}: config.json says model_type {found!r}, expected {model_type!r}")
    try:
        model, info = model_class.from_pretrained(folder, local_files_only=True, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{metric}: {folder}: cannot load {model_class.__name__}: {err}") from err
    if info["missing_keys"] or info.get("mismatched_keys"):
        wrong = sorted(info["missing_keys"]) + [str(k) for k in info.get("mismatched_keys", [])]
        raise ValueError(
            f"{metric}: {folder}: weights missing or of the wrong shape: {wrong[:5]} ({len(wrong)} in all)"
        )
    return model.eval().requires_grad_(False)
