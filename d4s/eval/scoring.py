"""Scoring: the weight-free metrics of one sample and the weight-needing (feature) metrics of a run, from the
maths of :mod:`d4s.eval.metrics`. Adding a metric touches this module and :mod:`d4s.eval.report`."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from d4s.data.schema import GENERIC_PROMPT
from d4s.eval.config import (
    ORBIT,
    PAPER_TRAJECTORIES,
    RANDOM_CONSISTENCY,
    REAL_CAMERA_SAMPLES,
    EvalConfig,
    WeightsConfig,
)
from d4s.eval.extractors.i3d import PROTOCOL_VERSION as I3D_PROTOCOL
from d4s.eval.samples import Sample, digest, file_identity
from d4s.eval.scenes import Scene
from d4s.utils.fileio import atomic_output, reusable_record, write_json

log = logging.getLogger(__name__)

#: weight-needing metrics (report order) and the extractors (d4s.eval.extractors names) each needs
FEATURE_METRICS: dict[str, tuple[str, ...]] = {
    "fvd": ("i3d",),
    "kvd": ("i3d",),
    "clip_score": ("clip_b32",),
    "clip_aesthetic": ("clip_l14", "aesthetic"),
    "qalign": ("qalign",),
    "mast3r_matches": ("mast3r",),
    "subject_consistency": ("dino",),
    "background_consistency": ("clip_b32",),
}


# ----------------------------------------------------------------------------------------- weight-free metrics
def _video(rgb: Tensor) -> Tensor:
    """``[F, H, W, 3]`` render -> ``[F, 3, H, W]``."""
    return rgb.permute(0, 3, 1, 2).contiguous()


def weight_free_metrics(
    sample: Sample, scene: Scene, rgb: Tensor, depth: Tensor, c2w: Tensor, K: Tensor, config: EvalConfig, lpips=None
) -> tuple[dict[str, float], dict[str, Any], dict[str, str]]:
    """The metrics of one render that need no downloaded weights.

    Args:
        rgb: ``[T, H, W, 3]`` in [0, 1]; depth: ``[T, H, W]`` metres; c2w, K: the generation cameras.
    Returns ``(metrics, curves, failures)``: scalars; per-pair RPE curves; metric -> reason where a metric could not
    be computed for this sample (e.g. too few features to estimate the poses).
    """
    from d4s.eval import metrics as m
    from d4s.eval.extractors.camera import estimate_poses
    from d4s.eval.poses import relative_pose_error

    values: dict[str, float] = {}
    curves: dict[str, Any] = {}
    failures: dict[str, str] = {}
    video = _video(rgb)
    if sample.trajectory in PAPER_TRAJECTORIES:
        frames = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
        estimate, stats = estimate_poses(frames, K[0], depth=depth, return_stats=True)  # metric: the render's depth
        estimate = torch.as_tensor(estimate).double()
        values["pose_unregistered"] = len(stats.failed_frames) / max(len(frames) - 1, 1)
        try:
            if len(stats.failed_frames) >= len(frames) - 1:  # an RPE of no estimate would only measure the reference
                raise ValueError(
                    f"no frame after the first could be registered ({len(frames)} frames, too few matches)"
                )
            rpe = relative_pose_error(estimate, c2w.double(), config.metrics.rpe_delta, config.metrics.rpe_align)
        except ValueError as error:
            failures["rpe"] = " ".join(str(error).split())
        else:
            values.update(
                rpe_trans=rpe["trans_mean"],  # means, as the paper's "Avg. RPE"; the RMSEs beside them
                rpe_trans_rmse=rpe["trans_rmse"],
                rpe_rot_deg=rpe["rot_mean_deg"],
                rpe_rot_rmse_deg=rpe["rot_rmse_deg"],
            )
            curves["rpe_trans"] = torch.as_tensor(rpe["per_pair_trans"]).tolist()
            curves["rpe_rot_deg"] = torch.as_tensor(rpe["per_pair_rot_deg"]).tolist()
    elif sample.trajectory == ORBIT:
        values["cycle_psnr"] = m.cycle_psnr(video)
    elif sample.trajectory in REAL_CAMERA_SAMPLES:
        real = scene.video.float() / 255.0
        values["psnr"] = m.psnr(video[1:], real[1:])
        values["psnr_t0"] = m.psnr(video[:1], real[:1])  # the input view at its own time
        values["ssim"] = m.ssim(video[1:], real[1:])
        if lpips is not None:
            device = next(lpips.parameters()).device
            with torch.no_grad():
                values["lpips"] = float(lpips(video[1:].to(device), real[1:].to(device)).mean())
        if scene.depth is not None:
            valid = (scene.depth > 0) & (depth > 0)  # pixels a render leaves empty have no depth to compare
            values["depth_coverage"] = float(valid.sum() / (scene.depth > 0).sum().clamp_min(1))  # their share
            if valid.any():
                try:
                    depth_values = m.depth_metrics(depth, scene.depth, valid, config.metrics.depth_alignment)
                    values.update(depth_abs_rel=depth_values["abs_rel"], depth_delta1=depth_values["delta1"])
                except ValueError as error:
                    failures["depth"] = str(error)
                try:
                    values["depth_corr"] = m.depth_correlation(depth, torch.where(valid, scene.depth, 0.0))
                except ValueError as error:
                    failures["depth_corr"] = str(error)
            else:
                failures["depth"] = "no pixel has both a valid real depth and a rendered one"
    return values, curves, failures


def generator_metrics(pipeline, latents: Tensor, scene: Scene, seed: int) -> dict[str, float]:
    """The generator apart from the LDRM: its sampled latents ``[T', C, h, w]`` against the real video's, per latent
    frame ``k``: ``latent_psnr_<k>``, and for ``k >= 1`` the still copy's ``still_latent_psnr_<k>`` (frame 0's real
    latents held at every time: what a generator that predicts no change scores). PSNR peak: the codec's value range
    (space to depth) or the real latents' spread (:func:`d4s.eval.metrics.latent_psnr`)."""
    from d4s.eval import metrics as m

    real = pipeline.encode_video(scene.video.float() / 255.0, seed)[0].cpu()
    data_range = pipeline.latent_range or float(real.max() - real.min())
    generated = m.latent_psnr(latents.float().cpu(), real, data_range)
    still = m.still_latent_psnr(real, data_range)
    values = {f"latent_psnr_{k}": value for k, value in enumerate(generated)}
    values.update({f"still_latent_psnr_{k}": value for k, value in enumerate(still) if k > 0})
    return values


def motion_metrics(field, grid: tuple[int, int, int], scene: Scene, min_displacement: float) -> dict[str, float]:
    """The generated deformation against the scene's 3D tracks (module docstring): ``motion_cosine``, ``motion_epe``,
    ``motion_predicted`` and ``motion_true`` (metres), ``motion_pairs``; empty when no tracked pair moves.

    Args:
        field: the generation's :class:`~d4s.gaussians.field.DeformableGaussianField`, ``T * h * w`` pixel-aligned
            Gaussians ordered (frame, row, column), deformed to each of the ``T`` frame times.
        grid: ``(T, h, w)``. scene: a clip with ``track_xyz``, ``track_visible`` and its real cameras.
    """
    from d4s.eval import metrics as m
    from d4s.losses import track_motion

    T, h, w = grid
    if scene.track_xyz is None or field.num_frames != T:
        return {}
    N = scene.track_xyz.shape[0]
    generator = torch.Generator().manual_seed(0)  # each track's source frame: the same on every run
    predicted, true, paired = track_motion(
        field.dmu[None].float().cpu(),
        (h, w),
        scene.track_xyz[None].float(),
        scene.track_visible[None],
        torch.ones(1, N, dtype=torch.bool),
        scene.c2w[None].float(),
        scene.K_video[None].float(),
        tuple(scene.video.shape[-2:]),
        torch.arange(T)[None],
        generator,
    )
    agreement = m.motion_agreement(predicted[paired], true[paired], min_displacement)
    return {} if agreement is None else {f"motion_{key}": float(value) for key, value in agreement.items()}


# ---------------------------------------------------------------------------------------- weight-needing metrics
def _load_video(path: Path) -> Tensor:
    from d4s.utils.video import read_video

    return torch.from_numpy(read_video(path)).permute(0, 3, 1, 2).float() / 255.0


class _Extractors:
    """Feature networks loaded once each from the configured paths (on the CPU, as the extractors load); a failed
    load is remembered and raised again."""

    def __init__(self, weights: WeightsConfig, device: torch.device):
        self.paths, self.device = weights.paths(), device
        self.loaded: dict[str, Any] = {}

    def get(self, name: str):
        """The extractor, or raises the ``MissingWeights`` / ``ImportError`` its loader raised."""
        if name not in self.loaded:
            from d4s.eval.extractors import load_extractor

            try:
                self.loaded[name] = load_extractor(name, self.paths, device=self.device)
            except Exception as error:  # noqa: BLE001  (remembered, raised again, then reported as the metric's skip)
                self.loaded[name] = error
        value = self.loaded[name]
        if isinstance(value, Exception):
            raise value
        return value


def _per_sample_value(
    metric: str, extractors: _Extractors, video: Tensor, scene: Scene, views: int, clip_scale: float
) -> float:
    """One sample's value of a per-sample feature metric (``video [T, 3, H, W]`` in [0, 1])."""
    from d4s.eval import metrics as m

    with torch.no_grad():
        if metric == "clip_score":
            from d4s.eval.extractors.clip import clip_score

            clip = extractors.get("clip_b32")
            image = clip.image_features(video)
            text = clip.text_features([scene.caption or GENERIC_PROMPT])  # what the generation used
            return float(clip_score(image, text.expand(image.shape[0], -1), scale=clip_scale).mean())
        if metric == "clip_aesthetic":
            clip, head = extractors.get("clip_l14"), extractors.get("aesthetic")
            return float(head.score(clip.image_features(video)).mean())
        if metric == "qalign":
            qalign = extractors.get("qalign")
            return float(qalign.score(video).mean())
        if metric == "subject_consistency":
            dino = extractors.get("dino")
            return 100.0 * m.frame_consistency(dino.features(video))
        if metric == "background_consistency":
            clip = extractors.get("clip_b32")
            return 100.0 * m.frame_consistency(clip.image_features(video))
        if metric == "mast3r_matches":
            matcher = extractors.get("mast3r")
            picks = torch.linspace(1, video.shape[0] - 1, min(views, video.shape[0] - 1)).round().long().unique()
            return float(np.mean([matcher.count_matches(scene.image, video[i]) for i in picks.tolist()]))
    raise ValueError(f"metric: unknown per-sample feature metric {metric!r}")


def _random_network() -> torch.nn.Module:
    """A ResNet-18 with seeded random weights (no classifier): exercises the consistency code path without
    downloaded weights; its numbers are NOT comparable to the paper's DINO/CLIP ones. The global RNG is left as is."""
    from torchvision.models import resnet18

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = resnet18(weights=None).eval()
    network.fc = torch.nn.Identity()
    return network


def _random_consistency(network: torch.nn.Module, video: Tensor) -> float:
    """VBench frame consistency (x100) of ``video [T, 3, H, W]`` on :func:`_random_network` features at 112 px."""
    from d4s.eval import metrics as m

    with torch.no_grad():
        frames = torch.nn.functional.interpolate(video, size=(112, 112), mode="bilinear", align_corners=False)
        return 100.0 * m.frame_consistency(network(frames))


def _i3d_features(extractors: _Extractors, path: Path, video: Callable[[], Tensor], content: str) -> np.ndarray:
    """Cached I3D features ``[400]`` of one video (``path``: the cache file). The cache holds beside it (``.json``)
    the I3D weights file and the video's ``content`` digest it came from; another network or video recomputes it."""
    i3d = extractors.get("i3d")  # raises MissingWeights first: no features without the network
    settings = {**file_identity(Path(extractors.paths["i3d"]), "i3d"), "content": content, "call": I3D_PROTOCOL}
    if reusable_record(path.with_suffix(".json"), settings, path):
        return np.load(path)
    with torch.no_grad():
        features = i3d.features(video()[None])[0].float().cpu().numpy()
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, features)
    write_json(path.with_suffix(".json"), {"settings": settings})
    return features


def feature_metrics(
    samples: list[Sample], scenes: dict[str, Scene], config: EvalConfig, device: torch.device
) -> tuple[dict[str, dict[str, float]], dict[str, Any], list[dict[str, str]]]:
    """The weight-needing metrics over the paper-trajectory samples (Tables 1-2).

    Returns ``(per_sample, distribution, skipped)``: per sample folder, metric -> value (cached in ``features.json``);
    the set metrics ``{"fvd": {"overall": ..., "<trajectory>": ...}, "kvd": ..., "n_generated", "n_real"}``; and
    ``{"metric", "skipped"}`` for each metric that could not run, the reason naming the missing file.
    """
    out, scoring = Path(config.out), config.metrics
    extractors = _Extractors(config.weights, device)
    videos = [s for s in samples if s.trajectory in PAPER_TRAJECTORIES]
    weights = {
        **config.weights.paths(),
        "clip_score_scale": scoring.clip_score_scale,
        "mast3r_views": scoring.mast3r_views,
    }
    cached = {}
    for sample in videos:  # values from other weight files are computed again
        document = reusable_record(sample.folder(out) / "features.json", weights, key="weights")
        cached[sample] = document["values"] if document else {}
    skipped: list[dict[str, str]] = []
    network = None
    metrics = list(FEATURE_METRICS)
    if config.weights.random_init_consistency:
        metrics.append(RANDOM_CONSISTENCY)
    distribution: dict[str, Any] = {}
    bar = tqdm(total=len(metrics), desc="feature metrics", unit="metric", leave=False)
    for metric in metrics:
        bar.update(1)
        if metric == "kvd":
            continue  # computed with FVD, from the same features
        if metric == "fvd":
            real = [scene for scene in scenes.values() if scene.video is not None]
            reason = (
                f"FVD/KVD compare feature distributions and need at least 2 real videos, the scene source has "
                f"{len(real)} (give annotated shards in scenes.index)"
            )
            if len(real) >= 2:
                try:
                    distribution.update(_distribution_metrics(videos, real, extractors, out))
                    continue
                except Exception as error:  # noqa: BLE001  e.g. clips too short; reported, the other metrics go on
                    reason = _reason(error)
            skipped += [{"metric": "fvd", "skipped": reason}, {"metric": "kvd", "skipped": reason}]
            continue
        try:
            for sample in videos:
                if metric in cached[sample]:
                    continue
                video = _load_video(sample.folder(out) / "rgb.mp4")
                if metric == RANDOM_CONSISTENCY:
                    network = network or _random_network()
                    cached[sample][metric] = _random_consistency(network, video)
                else:
                    scene = scenes[sample.scene]
                    value = _per_sample_value(
                        metric, extractors, video, scene, scoring.mast3r_views, scoring.clip_score_scale
                    )
                    cached[sample][metric] = value
                write_json(sample.folder(out) / "features.json", {"weights": weights, "values": cached[sample]})
        except Exception as error:  # noqa: BLE001  one metric's failure (remote code raises anything) stops no other
            skipped.append({"metric": metric, "skipped": _reason(error)})
    bar.close()
    per_sample = {str(s.folder(out)): cached[s] for s in videos}
    return per_sample, distribution, skipped


def _reason(error: Exception) -> str:
    """One line saying why a metric could not run: the message of a bad input (missing weights, a refused file),
    the exception's type too for anything else (a failure inside a network's own code)."""
    message = " ".join(str(error).split())
    expected = (FileNotFoundError, ImportError, ValueError)
    return message if isinstance(error, expected) and message else f"{type(error).__name__}: {message}"


def _distribution_metrics(videos: list[Sample], real: list[Scene], extractors: _Extractors, out: Path) -> dict:
    """FVD and KVD (StyleGAN-V protocol: I3D features of whole videos) of the generated videos against the real
    ones, overall and per trajectory, with the set sizes."""
    from d4s.eval import metrics as m

    size = "x".join(str(n) for n in real[0].video.shape[:1] + real[0].video.shape[2:])  # T x H x W of the clips
    real_features = np.stack(
        [
            _i3d_features(
                extractors,
                out / "real" / s.name / f"i3d_{size}.npy",
                lambda s=s: s.video.float() / 255.0,
                digest(s.video),
            )
            for s in real
        ]
    )
    generated = {
        s: _i3d_features(
            extractors,
            s.folder(out) / "i3d.npy",
            lambda s=s: _load_video(s.folder(out) / "rgb.mp4"),
            hashlib.sha1((s.folder(out) / "rgb.mp4").read_bytes()).hexdigest(),
        )
        for s in videos
    }
    result: dict[str, Any] = {"fvd": {}, "kvd": {}, "n_real": len(real), "n_generated": {}}
    groups = {"overall": list(generated.values())}
    for sample, features in generated.items():
        groups.setdefault(sample.trajectory, []).append(features)
    for group, features in groups.items():
        stacked = np.stack(features)
        result["n_generated"][group] = len(features)
        result["fvd"][group] = m.frechet_distance(stacked, real_features) if len(features) > 1 else None
        result["kvd"][group] = m.kernel_distance(stacked, real_features) if len(features) > 1 else None
    return result
