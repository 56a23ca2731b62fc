"""The Euler sampler and the cosine guidance schedule of Appendix C.1 (Eq. 6)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from d4s.diffusion.sampler import Guidance, euler_sample, time_grid


@pytest.mark.parametrize(("num_steps", "shift"), [(1, 1.0), (3, 1.0), (30, 1.0), (30, 3.0)])
def test_euler_integrates_the_straight_flow_to_its_data_point_exactly(num_steps, shift):
    """The flow of a single data point z0 has velocity (z - z0) / t, linear in z: Euler steps follow it exactly."""
    z0 = torch.randn(2, 3, 4, dtype=torch.float64)
    noise = torch.randn(2, 3, 4, dtype=torch.float64)

    def velocity(z, t, conditional):
        return (z - z0) / t.reshape(-1, 1, 1)

    result = euler_sample(velocity, noise, num_steps=num_steps, shift=shift)
    torch.testing.assert_close(result, z0, atol=1e-12, rtol=0)


def test_guidance_schedule_matches_eq6():
    guidance = Guidance(max_scale=7.5)
    N = 30
    assert guidance.scale(0, N) == pytest.approx(8.5)  # 1 + gamma_max at the first, noisiest step
    expected = 1 + 7.5 * (1 - math.cos(math.pi * ((N - 15) / N) ** 5)) / 2  # Eq. 6 at t = 15, by hand
    assert (
        guidance.scale(15, N) == pytest.approx(expected) == pytest.approx(1.0 + 7.5 * (1 - math.cos(math.pi / 32)) / 2)
    )
    assert guidance.scale(29, N) == pytest.approx(1.0, abs=1e-6)
    scales = [guidance.scale(i, N) for i in range(N)]
    assert all(a >= b for a, b in itertools.pairwise(scales))  # fades over sampling
    increasing = Guidance(max_scale=7.5, direction="increasing")
    assert [increasing.scale(i, N) for i in range(N)] == scales[::-1]
    assert Guidance(max_scale=2.0, schedule="constant").scale(7, N) == 3.0


def test_guided_steps_mix_the_two_velocities_with_the_schedule():
    v_cond, v_uncond = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.5]])
    calls = []

    def velocity(z, t, conditional):
        calls.append(conditional)
        return v_cond if conditional else v_uncond

    guidance, N = Guidance(max_scale=7.5, skip_below=0.0), 6
    result = euler_sample(velocity, torch.zeros(1, 2), num_steps=N, guidance=guidance)
    times = time_grid(N)
    expected = torch.zeros(1, 2)
    for i in range(N):
        scale = guidance.scale(i, N)
        expected = expected + float(times[i + 1] - times[i]) * (v_uncond + scale * (v_cond - v_uncond))
    torch.testing.assert_close(result, expected)
    assert calls.count(False) == N


def test_a_velocity_pair_replaces_the_two_calls_on_guided_steps_only():
    def velocity(z, t, conditional):
        return (1.0 if conditional else -0.5) * z + t[:, None]

    pairs = []

    def velocity_pair(z, t):
        pairs.append(t[0].item())
        return velocity(z, t, True), velocity(z, t, False)

    noise, guidance, N = torch.tensor([[1.0, -2.0]], dtype=torch.float64), Guidance(max_scale=7.5), 30
    expected = euler_sample(velocity, noise, num_steps=N, guidance=guidance)
    result = euler_sample(velocity, noise, num_steps=N, guidance=guidance, velocity_pair=velocity_pair)
    assert torch.equal(result, expected)
    assert len(pairs) == sum(guidance.guided(i, N) for i in range(N)) == 19  # the others need one velocity only


def test_steps_whose_scale_has_decayed_to_one_skip_the_unconditional_pass():
    v_cond, v_uncond = torch.tensor([[1.0, -2.0]], dtype=torch.float64), torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    calls = []

    def velocity(z, t, conditional):
        calls.append(conditional)
        return v_cond if conditional else v_uncond

    N = 30
    full = euler_sample(
        velocity, torch.zeros(1, 2, dtype=torch.float64), num_steps=N, guidance=Guidance(max_scale=7.5, skip_below=0.0)
    )
    calls.clear()
    skipping = euler_sample(
        velocity, torch.zeros(1, 2, dtype=torch.float64), num_steps=N, guidance=Guidance(max_scale=7.5)
    )
    excess = [7.5 * (1 - math.cos(math.pi * ((N - i) / N) ** 5)) / 2 for i in range(N)]  # Eq. 6: gamma - 1
    assert calls.count(False) == sum(e >= 1e-3 for e in excess) == 19  # 11 of the 30 unconditional passes saved
    times = time_grid(N).double()
    bound = sum(float(times[i] - times[i + 1]) * e for i, e in enumerate(excess) if e < 1e-3)
    difference = (full - skipping).abs().max()
    assert 0 < difference <= bound * (v_cond - v_uncond).abs().max() + 1e-12  # what the skipped terms add, at most


def test_scale_one_skips_the_unconditional_pass():
    calls = []

    def velocity(z, t, conditional):
        calls.append(conditional)
        return torch.zeros_like(z)

    euler_sample(velocity, torch.zeros(1, 2), num_steps=5, guidance=Guidance(max_scale=0.0))
    euler_sample(velocity, torch.zeros(1, 2), num_steps=5, guidance=None)
    assert calls == [True] * 10


def test_time_grid_and_bad_settings():
    grid = time_grid(4)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and len(grid) == 5
    with pytest.raises(ValueError, match="num_steps"):
        time_grid(0)
    with pytest.raises(ValueError, match="direction"):
        Guidance(direction="up")
