"""Feature networks of the evaluation, each loaded from a local file or folder (weights are never downloaded).

``load_extractor(name, paths)`` builds one by its registry name, reading its path from ``paths`` (the
``weights`` mapping of ``configs/eval.yaml``). The modules import their heavy dependencies (transformers,
MASt3R) only when a loader runs. ``camera.estimate_poses`` needs no weights and is not in the registry.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from d4s.eval.extractors.errors import WEIGHTS, MissingWeights, WeightsInfo, require_path

EXTRACTOR_NAMES = ("i3d", "clip_b32", "clip_l14", "aesthetic", "dino", "qalign", "mast3r")


def load_extractor(name: str, paths: Mapping[str, str | None], device: str | torch.device = "cpu") -> object:
    """The extractor ``name`` loaded from ``paths[name]``.

    Args:
        name: one of ``EXTRACTOR_NAMES``: ``"i3d"`` -> ``I3D``, ``"clip_b32"`` / ``"clip_l14"`` -> ``CLIP``,
            ``"aesthetic"`` -> ``AestheticHead``, ``"dino"`` -> ``DINO``, ``"qalign"`` -> ``QAlign``,
            ``"mast3r"`` -> ``Mast3rMatcher``.
        paths: extractor name -> local path or ``None`` (``weights`` in ``configs/eval.yaml``); ``qalign_python``:
            the interpreter that runs Q-Align in its own environment (:class:`~d4s.eval.extractors.qalign.QAlignProcess`).
        device: where the network runs (the small aesthetic head runs wherever its input is).
    Raises:
        ValueError for an unknown name or a wrong weights file; ``MissingWeights`` when the path is absent from
        ``paths``, ``None`` or not on disk; ``ImportError`` for MASt3R without its package.
    """
    if name not in EXTRACTOR_NAMES:
        raise ValueError(f"name: unknown extractor {name!r}; choose one of {', '.join(EXTRACTOR_NAMES)}")
    path = paths.get(name)
    if name == "i3d":
        from d4s.eval.extractors.i3d import I3D

        return I3D.load(path, device=device)
    if name in ("clip_b32", "clip_l14"):
        from d4s.eval.extractors.clip import CLIP

        return CLIP.load(path, name=name, device=device)
    if name == "aesthetic":
        from d4s.eval.extractors.aesthetic import AestheticHead

        return AestheticHead.load(path)
    if name == "dino":
        from d4s.eval.extractors.dino import DINO

        return DINO.load(path, device=device)
    if name == "qalign":
        from d4s.eval.extractors.qalign import QAlign, QAlignProcess

        if paths.get("qalign_python"):  # one-align in its own environment (d4s.eval.extractors.qalign)
            return QAlignProcess(paths["qalign_python"], require_path("qalign", path, folder=True), device)
        return QAlign.load(path, device=device)
    from d4s.eval.extractors.mast3r import Mast3rMatcher

    return Mast3rMatcher.load(path, device=device)


__all__ = ["EXTRACTOR_NAMES", "WEIGHTS", "MissingWeights", "WeightsInfo", "load_extractor"]
