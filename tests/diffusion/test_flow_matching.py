"""Flow matching (Eq. 2): the path, the target, timestep sampling and the loss against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from d4s.diffusion.flow_matching import FlowMatching, shift_times


def test_path_runs_from_data_to_noise_with_constant_velocity():
    z0, noise = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    fm = FlowMatching()
    torch.testing.assert_close(fm.interpolate(z0, noise, torch.zeros(3)), z0)
    torch.testing.assert_close(fm.interpolate(z0, noise, torch.ones(3)), noise)
    t, dt = torch.tensor([0.2, 0.5, 0.7]), 1e-3
    finite_difference = (fm.interpolate(z0, noise, t + dt) - fm.interpolate(z0, noise, t)) / dt
    torch.testing.assert_close(finite_difference, fm.target(z0, noise), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("weighting", ["none", "cosmap"])
def test_loss_equals_a_hand_computation(weighting):
    rng = np.random.default_rng(0)
    z0, noise, prediction = (rng.standard_normal((4, 2, 3, 3)) for _ in range(3))
    t = np.array([0.1, 0.4, 0.6, 0.95])
    sample_weight = np.array([1.0, 0.0, 1.0, 1.0])
    w = np.ones(4) if weighting == "none" else 2 / (math.pi * (1 - 2 * t + 2 * t**2))
    per_sample = [w[i] * np.mean((prediction[i] - (noise[i] - z0[i])) ** 2) for i in range(4)]
    fm = FlowMatching(weighting=weighting)
    as_tensors = [torch.from_numpy(a) for a in (prediction, z0, noise, t)]
    assert fm.loss(*as_tensors).item() == pytest.approx(np.mean(per_sample), rel=1e-6)
    weighted = fm.loss(*as_tensors, sample_weight=torch.from_numpy(sample_weight)).item()
    assert weighted == pytest.approx(np.dot(sample_weight, per_sample) / 3, rel=1e-6)
    assert fm.loss(*as_tensors, sample_weight=torch.zeros(4)).item() == 0.0  # an all-padding batch


def test_timestep_sampling_distributions():
    generator = torch.Generator().manual_seed(0)
    uniform = FlowMatching(timestep_sampling="uniform").sample_times(20000, generator)
    assert 0 < uniform.min() and uniform.max() < 1 and abs(uniform.mean() - 0.5) < 0.01
    logit = FlowMatching(logit_mean=0.5, logit_std=0.8).sample_times(20000, generator)
    logits = torch.log(logit / (1 - logit))
    assert abs(logits.mean() - 0.5) < 0.02 and abs(logits.std() - 0.8) < 0.02
    shifted = FlowMatching(timestep_sampling="uniform", shift=3.0).sample_times(20000, generator)
    assert shifted.median() > 0.7  # shift 3 moves the median 0.5 to 0.75


def test_shift():
    t = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(shift_times(t, 3.0), torch.tensor([0.0, 0.75, 1.0]))
    torch.testing.assert_close(shift_times(t, 1.0), t)


def test_stored_settings_with_the_old_timestep_scale_still_load():
    """Older checkpoints store ``num_train_timesteps: 1000`` in ``recipe.flow_matching``; the scale now belongs to
    the video DiT, so 1000 is dropped and anything else refused in one line."""
    assert FlowMatching.from_dict({"shift": 3.0, "num_train_timesteps": 1000}) == FlowMatching(shift=3.0)
    assert FlowMatching.from_dict({"weighting": "cosmap"}) == FlowMatching(weighting="cosmap")
    with pytest.raises(ValueError, match=r"^flow_matching.num_train_timesteps: only 1000 .*got 500$"):
        FlowMatching.from_dict({"num_train_timesteps": 500})


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="timestep_sampling"):
        FlowMatching(timestep_sampling="cosine")
    with pytest.raises(ValueError, match="weighting"):
        FlowMatching(weighting="snr")
