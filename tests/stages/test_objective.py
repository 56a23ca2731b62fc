"""The training objective as a pure function (no Lightning, no model): which weights a stage may use, and the loss
terms against a loop-by-loop numpy computation of Eq. 3-5."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from d4s.stages import DynamicFinetune, HiResRefine, StaticPretrain, VideoPretrain
from d4s.stages.objective import (
    DEFAULT_WEIGHTS,
    LossWeights,
    RenderedViews,
    StageConfig,
    TrackedMotion,
    reconstruction_terms,
    total_loss,
    usable_terms,
)

RENDERING = ("mse", "lpips", "depth_pearson", "depth_tv")
MOTION = ("motion", "motion_magnitude")


@pytest.mark.parametrize("preset", [VideoPretrain, StaticPretrain, HiResRefine, DynamicFinetune])
@pytest.mark.parametrize("dit_trains", [True, False])
def test_unset_weights_are_the_defaults_where_the_stage_can_use_them_and_zero_elsewhere(preset, dit_trains):
    stage = preset.default_stage
    weights = LossWeights().resolved(usable_terms(stage, dit_trains), preset.__name__)
    expected_usable = {"flow_matching"} if dit_trains else set()
    if preset is not VideoPretrain:  # stages 1-3 render (Sec. 3.4)
        expected_usable |= set(RENDERING)
    if preset is DynamicFinetune:  # only stage 3 trains the deformation head, so only it has a motion loss
        expected_usable |= set(MOTION)
    for name, default in DEFAULT_WEIGHTS.items():
        assert getattr(weights, name) == (default if name in expected_usable else 0.0), name


@pytest.mark.parametrize(
    ("stage", "dit_trains", "name"),
    [
        (StaticPretrain.default_stage, True, "motion"),  # configs/stage1.yaml used to set it, silently unused
        (HiResRefine.default_stage, True, "motion_magnitude"),
        (VideoPretrain.default_stage, True, "mse"),
        (VideoPretrain.default_stage, True, "lpips"),
        (DynamicFinetune.default_stage, False, "flow_matching"),
    ],
)
def test_a_weight_the_stage_cannot_use_is_an_error(stage, dit_trains, name):
    with pytest.raises(ValueError, match=rf"^losses\.{name}: Stage cannot use this term"):
        LossWeights(**{name: 1.0}).resolved(usable_terms(stage, dit_trains), "Stage")
    zero = LossWeights(**{name: 0.0}).resolved(usable_terms(stage, dit_trains), "Stage")
    assert getattr(zero, name) == 0.0  # an explicit 0 is what the stage does anyway


def test_negative_weights_and_a_deforming_stage_that_does_not_reconstruct_are_errors():
    with pytest.raises(ValueError, match=r"^losses\.depth_tv: expected a weight >= 0"):
        LossWeights(depth_tv=-0.1).resolved(usable_terms(StageConfig(), True), "Stage")
    with pytest.raises(ValueError, match=r"^stage\.deformation"):
        StageConfig(reconstruct=False, deformation=True)


def reference_terms(views, weights, clip_weight, has_depth, has_tracks, motion, perceptual):
    """Eq. 3-5 clip by clip and view by view in numpy float64."""
    rgb, rgb_gt, depth, depth_gt = (
        np.asarray(x, dtype=np.float64) for x in (views.rgb, views.rgb_gt, views.depth, views.depth_gt)
    )
    B, V = rgb.shape[:2]

    def weighted(values, w):
        return float(np.sum(np.asarray(w) * np.asarray(values)) / max(1.0, float(np.sum(w))))

    mse = [[np.mean((rgb[b, v] - rgb_gt[b, v]) ** 2) for v in range(V)] for b in range(B)]
    terms = {"mse": weighted([np.mean(m) for m in mse], clip_weight)}
    terms["lpips"] = weighted([np.mean(perceptual(rgb[b], rgb_gt[b])) for b in range(B)], clip_weight)
    pearson, depth_weight = [], []
    for b in range(B):
        losses = []
        for v in range(V):
            valid = depth_gt[b, v] > 0
            if valid.sum() >= 16 and depth_gt[b, v][valid].std() > 0:
                losses.append(1.0 - np.corrcoef(depth[b, v][valid], depth_gt[b, v][valid])[0, 1])
        pearson.append(np.mean(losses) if losses else 0.0)
        depth_weight.append(clip_weight[b] * float(bool(has_depth[b]) and bool(losses)))
    terms["depth_pearson"] = weighted(pearson, depth_weight)
    tv = [
        np.mean(
            [
                np.abs(np.diff(depth[b, v], axis=1)).mean() + np.abs(np.diff(depth[b, v], axis=0)).mean()
                for v in range(V)
            ]
        )
        for b in range(B)
    ]
    terms["depth_tv"] = weighted(tv, clip_weight)
    predicted, true, supervised = (
        np.asarray(x, dtype=np.float64) for x in (motion.predicted, motion.true, motion.supervised)
    )
    errors, magnitudes, motion_weight = [], [], []
    for b in range(B):
        pairs = supervised[b].astype(bool)
        errors.append(np.linalg.norm(predicted[b][pairs] - true[b][pairs], axis=-1).mean() if pairs.any() else 0.0)
        magnitudes.append(np.abs(predicted[b][pairs]).sum(-1).mean() if pairs.any() else 0.0)
        motion_weight.append(clip_weight[b] * float(bool(has_tracks[b]) and pairs.any()))
    terms["motion"] = weighted(errors, motion_weight)
    terms["motion_magnitude"] = weighted(magnitudes, motion_weight)
    terms["psnr"] = weighted([np.mean([-10 * np.log10(m) for m in row]) for row in mse], clip_weight)
    return terms


def test_reconstruction_terms_and_the_total_match_a_loop_by_loop_computation():
    generator = torch.Generator().manual_seed(0)
    B, V, H, W, P = 3, 2, 8, 10, 5
    rgb, rgb_gt = torch.rand(2, B, V, 3, H, W, generator=generator, dtype=torch.float64)
    depth = 1.0 + torch.rand(B, V, H, W, generator=generator, dtype=torch.float64)
    depth_gt = depth * 2.0 + 0.3 * torch.rand(B, V, H, W, generator=generator, dtype=torch.float64)
    depth_gt[0, 1, :, :6] = 0.0  # some unknown depth
    depth_gt[1, 0] = 0.0  # a view without any: not supervised
    views = RenderedViews(rgb, rgb_gt, depth, depth_gt)
    clip_weight = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    has_depth, has_tracks = torch.tensor([True, True, False]), torch.tensor([True, False, True])
    motion = TrackedMotion(
        torch.randn(B, V, P, 3, generator=generator, dtype=torch.float64),
        torch.randn(B, V, P, 3, generator=generator, dtype=torch.float64),
        torch.rand(B, V, P, generator=generator) > 0.3,
    )

    def perceptual(x, y):  # any per-view distance [..., 3, H, W] -> [...]: an L1 stand-in for LPIPS
        return abs(x - y).reshape(*x.shape[:-3], -1).mean(-1)

    weights = LossWeights(depth_tv=0.3).resolved(usable_terms(StageConfig(), dit_trains=True), "Stage")
    terms = reconstruction_terms(views, weights, clip_weight, has_depth, has_tracks, motion, perceptual)
    expected = reference_terms(views, weights, clip_weight.numpy(), has_depth, has_tracks, motion, perceptual)
    assert set(terms) == set(expected)  # motion_l2 only when the motion error is not Eq. 5's norm
    for name, value in expected.items():
        assert float(terms[name]) == pytest.approx(value, rel=1e-5, abs=1e-9), name  # the losses compute in float32
    total = sum(getattr(weights, name) * expected[name] for name in expected if name != "psnr")
    assert float(total_loss(terms, weights)) == pytest.approx(total, rel=1e-5)

    silent = LossWeights(lpips=0.0, depth_pearson=0.0, depth_tv=0.0, motion=0.0, motion_magnitude=0.0)
    few = reconstruction_terms(
        views,
        silent.resolved(usable_terms(StageConfig(), True), "Stage"),
        clip_weight,
        has_depth,
        has_tracks,
        motion,
        perceptual,
    )
    assert set(few) == {"mse", "psnr"}  # a weight of 0 skips its term
