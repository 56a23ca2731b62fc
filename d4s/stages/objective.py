"""The training objective: which loss terms a stage may use, their weights, and the loss itself as a pure function of
the rendered views, the ground truth and the weights (no Lightning, no model): paper Eq. 2-5, Sec. 3.4.

A stage is configuration (:class:`StageConfig`): whether the LDRM reconstructs the clip and whether the deformation
head trains. Which weights it may then use follows (:func:`usable_terms`); a weight left unset (``None``) takes the
paper's value where the stage can use it and 0 where it cannot, and a non-zero weight the stage cannot use is an
error rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from d4s.losses import depth_total_variation, motion_loss, mse, pearson_depth_loss, weighted_mean


@dataclass(frozen=True)
class StageConfig:
    """What a stage trains (Sec. 3.4). ``reconstruct``: the LDRM reconstructs and renders the clip (``False``: the
    video DiT alone on the flow-matching loss, stage 0). ``deformation``: the deformation head trains (stage 3);
    ``False`` keeps it at its identity initialisation (stages 1-2: static scenes). ``expects_init``: the stage
    continues from the previous stage's weights, so a missing ``init_from`` is warned about."""

    reconstruct: bool = True
    deformation: bool = True
    expects_init: bool = False

    def __post_init__(self) -> None:
        if self.deformation and not self.reconstruct:
            raise ValueError(
                "stage.deformation: a stage that does not reconstruct (reconstruct: false) cannot train it"
            )


#: The weights used where a stage can use a term and the config leaves it unset. ``lpips`` = lambda_p = 0.5 and
#: ``motion`` = lambda_m = 2 are the paper's (Sec. 4.1, Appendix C.4); ``motion_magnitude`` weighs Eq. 5's second
#: term, which Eq. 5 adds without a coefficient; the others are our choices (1 for the main terms, a small TV weight
#: because it regularises).
DEFAULT_WEIGHTS = {
    "flow_matching": 1.0,
    "mse": 1.0,
    "lpips": 0.5,
    "depth_pearson": 1.0,
    "depth_tv": 0.01,
    "motion": 2.0,
    "motion_magnitude": 1.0,
}


@dataclass
class LossWeights:
    """Weights of the terms of the training loss (``None``: :data:`DEFAULT_WEIGHTS` where the stage can use the term,
    0 where it cannot; a weight of 0 skips its term's computation). ``motion_squared_scale``: ``None`` keeps Eq. 5's
    ``||e||_2``; a length in metres switches the motion error to ``||e||^2 / scale`` (:func:`d4s.losses.motion_loss`),
    which an untrained head learns from faster when most tracks are static (then ``motion_l2`` still logs Eq. 5's
    norm). ``motion_balance_threshold``: ``None`` averages the motion error over all pairs (Eq. 5); a length in
    metres averages moving and static pairs separately and weighs the two halves equally (an option for data where
    few tracks move)."""

    flow_matching: float | None = None
    mse: float | None = None
    lpips: float | None = None
    depth_pearson: float | None = None
    depth_tv: float | None = None
    motion: float | None = None
    motion_magnitude: float | None = None
    motion_squared_scale: float | None = None
    motion_balance_threshold: float | None = None

    def resolved(self, usable: frozenset[str], stage_name: str) -> LossWeights:
        """Every weight set: unset ones from :data:`DEFAULT_WEIGHTS` (or 0 where the term is not ``usable``).

        Raises:
            ValueError: a negative weight, or a non-zero weight on a term that ``stage_name`` cannot use.
        """
        values = {}
        for name, default in DEFAULT_WEIGHTS.items():
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"losses.{name}: expected a weight >= 0, got {value}")
            if value and name not in usable:
                raise ValueError(
                    f"losses.{name}: {stage_name} cannot use this term ({UNUSABLE_WHY[name]}); set it to 0 or leave it "
                    "out"
                )
            values[name] = float(value) if value is not None else (default if name in usable else 0.0)
        return replace(self, **values)


UNUSABLE_WHY = {
    "flow_matching": "recipe.dit is frozen, so the flow-matching loss trains nothing",
    "mse": "stage.reconstruct is false: nothing is rendered",
    "lpips": "stage.reconstruct is false: nothing is rendered",
    "depth_pearson": "stage.reconstruct is false: nothing is rendered",
    "depth_tv": "stage.reconstruct is false: nothing is rendered",
    "motion": "stage.deformation is false: the deformation head is frozen at the identity",
    "motion_magnitude": "stage.deformation is false: the deformation head is frozen at the identity",
}


def usable_terms(stage: StageConfig, dit_trains: bool) -> frozenset[str]:
    """The loss terms a stage can train with: flow matching when the DiT trains, the rendering terms when the stage
    reconstructs, the motion terms when the deformation head trains too."""
    usable = {"flow_matching"} if dit_trains else set()
    if stage.reconstruct:
        usable |= {"mse", "lpips", "depth_pearson", "depth_tv"}
    if stage.deformation:
        usable |= {"motion", "motion_magnitude"}
    return frozenset(usable)


@dataclass
class RenderedViews:
    """The ``V`` target frames of ``B`` clips, rendered and true: ``rgb``, ``rgb_gt [B, V, 3, H, W]`` in [0, 1];
    ``depth``, ``depth_gt [B, V, H, W]`` z-depth in metres (0 where the ground truth has none)."""

    rgb: Tensor
    rgb_gt: Tensor
    depth: Tensor
    depth_gt: Tensor


@dataclass
class TrackedMotion:
    """Eq. 5's inputs from :func:`d4s.losses.track_motion`: ``predicted`` and ``true`` displacements ``[B, P, 3]``
    of sampled track pairs and whether each pair is ``supervised [B, P]``."""

    predicted: Tensor
    true: Tensor
    supervised: Tensor


def reconstruction_terms(
    views: RenderedViews,
    weights: LossWeights,
    clip_weight: Tensor,
    has_depth: Tensor,
    has_tracks: Tensor,
    motion: TrackedMotion | None = None,
    perceptual: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """The rendering and motion loss terms (scalars) of a batch, each a ``clip_weight [B]``-weighted mean over clips.

    ``mse`` and ``lpips`` (Eq. 3; ``perceptual(rgb, rgb_gt) -> [B, V]``, skipped when ``None`` or weighted 0),
    ``depth_pearson`` (Eq. 4, clips with ``has_depth [B]`` and supervised pixels only) and ``depth_tv``, ``motion``
    and ``motion_magnitude`` (Eq. 5, clips with ``has_tracks [B]`` and supervised pairs only; ``motion`` given).
    Also, without gradient: ``psnr`` and, where the motion error is not Eq. 5's norm, ``motion_l2``. ``weights`` must
    be resolved (:meth:`LossWeights.resolved`); a weight of 0 skips its term.
    """
    terms = {"mse": weighted_mean(mse(views.rgb, views.rgb_gt).mean(1), clip_weight)}
    if perceptual is not None and weights.lpips:
        terms["lpips"] = weighted_mean(perceptual(views.rgb, views.rgb_gt).mean(1), clip_weight)
    if weights.depth_pearson:
        pearson, supervised = pearson_depth_loss(views.depth, views.depth_gt, views.depth_gt > 0)
        per_clip = (pearson * supervised).sum(1) / supervised.sum(1).clamp_min(1)
        depth_weight = clip_weight * (has_depth & supervised.any(1)).to(clip_weight.dtype)
        terms["depth_pearson"] = weighted_mean(per_clip, depth_weight)
    if weights.depth_tv:
        terms["depth_tv"] = weighted_mean(depth_total_variation(views.depth).mean(1), clip_weight)
    motion_weight = None
    if motion is not None and (weights.motion or weights.motion_magnitude):
        error, magnitude, count = motion_loss(
            motion.predicted,
            motion.true,
            motion.supervised,
            weights.motion_squared_scale,
            weights.motion_balance_threshold,
        )
        motion_weight = clip_weight * (has_tracks & (count > 0)).to(clip_weight.dtype)
        terms["motion"] = weighted_mean(error, motion_weight)
        terms["motion_magnitude"] = weighted_mean(magnitude, motion_weight)
    with torch.no_grad():
        if motion_weight is not None and (weights.motion_squared_scale, weights.motion_balance_threshold) != (
            None,
            None,
        ):
            plain = motion_loss(motion.predicted, motion.true, motion.supervised)[0]
            terms["motion_l2"] = weighted_mean(plain, motion_weight)
        psnr = -10.0 * torch.log10(mse(views.rgb, views.rgb_gt).clamp_min(1e-10))
        terms["psnr"] = weighted_mean(psnr.mean(1), clip_weight)
    return terms


def total_loss(terms: dict[str, Tensor], weights: LossWeights) -> Tensor:
    """``sum_k weight_k * term_k`` over the weighted terms present in ``terms`` (the logged extras such as ``psnr``
    carry no weight)."""
    return sum(getattr(weights, name) * terms[name] for name in DEFAULT_WEIGHTS if name in terms)


__all__ = [
    "DEFAULT_WEIGHTS",
    "LossWeights",
    "RenderedViews",
    "StageConfig",
    "TrackedMotion",
    "reconstruction_terms",
    "total_loss",
    "usable_terms",
]
