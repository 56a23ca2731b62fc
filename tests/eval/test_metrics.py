"""Evaluation metrics (Appendix D) against independent references: scipy, scikit-learn, scikit-image and hand maths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics.pairwise import polynomial_kernel

from d4s.eval.metrics import (
    QALIGN_LEVELS,
    count_reciprocal_matches,
    cycle_psnr,
    depth_correlation,
    depth_metrics,
    frame_consistency,
    frechet_distance,
    frechet_distance_from_stats,
    kernel_distance,
    latent_psnr,
    motion_agreement,
    psnr,
    qalign_score,
    ssim,
    still_latent_psnr,
)


def correlated_features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / math.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing + shift + rng.normal(size=d)


# Fréchet distance (FVD): StyleGAN-V / pytorch-fid maths, with scipy.linalg.sqrtm as the oracle


def test_frechet_matches_a_direct_sqrtm_computation():
    a, b = correlated_features(300, 8, seed=0), correlated_features(250, 8, seed=1, shift=0.5)
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b).real
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a + sigma_b - 2 * covmean)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(
        expected, rel=1e-5
    )
    assert frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(expected, rel=1e-9)


def test_frechet_of_diagonal_gaussians_has_the_closed_form():
    rng = np.random.default_rng(2)
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    s_a, s_b = rng.uniform(0.1, 3.0, size=6), rng.uniform(0.1, 3.0, size=6)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum(s_a + s_b - 2 * np.sqrt(s_a * s_b))
    got = frechet_distance_from_stats(torch.from_numpy(mu_a), torch.from_numpy(np.diag(s_a)), mu_b, np.diag(s_b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_is_stable_for_singular_covariances():
    # fewer samples than dimensions (160 videos, 400-d I3D features in the paper): rank-deficient covariances
    a, b = correlated_features(12, 40, seed=3), correlated_features(15, 40, seed=4)
    assert abs(frechet_distance(a, a)) < 1e-9 * np.trace(np.cov(a, rowvar=False))
    distance = frechet_distance(a, b)
    assert math.isfinite(distance) and distance > 0
    # the reference code's fallback: an eps offset on both covariances, then sqrtm; agrees to the offset's order
    mu_a, mu_b = a.mean(0), b.mean(0)
    offset = 1e-6 * np.eye(40)
    sigma_a, sigma_b = np.cov(a, rowvar=False) + offset, np.cov(b, rowvar=False) + offset
    covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b).real
    reference = np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a + sigma_b - 2 * covmean)
    assert distance == pytest.approx(reference, rel=1e-4)
    assert frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(reference, rel=1e-6)


def test_frechet_rejects_bad_input():
    a = correlated_features(10, 4, seed=5)
    with pytest.raises(ValueError, match="features_a"):
        frechet_distance(a[:1], a)
    with pytest.raises(ValueError, match="features_b"):
        frechet_distance(a, a[:, :3])
    with pytest.raises(ValueError, match="features_b"):
        frechet_distance(a, a[0])
    with pytest.raises(ValueError, match="features_a"):
        frechet_distance(np.where(np.eye(10, 4) > 0, np.nan, a), a)
    with pytest.raises(ValueError, match="sigma_a"):
        frechet_distance_from_stats(np.zeros(4), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="sigma_b"):
        frechet_distance_from_stats(np.zeros(4), np.eye(4), np.zeros(4), np.triu(np.ones((4, 4))))
    with pytest.raises(ValueError, match="mu_b"):
        frechet_distance_from_stats(np.zeros(4), np.eye(4), np.zeros(3), np.eye(3))


# Kernel distance (KVD): unbiased polynomial MMD^2, scikit-learn's kernel as the oracle


def unbiased_mmd(k_aa: np.ndarray, k_bb: np.ndarray, k_ab: np.ndarray) -> float:
    n, m = len(k_aa), len(k_bb)
    return (
        (k_aa.sum() - np.trace(k_aa)) / (n * (n - 1)) + (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1)) - 2 * k_ab.mean()
    )


@pytest.mark.parametrize("degree, gamma, coef", [(3, None, 1.0), (2, 0.3, 0.5)])
def test_kernel_distance_matches_sklearn_polynomial_kernel(degree, gamma, coef):
    a, b = correlated_features(40, 12, seed=6), correlated_features(55, 12, seed=7, shift=0.3)
    kernel = {"degree": degree, "gamma": gamma, "coef0": coef}  # sklearn: gamma None means 1 / n_features
    expected = unbiased_mmd(
        polynomial_kernel(a, **kernel), polynomial_kernel(b, **kernel), polynomial_kernel(a, b, **kernel)
    )
    got = kernel_distance(torch.from_numpy(a), b, degree=degree, gamma=gamma, coef=coef)
    assert got == pytest.approx(expected, rel=1e-10)


def test_kernel_distance_rejects_bad_input():
    a = correlated_features(10, 4, seed=8)
    with pytest.raises(ValueError, match="features_b"):
        kernel_distance(a, a[:1])
    with pytest.raises(ValueError, match="features_b"):
        kernel_distance(a, a[:, :2])
    with pytest.raises(ValueError, match="degree"):
        kernel_distance(a, a, degree=0)


# VBench subject / background consistency


def test_frame_consistency_on_hand_computed_examples():
    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    assert frame_consistency(torch.tensor([[0.3, -2.0, 1.0]]).repeat(5, 1)) == pytest.approx(1.0)
    # s_1 = (cos(e2, e1) + cos(e2, e1)) / 2 = 0, s_2 = (cos(e1, e2) + cos(e1, e1)) / 2 = 1/2
    assert frame_consistency(torch.stack([e1, e2, e1])) == pytest.approx(0.25)
    # scale does not matter (features are L2-normalised): cos = 1/sqrt(2) to both the previous and the first frame
    assert frame_consistency(torch.stack([e1, 3.0 * (e1 + e2)])) == pytest.approx(1 / math.sqrt(2))
    # negative cosines clamp to 0: s_2 = (max(0, -1/sqrt 2) + max(0, -1)) / 2 = 0, not negative
    assert frame_consistency(torch.stack([e1, e1 + e2, -e1])) == pytest.approx(1 / (2 * math.sqrt(2)))
    assert frame_consistency(torch.stack([e1, -e1])) == 0.0


def test_frame_consistency_rejects_bad_input():
    with pytest.raises(ValueError, match="features"):
        frame_consistency(torch.ones(1, 4))
    with pytest.raises(ValueError, match="features"):
        frame_consistency(torch.ones(4))
    with pytest.raises(ValueError, match="features"):
        frame_consistency(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


# PSNR / SSIM: scikit-image as the oracle


def image_pairs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 3, 24, 30, generator=generator, dtype=torch.float64)
    target = torch.nn.functional.avg_pool2d(target, 3, stride=1, padding=1)  # some structure for SSIM to see
    prediction = (target + 0.08 * torch.randn(target.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    return prediction, target


def test_psnr_matches_skimage_and_a_known_value():
    prediction, target = image_pairs()
    expected = np.mean(
        [peak_signal_noise_ratio(t.numpy(), p.numpy(), data_range=1.0) for p, t in zip(prediction, target)]
    )
    assert psnr(prediction, target) == pytest.approx(expected, rel=1e-12)
    assert psnr(prediction.float(), target.float()) == pytest.approx(expected, rel=1e-5)
    assert psnr(torch.full((3, 4, 4), 0.1), torch.zeros(3, 4, 4)) == pytest.approx(20.0)  # MSE 0.01
    assert psnr(target, target) == math.inf


def test_latent_psnr_is_skimage_psnr_per_frame():
    generator = torch.Generator().manual_seed(3)
    target = torch.randn(4, 6, 5, 5, generator=generator, dtype=torch.float64)
    prediction = target + 0.3 * torch.arange(1, 5, dtype=torch.float64)[:, None, None, None] * torch.randn(
        4, 6, 5, 5, generator=generator, dtype=torch.float64
    )
    expected = [peak_signal_noise_ratio(t.numpy(), p.numpy(), data_range=4.0) for p, t in zip(prediction, target)]
    assert latent_psnr(prediction, target, data_range=4.0) == pytest.approx(expected, rel=1e-12)
    assert expected == sorted(expected, reverse=True)  # the noise grows frame by frame
    assert latent_psnr(torch.full((1, 2, 3, 3), 0.2), torch.zeros(1, 2, 3, 3), 2.0) == pytest.approx([20.0])
    with pytest.raises(ValueError, match="target"):
        latent_psnr(prediction, target[:3], data_range=4.0)


def test_still_latent_psnr_is_skimage_psnr_of_frame_0_against_each_frame():
    target = torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = [peak_signal_noise_ratio(t.numpy(), target[0].numpy(), data_range=4.0) for t in target[1:]]
    still = still_latent_psnr(target, data_range=4.0)
    assert still[0] == math.inf and still[1:] == pytest.approx(expected, rel=1e-12)


def test_ssim_matches_skimage_gaussian_weights():
    prediction, target = image_pairs(1)
    options = {"channel_axis": 0, "gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
    options["data_range"] = 1.0
    expected = np.mean([structural_similarity(p.numpy(), t.numpy(), **options) for p, t in zip(prediction, target)])
    assert ssim(prediction, target) == pytest.approx(expected, rel=1e-10)
    assert ssim(prediction[None].float(), target[None].float()) == pytest.approx(expected, rel=1e-5)
    assert ssim(target, target) == pytest.approx(1.0)


def test_image_metrics_reject_bad_input():
    prediction, target = image_pairs()
    with pytest.raises(ValueError, match="target"):
        psnr(prediction, target[:1])
    with pytest.raises(ValueError, match="prediction"):
        psnr(prediction[:, :2], target[:, :2])
    with pytest.raises(ValueError, match="prediction"):
        ssim(prediction[..., :10, :], target[..., :10, :])
    with pytest.raises(ValueError, match="data_range"):
        ssim(prediction, target, data_range=0)


# Depth AbsRel and delta < 1.25


def test_depth_metrics_are_perfect_for_aligned_copies():
    generator = torch.Generator().manual_seed(3)
    target = 0.5 + 4 * torch.rand(2, 8, 9, generator=generator, dtype=torch.float64)
    perfect = {"abs_rel": pytest.approx(0.0, abs=1e-12), "delta1": 1.0}
    assert depth_metrics((target - 0.3) / 2.5, target, alignment="lstsq") == perfect  # scale and shift
    assert depth_metrics(0.2 * target, target, alignment="median") == perfect  # scale only
    assert depth_metrics(0.2 * target, target, alignment="none")["delta1"] == 0.0
    assert depth_metrics(target - 0.3, target, alignment="median")["abs_rel"] > 0.01  # a shift is not a scale


def test_depth_metrics_known_values():
    target = torch.tensor([[1.0, 2.0], [4.0, 8.0]])
    # none: |d - d*| / d* = 0, 0, 0, 1/2; ratios 1, 1, 1, 2
    assert depth_metrics(torch.tensor([[1.0, 2.0], [4.0, 4.0]]), target, alignment="none") == {
        "abs_rel": pytest.approx(0.125),
        "delta1": 0.75,
    }
    # median (np.median: mean of the two middle values): scale 3 / 4 -> 0.75, 1.5, 4.5, 4.5
    result = depth_metrics(torch.tensor([[1.0, 2.0], [6.0, 6.0]]), target, alignment="median")
    assert result == {"abs_rel": pytest.approx((0.25 + 0.25 + 0.125 + 3.5 / 8) / 4), "delta1": 0.25}
    # a negative depth is a miss for delta1 (its ratio is not below 1.25)
    assert depth_metrics(torch.tensor([[-1.0, 2.0]]), torch.tensor([[1.0, 2.0]]), alignment="none") == {
        "abs_rel": pytest.approx(1.0),
        "delta1": 0.5,
    }


def test_depth_metrics_use_only_valid_pixels_and_average_over_maps():
    target = torch.tensor([[[1.0, 2.0, 0.0, 4.0]], [[1.0, 2.0, 4.0, 8.0]]])  # [2, 1, 4]; 0 = invalid
    prediction = torch.tensor([[[1.0, 2.0, 99.0, -7.0]], [[1.0, 2.0, 4.0, 4.0]]])
    valid = torch.tensor([[[True, True, True, False]], [[True, True, True, True]]])
    result = depth_metrics(prediction, target, valid=valid, alignment="none")
    # map 0: pixels 0, 1 only (abs_rel 0, delta1 1); map 1: abs_rel 1/8, delta1 3/4
    assert result == {"abs_rel": pytest.approx(0.0625), "delta1": pytest.approx(0.875)}


def test_depth_metrics_reject_bad_input():
    target = torch.ones(2, 4, 4)
    with pytest.raises(ValueError, match="alignment"):
        depth_metrics(target, target, alignment="mean")
    with pytest.raises(ValueError, match="target"):
        depth_metrics(target, target[0])
    with pytest.raises(ValueError, match="valid"):
        depth_metrics(target, target, valid=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="target"):
        depth_metrics(target, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="prediction"):
        depth_metrics(torch.full((2, 4, 4), math.nan), target)


# Cycle PSNR (Appendix E)


def test_cycle_psnr_compares_first_and_last_frame_only():
    generator = torch.Generator().manual_seed(4)
    video = 0.9 * torch.rand(5, 3, 6, 7, generator=generator)
    video[-1] = video[0]
    assert cycle_psnr(video) == math.inf  # no cap: identical frames are infinitely close
    video[-1] = video[0] + 0.1  # MSE 0.01 -> 20 dB, whatever the middle frames hold
    assert cycle_psnr(video) == pytest.approx(20.0, rel=1e-5)
    with pytest.raises(ValueError, match="video"):
        cycle_psnr(video[:1])
    with pytest.raises(ValueError, match="video"):
        cycle_psnr(video[0])


# Reciprocal nearest-neighbour matches (MASt3R's Avg. Matches)


def test_reciprocal_matches_on_constructed_descriptors():
    e = torch.eye(4)
    descriptors_a = torch.stack([e[0], e[1], 0.9 * e[2] + 0.1 * e[3], e[2]])
    descriptors_b = torch.stack([e[0], e[1], e[2], e[3]])
    # a0-b0 and a1-b1 reciprocal; a2 -> b2 but b2 -> a3 (one way); a3-b2 reciprocal; b3 -> a2 but a2 -> b2
    keypoints_a = torch.tensor([[10.0, 10.0], [1.0, 10.0], [10.0, 12.0], [15.0, 16.0]])  # a1 lies 1 px from the left
    keypoints_b = torch.tensor([[20.0, 10.0], [12.0, 12.0], [7.0, 7.0], [5.0, 5.0]])
    args = (descriptors_a, descriptors_b, keypoints_a, keypoints_b, (30, 40), (30, 40))
    assert count_reciprocal_matches(*args, border=0) == 3
    assert count_reciprocal_matches(*args) == 2  # a1-b1 dropped: a1 is inside the 3 px border
    assert count_reciprocal_matches(*args, block_size=1) == 2
    # border on image b's side: x = W - 3 and y = H - 3 are out, x = W - 4 is in
    for xy, expected in (([37.0, 10.0], 1), ([20.0, 27.0], 1), ([36.0, 26.0], 2)):
        moved = keypoints_b.clone()
        moved[0] = torch.tensor(xy)
        assert (
            count_reciprocal_matches(descriptors_a, descriptors_b, keypoints_a, moved, (30, 40), (30, 40)) == expected
        )


def test_reciprocal_matches_agree_with_a_brute_force_count():
    generator = torch.Generator().manual_seed(5)
    descriptors_a = torch.nn.functional.normalize(torch.randn(60, 8, generator=generator), dim=1)
    descriptors_b = torch.nn.functional.normalize(torch.randn(45, 8, generator=generator), dim=1)
    keypoints_a = torch.randint(0, 20, (60, 2), generator=generator).float()
    keypoints_b = torch.randint(0, 20, (45, 2), generator=generator).float()
    similarity = (descriptors_a @ descriptors_b.T).numpy()
    expected = 0
    for i in range(60):
        j = int(np.argmax(similarity[i]))
        inside = all(3 <= c < 17 for c in (*keypoints_a[i].tolist(), *keypoints_b[j].tolist()))
        expected += int(np.argmax(similarity[:, j]) == i and inside)
    got = count_reciprocal_matches(descriptors_a, descriptors_b, keypoints_a, keypoints_b, (20, 20), (20, 20))
    assert got == expected > 0


def test_reciprocal_matches_reject_bad_input():
    d, k = torch.randn(5, 4), torch.zeros(5, 2)
    with pytest.raises(ValueError, match="descriptors_b"):
        count_reciprocal_matches(d, d[:, :3], k, k, (8, 8), (8, 8))
    with pytest.raises(ValueError, match="keypoints_a"):
        count_reciprocal_matches(d, d, k[:4], k, (8, 8), (8, 8))
    with pytest.raises(ValueError, match="size_b"):
        count_reciprocal_matches(d, d, k, k, (8, 8), (8,))
    with pytest.raises(ValueError, match="border"):
        count_reciprocal_matches(d, d, k, k, (8, 8), (8, 8), border=-1)


# Q-Align rating expectation


def test_qalign_score_is_the_expected_rating():
    assert QALIGN_LEVELS == ("excellent", "good", "fair", "poor", "bad")
    torch.testing.assert_close(qalign_score(torch.zeros(2, 3, 5)), torch.full((2, 3), 3.0))
    torch.testing.assert_close(qalign_score(torch.tensor([50.0, 0.0, 0.0, 0.0, 0.0])), torch.tensor(5.0))
    torch.testing.assert_close(qalign_score(torch.tensor([0.0, 0.0, 0.0, 0.0, 50.0])), torch.tensor(1.0))
    # probabilities 1/2 on "good" and 1/2 on "poor" -> (4 + 2) / 2
    logits = torch.tensor([-1e4, 0.0, -1e4, 0.0, -1e4], dtype=torch.float64)
    torch.testing.assert_close(qalign_score(logits), torch.tensor(3.0, dtype=torch.float64))
    assert qalign_score(torch.zeros(5, dtype=torch.float16)).dtype == torch.float32
    with pytest.raises(ValueError, match="logits"):
        qalign_score(torch.zeros(2, 4))


def test_depth_correlation_matches_scipy_per_map_and_ignores_invalid_pixels():
    rng = np.random.default_rng(3)
    target = torch.from_numpy(rng.uniform(1.0, 5.0, (3, 12, 10)))
    prediction = 2.0 * target + torch.from_numpy(rng.normal(0.0, 0.6, (3, 12, 10)))
    target[0, :4] = 0.0  # invalid reference pixels: whatever the prediction holds there does not count
    prediction[0, :4] = 1e3
    expected = [
        scipy.stats.pearsonr(prediction[i][target[i] > 0].numpy(), target[i][target[i] > 0].numpy())[0]
        for i in range(3)
    ]
    assert depth_correlation(prediction, target) == pytest.approx(np.mean(expected), abs=1e-5)
    assert depth_correlation(3.0 * target + 1.0, target) == pytest.approx(1.0, abs=1e-6)  # affine invariance


def test_depth_correlation_rejects_unscorable_input():
    with pytest.raises(ValueError, match="no depth map"):
        depth_correlation(torch.rand(2, 8, 8), torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="no depth map"):
        depth_correlation(torch.rand(1, 8, 8), torch.full((1, 8, 8), 2.0))  # a flat reference has no correlation
    with pytest.raises(ValueError, match="target"):
        depth_correlation(torch.rand(1, 8, 8), torch.rand(1, 8, 9))


def test_motion_agreement_on_hand_computed_pairs():
    true = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.001, 0.0, 0.0]])  # the last pair is static
    predicted = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    result = motion_agreement(predicted, true, min_displacement=0.01)
    assert result["pairs"] == 2
    assert result["cosine"] == pytest.approx((1 / math.sqrt(2) + 0.0) / 2)  # a zero prediction has cosine 0
    assert result["epe"] == pytest.approx((1.0 + 2.0) / 2)
    assert result["predicted"] == pytest.approx((math.sqrt(2) + 0.0) / 2)
    assert result["true"] == pytest.approx(1.5)
    assert motion_agreement(-true, true, 0.01)["cosine"] == pytest.approx(-1.0)
    assert motion_agreement(predicted, torch.zeros(3, 3), 0.01) is None  # nothing moves


def test_motion_agreement_rejects_bad_input():
    with pytest.raises(ValueError, match="true"):
        motion_agreement(torch.zeros(3, 3), torch.zeros(2, 3), 0.01)
    with pytest.raises(ValueError, match="min_displacement"):
        motion_agreement(torch.zeros(3, 3), torch.ones(3, 3), 0.0)
    with pytest.raises(ValueError, match="predicted"):
        motion_agreement(torch.full((3, 3), float("nan")), torch.ones(3, 3), 0.01)
