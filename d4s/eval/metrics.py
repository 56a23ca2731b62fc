"""The metrics of the paper's evaluation (Sec. 4, Appendix D, Appendix E): pure maths, no network weights.

Feature-based metrics (FVD, KVD, consistency) take features computed by ``d4s.eval.extractors``; image metrics
take float images in ``[0, 1]``, channels first. Every function states the reference definition it follows
(StyleGAN-V / pytorch-fid for the Fréchet distance, Unterthiner et al. / KID for the kernel distance, VBench
for consistency, Wang et al. 2004 as in scikit-image for SSIM, MASt3R's demo for reciprocal matches, Q-Align
for its rating expectation). Bad input raises ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from d4s.utils.checks import check_choice, check_finite, check_positive_int, check_shape, check_tensor

#: the rating words Q-Align scores, best first; ``qalign_score`` weights them 5, 4, 3, 2, 1
QALIGN_LEVELS = ("excellent", "good", "fair", "poor", "bad")

#: scikit-image's SSIM with ``gaussian_weights=True``: sigma 1.5 truncated at 3.5 sigma, an 11-tap window (Wang 2004)
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = int(3.5 * _SSIM_SIGMA + 0.5)
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _array(value: object, name: str, ndim: int, layout: str) -> np.ndarray:
    """A tensor or numpy array as a finite float64 numpy array with ``ndim`` dimensions (``layout`` names them)."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().double().numpy()
    elif not isinstance(value, np.ndarray):
        got = type(value).__name__
        raise ValueError(f"{name}: expected a torch.Tensor or numpy array, got {got}")  # noqa: TRY004  (as checks.py)
    if value.ndim != ndim:
        raise ValueError(f"{name}: expected shape {layout}, got {list(value.shape)}")
    value = value.astype(np.float64, copy=False)
    if not np.isfinite(value).all():
        raise ValueError(f"{name}: contains non-finite value(s) (NaN or inf)")
    return value


def _features(value: object, name: str) -> np.ndarray:
    """Features ``[N, D]`` with ``N >= 2`` (a covariance or an unbiased within-set mean needs two samples)."""
    value = _array(value, name, 2, "[N, D]")
    if value.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 samples (rows), got {value.shape[0]}")
    return value


def _same_width(a: np.ndarray, b: np.ndarray, name_b: str) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{name_b}: feature dimension {b.shape[-1]} differs from the other set's {a.shape[-1]}")


def frechet_distance(features_a: Tensor | np.ndarray, features_b: Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FVD on I3D features, Appendix D).

    As StyleGAN-V's FVD and pytorch-fid: mean and unbiased covariance (``np.cov``, ``N - 1``) of each set, then
    :func:`frechet_distance_from_stats`.

    Args:
        features_a: ``[N, D]`` features of one set (e.g. real videos), ``N >= 2``.
        features_b: ``[M, D]`` features of the other set, ``M >= 2``; ``M`` may differ from ``N``.
    Returns:
        the squared Fréchet distance (a float, >= 0 up to round-off).
    """
    a = _features(features_a, "features_a")
    b = _features(features_b, "features_b")
    _same_width(a, b, "features_b")
    return frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def _psd_eigenvalues(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with round-off removed: those below ``D * machine eps * max`` set to 0.

    A singular covariance's zero eigenvalues come out of ``eigh`` as +-1e-16 relative noise; their square roots
    (1e-8 relative each) would otherwise add up to a visible bias in the trace term.
    """
    cutoff = eigenvalues.shape[0] * np.finfo(np.float64).eps * max(eigenvalues.max(initial=0.0), 0.0)
    return np.where(eigenvalues > cutoff, eigenvalues, 0.0)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh(sigma)
    return (eigenvectors * np.sqrt(_psd_eigenvalues(eigenvalues))) @ eigenvectors.T


def frechet_distance_from_stats(
    mu_a: Tensor | np.ndarray,
    sigma_a: Tensor | np.ndarray,
    mu_b: Tensor | np.ndarray,
    sigma_b: Tensor | np.ndarray,
    eps: float = 0.0,
) -> float:
    """``||mu_a - mu_b||^2 + tr(sigma_a + sigma_b - 2 (sigma_a sigma_b)^(1/2))`` (Fréchet / 2-Wasserstein distance).

    The trace of ``(sigma_a sigma_b)^(1/2)`` is computed in the symmetric form ``sum_i sqrt(lambda_i)`` over the
    eigenvalues of ``sigma_a^(1/2) sigma_b sigma_a^(1/2)`` (the same non-zero eigenvalues as ``sigma_a sigma_b``),
    with ``eigh`` in float64 and eigenvalues at round-off level set to 0. Unlike ``scipy.linalg.sqrtm`` of the
    non-symmetric product (pytorch-fid, StyleGAN-V; their ``disp=`` argument is gone from SciPy) it stays real and
    finite for singular covariances (fewer samples than feature dimensions), so the reference code's retry with
    ``eps * I`` added to both covariances is not needed; ``eps > 0`` applies that offset anyway (1e-6 there).

    Args:
        mu_a, mu_b: ``[D]`` means.
        sigma_a, sigma_b: ``[D, D]`` symmetric covariances.
        eps: ridge added to both covariances' diagonals (0: the exact distance).
    Returns:
        the squared Fréchet distance as a float.
    """
    if eps < 0:
        raise ValueError(f"eps: must be >= 0, got {eps}")
    mus, sigmas = [], []
    for mu_name, mu, sigma_name, sigma in (("mu_a", mu_a, "sigma_a", sigma_a), ("mu_b", mu_b, "sigma_b", sigma_b)):
        mu = _array(mu, mu_name, 1, "[D]")
        sigma = _array(sigma, sigma_name, 2, "[D, D]")
        if sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{sigma_name}: expected shape [{mu.shape[0]}, {mu.shape[0]}], got {list(sigma.shape)}")
        asymmetry = np.abs(sigma - sigma.T).max()
        if asymmetry > 1e-5 * max(np.abs(sigma).max(), 1e-12):
            raise ValueError(f"{sigma_name}: not symmetric (max |S - S^T| = {asymmetry:.3g}); expected a covariance")
        mus.append(mu)
        sigmas.append(0.5 * (sigma + sigma.T) + eps * np.eye(sigma.shape[0]))
    if mus[0].shape != mus[1].shape:
        raise ValueError(f"mu_b: dimension {mus[1].shape[0]} differs from mu_a's {mus[0].shape[0]}")
    root_a = _psd_sqrt(sigmas[0])
    inner = root_a @ sigmas[1] @ root_a
    eigenvalues = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    trace_sqrt = np.sqrt(_psd_eigenvalues(eigenvalues)).sum()
    diff = mus[0] - mus[1]
    return float(diff @ diff + np.trace(sigmas[0]) + np.trace(sigmas[1]) - 2.0 * trace_sqrt)


def kernel_distance(
    features_a: Tensor | np.ndarray,
    features_b: Tensor | np.ndarray,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
) -> float:
    """Unbiased squared MMD with a polynomial kernel: KVD on I3D features (Unterthiner et al. 2018, Appendix D).

    ``k(x, y) = (gamma x.y + coef)^degree`` (default ``(x.y / D + 1)^3``, as KID/KVD); with ``Kaa [N, N]``,
    ``Kbb [M, M]``, ``Kab [N, M]``:
    ``sum_{i != j} Kaa / (N (N-1)) + sum_{i != j} Kbb / (M (M-1)) - 2 mean(Kab)`` (the diagonals are left out,
    so the estimate can be negative). Computed once on the full sets, no subset averaging.

    Args:
        features_a: ``[N, D]``, ``N >= 2``.
        features_b: ``[M, D]``, ``M >= 2``.
        degree, gamma, coef: kernel parameters; ``gamma=None`` means ``1 / D``.
    Returns:
        the unbiased MMD^2 estimate as a float.
    """
    a = _features(features_a, "features_a")
    b = _features(features_b, "features_b")
    _same_width(a, b, "features_b")
    degree = check_positive_int(degree, "degree")
    gamma = 1.0 / a.shape[1] if gamma is None else float(gamma)
    if not gamma > 0:
        raise ValueError(f"gamma: must be positive, got {gamma}")

    def kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (gamma * (x @ y.T) + coef) ** degree

    k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
    n, m = a.shape[0], b.shape[0]
    within_a = (k_aa.sum() - np.trace(k_aa)) / (n * (n - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within_a + within_b - 2.0 * k_ab.mean())


def frame_consistency(features: Tensor | np.ndarray) -> float:
    """VBench subject / background consistency of one video (Appendix D; DINO or CLIP features per frame).

    Features are L2-normalised; ``s_t = (max(0, cos(f_{t-1}, f_t)) + max(0, cos(f_0, f_t))) / 2`` for ``t >= 1``;
    the result is the mean of ``s_t`` (1 for a constant video; VBench reports it in percent).

    Args:
        features: ``[T, D]`` per-frame features, ``T >= 2``.
    """
    f = _features(features, "features")
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("features: a frame's feature vector is all zeros (cosine undefined)")
    f = f / norms
    to_previous = np.clip((f[1:] * f[:-1]).sum(1), 0.0, None)
    to_first = np.clip(f[1:] @ f[0], 0.0, None)
    return float(((to_previous + to_first) / 2.0).mean())


def _image_pair(prediction: object, target: object) -> tuple[Tensor, Tensor]:
    """Validate ``[..., 3, H, W]`` image pairs of one shape; return them as float64 ``[B, 3, H, W]``."""
    check_shape(prediction, "prediction", (3, None, None), batched=True)
    check_shape(target, "target", (3, None, None), batched=True)
    if prediction.shape != target.shape:
        raise ValueError(f"target: shape {list(target.shape)} differs from prediction's {list(prediction.shape)}")
    check_finite(prediction, "prediction")
    check_finite(target, "target")
    height, width = prediction.shape[-2:]
    return (
        prediction.detach().double().reshape(-1, 3, height, width),
        target.detach().double().reshape(-1, 3, height, width),
    )


def _check_data_range(data_range: float) -> float:
    if not data_range > 0:
        raise ValueError(f"data_range: must be positive, got {data_range}")
    return float(data_range)


def psnr(prediction: Tensor, target: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB, per image, averaged over images.

    As ``skimage.metrics.peak_signal_noise_ratio`` on each image (MSE over channels and pixels). Identical images
    give ``inf`` (and so does the mean over a batch that holds one).

    Args:
        prediction, target: ``[..., 3, H, W]`` images of the same shape, values in ``[0, data_range]``.
    """
    data_range = _check_data_range(data_range)
    pred, tgt = _image_pair(prediction, target)
    mse = (pred - tgt).square().mean(dim=(1, 2, 3))
    return float((10.0 * torch.log10(data_range**2 / mse)).mean())


def latent_psnr(prediction: Tensor, target: Tensor, data_range: float) -> list[float]:
    """PSNR ``10 log10(data_range^2 / MSE)`` in dB of each latent frame (MSE over its channels and cells).

    The generator's output measured apart from the reconstruction model: sampled video latents against the real
    video's. As ``skimage.metrics.peak_signal_noise_ratio`` per frame.

    Args:
        prediction, target: ``[T', C, h, w]`` latents of the same shape.
        data_range: the latents' value range (the space-to-depth codec's ``value_range``, or the target's spread).
    Returns:
        ``T'`` values (``inf`` for identical frames).
    """
    data_range = _check_data_range(data_range)
    check_shape(prediction, "prediction", (None, None, None, None))
    if target.shape != prediction.shape:
        raise ValueError(f"target: shape {list(target.shape)} differs from prediction's {list(prediction.shape)}")
    check_finite(prediction, "prediction")
    check_finite(target, "target")
    mse = (prediction.detach().double() - target.detach().double()).square().flatten(1).mean(1)
    return (10.0 * torch.log10(data_range**2 / mse)).tolist()


def still_latent_psnr(target: Tensor, data_range: float) -> list[float]:
    """:func:`latent_psnr` of a still copy: frame 0 of ``target [T', C, h, w]`` held at every time, against
    ``target``. What a generator that predicts no change scores (``inf`` at frame 0)."""
    return latent_psnr(target[:1].expand_as(target), target, data_range)


def _gaussian_valid_filter(images: Tensor) -> Tensor:
    """Separable Gaussian filter (sigma 1.5, 11 taps) of ``[B, 1, H, W]`` without padding: ``[B, 1, H-10, W-10]``."""
    offsets = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=images.dtype)
    taps = torch.exp(-0.5 * (offsets / _SSIM_SIGMA) ** 2)
    taps = taps / taps.sum()
    out = F.conv2d(images, taps.view(1, 1, -1, 1))
    return F.conv2d(out, taps.view(1, 1, 1, -1))


def ssim(prediction: Tensor, target: Tensor, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004), per image, averaged over images.

    Matches ``skimage.metrics.structural_similarity(..., channel_axis=0, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range)``: Gaussian-weighted local statistics (11-tap window,
    sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03``, population covariances; the SSIM map is averaged over each channel
    without the 5-pixel border strip (where scikit-image's filter would see its padding), then over channels.

    Args:
        prediction, target: ``[..., 3, H, W]`` images of the same shape, ``H, W >= 11``, values in
            ``[0, data_range]``.
    """
    data_range = _check_data_range(data_range)
    pred, tgt = _image_pair(prediction, target)
    window = 2 * _SSIM_RADIUS + 1
    if min(pred.shape[-2:]) < window:
        raise ValueError(f"prediction: images must be at least {window}x{window} for SSIM, got {list(pred.shape[-2:])}")
    x = pred.reshape(-1, 1, *pred.shape[-2:])
    y = tgt.reshape(-1, 1, *tgt.shape[-2:])
    mu_x, mu_y = _gaussian_valid_filter(x), _gaussian_valid_filter(y)
    var_x = _gaussian_valid_filter(x * x) - mu_x**2
    var_y = _gaussian_valid_filter(y * y) - mu_y**2
    cov_xy = _gaussian_valid_filter(x * y) - mu_x * mu_y
    c1, c2 = (_SSIM_K1 * data_range) ** 2, (_SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.reshape(pred.shape[0], -1).mean(1).mean())


def _median(values: Tensor) -> Tensor:
    """Median of a 1-D tensor, averaging the two middle values for an even count (as ``np.median``)."""
    ordered = values.sort().values
    n = ordered.numel()
    return 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])


DepthAlignment = Literal["median", "lstsq", "none"]


def depth_metrics(
    prediction: Tensor, target: Tensor, valid: Tensor | None = None, alignment: DepthAlignment = "median"
) -> dict[str, float]:
    """Depth AbsRel and delta < 1.25 after aligning each predicted map to its target.

    Per map, over its valid pixels (``valid`` and ``target > 0``; depth 0 marks invalid):
    ``"median"`` scales the prediction by ``median(target) / median(prediction)``; ``"lstsq"`` fits scale and
    shift ``s d + b`` by least squares; ``"none"`` keeps it. Then ``abs_rel = mean(|d - d*| / d*)`` and
    ``delta1 = mean(max(d / d*, d* / d) < 1.25)`` (a non-positive aligned depth counts as a miss); both are
    averaged over maps (the common per-image protocol of MiDaS-style evaluations).

    Args:
        prediction: ``[..., H, W]`` predicted depth (or any affine-related quantity for ``"lstsq"``).
        target: ``[..., H, W]`` reference z-depth in metres, 0 = invalid.
        valid: optional ``[..., H, W]`` boolean mask of pixels to evaluate.
        alignment: ``"median"``, ``"lstsq"`` or ``"none"``.
    Returns:
        ``{"abs_rel": float, "delta1": float}``.
    """
    check_shape(prediction, "prediction", (None, None), batched=True)
    check_shape(target, "target", (None, None), batched=True)
    if prediction.shape != target.shape:
        raise ValueError(f"target: shape {list(target.shape)} differs from prediction's {list(prediction.shape)}")
    check_choice(alignment, "alignment", DepthAlignment)
    pred = prediction.detach().double().reshape(-1, prediction.shape[-2] * prediction.shape[-1])
    tgt = target.detach().double().reshape(pred.shape)
    mask = torch.isfinite(tgt) & (tgt > 0)
    if valid is not None:
        check_tensor(valid, "valid")
        if valid.shape != prediction.shape or valid.dtype != torch.bool:
            got = f"{valid.dtype} {list(valid.shape)}"
            raise ValueError(f"valid: expected a bool mask of shape {list(prediction.shape)}, got {got}")
        mask &= valid.reshape(pred.shape)
    abs_rel, delta1 = [], []
    for index, (d, d_star, m) in enumerate(zip(pred, tgt, mask)):
        d, d_star = d[m], d_star[m]
        if d_star.numel() == 0:
            raise ValueError(f"target: depth map {index} has no valid pixel (target > 0 inside valid)")
        check_finite(d, "prediction")
        if alignment == "median":
            median = _median(d)
            if not median > 0:
                raise ValueError(f"prediction: median over the valid pixels of map {index} is not positive")
            d = d * (_median(d_star) / median)
        elif alignment == "lstsq":
            d_centred = d - d.mean()
            variance = d_centred.square().sum()
            scale = (d_centred * (d_star - d_star.mean())).sum() / variance if variance > 0 else d.new_zeros(())
            d = scale * d + (d_star.mean() - scale * d.mean())
        abs_rel.append(((d - d_star).abs() / d_star).mean())
        ratio = torch.where(d > 0, torch.maximum(d / d_star, d_star / d.clamp_min(1e-300)), math.inf)
        delta1.append((ratio < 1.25).double().mean())
    return {"abs_rel": float(torch.stack(abs_rel).mean()), "delta1": float(torch.stack(delta1).mean())}


def depth_correlation(prediction: Tensor, target: Tensor, min_pixels: int = 16) -> float:
    """Pearson correlation between predicted and reference depth, per map, averaged over maps (the quantity Eq. 4
    trains, ``1 - L_geo``; invariant to scale and shift, so it needs no alignment).

    Args:
        prediction: ``[..., H, W]`` predicted depth; target: ``[..., H, W]`` reference depth, 0 = invalid.
        min_pixels: maps with fewer valid pixels, or a reference without variance, are left out.
    Returns the mean correlation in ``[-1, 1]``; raises ``ValueError`` when no map can be scored.
    """
    from d4s.losses import pearson_depth_loss

    check_shape(prediction, "prediction", (None, None), batched=True)
    if target.shape != prediction.shape:
        raise ValueError(f"target: shape {list(target.shape)} differs from prediction's {list(prediction.shape)}")
    check_finite(prediction, "prediction")
    target = target.detach().double()
    valid = torch.isfinite(target) & (target > 0)
    loss, scored = pearson_depth_loss(prediction.detach().double(), target.nan_to_num(0.0), valid, min_pixels)
    if not scored.any():
        raise ValueError(f"target: no depth map has {min_pixels} valid pixels with some variance")
    return float((1.0 - loss[scored]).mean())


def motion_agreement(predicted: Tensor, true: Tensor, min_displacement: float) -> dict[str, float] | None:
    """How well predicted 3D displacements follow the true ones, over the pairs that really move.

    Args:
        predicted, true: ``[P, 3]`` displacements in metres (e.g. of tracked points between two times).
        min_displacement: pairs whose true displacement is shorter are static and left out (no direction).
    Returns ``None`` when no pair moves, else ``{"cosine": mean cos(pred, true)`` (0 for a zero prediction),
    ``"epe": mean ||pred - true||``, ``"predicted": mean ||pred||``, ``"true": mean ||true||``, ``"pairs": count}``.
    """
    check_shape(predicted, "predicted", (None, 3))
    check_shape(true, "true", (predicted.shape[0], 3))
    if not min_displacement > 0:
        raise ValueError(f"min_displacement: must be a positive length, got {min_displacement}")
    pred, ref = predicted.detach().double(), true.detach().double()
    check_finite(pred, "predicted")
    check_finite(ref, "true")
    moving = ref.norm(dim=-1) >= min_displacement
    if not moving.any():
        return None
    pred, ref = pred[moving], ref[moving]
    pred_norm, ref_norm = pred.norm(dim=-1), ref.norm(dim=-1)
    cosine = (pred * ref).sum(-1) / (pred_norm * ref_norm).clamp_min(1e-12)
    return {
        "cosine": float(cosine.mean()),
        "epe": float((pred - ref).norm(dim=-1).mean()),
        "predicted": float(pred_norm.mean()),
        "true": float(ref_norm.mean()),
        "pairs": int(moving.sum()),
    }


def cycle_psnr(video: Tensor, data_range: float = 1.0) -> float:
    """Cycle consistency of a closed 360-degree orbit: PSNR between its first and last frame (Appendix E, 34.5 dB).

    The trajectory must include the closing frame (the last pose equals the first). Identical frames give
    ``inf``, as :func:`psnr` (no cap: a cap would hide how close a render is to perfect).

    Args:
        video: ``[T, 3, H, W]`` frames in ``[0, data_range]``, ``T >= 2``.
    """
    check_shape(video, "video", (None, 3, None, None))
    if video.shape[0] < 2:
        raise ValueError(f"video: need at least 2 frames, got {video.shape[0]}")
    return psnr(video[-1], video[0], data_range=data_range)


def _nearest_neighbours(queries: Tensor, keys: Tensor, block_size: int) -> Tensor:
    """Index ``[N]`` of the key with the largest dot product for each query (first index on ties), in blocks."""
    return torch.cat([(block @ keys.T).argmax(dim=1) for block in queries.split(block_size)])


def _inside(keypoints: Tensor, size: tuple[int, int], border: int) -> Tensor:
    height, width = size
    x, y = keypoints[:, 0], keypoints[:, 1]
    return (x >= border) & (x < width - border) & (y >= border) & (y < height - border)


def count_reciprocal_matches(
    descriptors_a: Tensor,
    descriptors_b: Tensor,
    keypoints_a: Tensor,
    keypoints_b: Tensor,
    size_a: tuple[int, int],
    size_b: tuple[int, int],
    border: int = 3,
    block_size: int = 4096,
) -> int:
    """Number of reciprocal nearest-neighbour descriptor matches away from the image borders (Avg. Matches).

    As MASt3R's demo (``fast_reciprocal_NNs`` with ``dist='dot'``, then the 3-pixel border filter): ``a_i`` and
    ``b_j`` match when ``b_j`` has the largest dot product with ``a_i`` among all of ``b`` and ``a_i`` the largest
    with ``b_j`` among all of ``a``. Matching uses every descriptor given (subsample before calling, e.g. every
    8th pixel as MASt3R); a match then counts only if both keypoints lie at least ``border`` pixels inside their
    image: ``border <= x < W - border`` and ``border <= y < H - border``.

    Args:
        descriptors_a: ``[N, D]`` (MASt3R descriptors are L2-normalised, so the dot product is the cosine).
        descriptors_b: ``[M, D]``.
        keypoints_a: ``[N, 2]`` pixel coordinates ``(x, y)`` = (column, row) of each descriptor in image a.
        keypoints_b: ``[M, 2]`` the same for image b.
        size_a, size_b: ``(H, W)`` of each image.
        border: margin in pixels.
        block_size: rows of the similarity matrix computed at once (memory only, not the result).
    """
    check_shape(descriptors_a, "descriptors_a", (None, None))
    check_shape(keypoints_a, "keypoints_a", (descriptors_a.shape[0], 2))
    check_shape(keypoints_b, "keypoints_b", (descriptors_b.shape[0], 2))
    check_shape(descriptors_b, "descriptors_b", (None, descriptors_a.shape[1]))
    for name, value in (("descriptors_a", descriptors_a), ("descriptors_b", descriptors_b)):
        check_finite(value, name)
    for name, size in (("size_a", size_a), ("size_b", size_b)):
        if len(size) != 2 or any(isinstance(s, bool) or int(s) != s or s <= 0 for s in size):
            raise ValueError(f"{name}: expected (H, W) positive integers, got {size!r}")
    if isinstance(border, bool) or not isinstance(border, int) or border < 0:
        raise ValueError(f"border: expected a non-negative integer, got {border!r}")
    block_size = check_positive_int(block_size, "block_size")
    if descriptors_a.shape[0] == 0 or descriptors_b.shape[0] == 0:
        return 0
    a = descriptors_a.detach().float()
    b = descriptors_b.detach().to(a)
    a_to_b = _nearest_neighbours(a, b, block_size)  # [N]
    b_to_a = _nearest_neighbours(b, a, block_size)  # [M]
    reciprocal = b_to_a[a_to_b] == torch.arange(a.shape[0], device=a.device)
    kept = reciprocal & _inside(keypoints_a, size_a, border) & _inside(keypoints_b[a_to_b], size_b, border)
    return int(kept.sum())


def qalign_score(logits: Tensor) -> Tensor:
    """Q-Align quality score (Wu et al. 2023; QA-Quality, Appendix D) from the rating-token logits.

    ``softmax(logits) @ [5, 4, 3, 2, 1]`` over the tokens of :data:`QALIGN_LEVELS` (excellent ... bad), so a score
    lies in ``[1, 5]`` and uniform logits give 3.

    Args:
        logits: ``[..., 5]`` logits of the five rating words, in the order of ``QALIGN_LEVELS``.
    Returns:
        ``[...]`` scores (float32, or float64 for float64 logits).
    """
    check_shape(logits, "logits", (len(QALIGN_LEVELS),), batched=True)
    check_finite(logits, "logits")
    x = logits if logits.dtype == torch.float64 else logits.float()
    weights = torch.arange(len(QALIGN_LEVELS), 0, -1, dtype=x.dtype, device=x.device)
    return x.softmax(dim=-1) @ weights
