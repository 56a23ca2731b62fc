"""The evaluation run: the protocol (:mod:`d4s.eval`) over a scene list with one checkpoint, each sample
generated once (or reused from the run folder), then the report of :mod:`d4s.eval.report` (``make eval``,
``python -m d4s.eval``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from d4s.eval.config import LATENTS, REAL_CAMERA_SAMPLES, SCENE, EvalConfig, MetricConfig
from d4s.eval.offline import go_offline
from d4s.eval.report import build_report, write_report
from d4s.eval.samples import Sample, completed, plan_samples, sample_cameras, sample_settings
from d4s.eval.scenes import Scene, load_scenes
from d4s.eval.scoring import feature_metrics, generator_metrics, motion_metrics, weight_free_metrics
from d4s.utils.fileio import write_json


def generate_sample(pipeline, sample: Sample, scene: Scene, config: EvalConfig, settings: dict, lpips=None) -> dict:
    """Generate, render and score one sample; writes its folder (module docstring) and returns its ``metrics.json``."""
    from d4s.export import follow_times, render_sequence
    from d4s.geometry.trajectories import save_camera_path
    from d4s.utils.video import write_video

    g = config.generation
    c2w, K, _ = sample_cameras(sample, scene, config)
    sampling = g.sampling(sample.seed)
    if sample.trajectory == LATENTS:
        result = pipeline.reconstruct(scene.video.float() / 255.0, c2w, K, sample.seed)
    else:
        result = pipeline.generate(scene.image, c2w, K, scene.caption, sampling)
    T, size = c2w.shape[0], (g.height, g.width)
    render = render_sequence(result.field, c2w, K, follow_times(T, T), size, g.backend)
    values, curves, failures = weight_free_metrics(sample, scene, render.rgb, render.depth, c2w, K, config, lpips)
    if sample.trajectory in REAL_CAMERA_SAMPLES:
        values.update(motion_metrics(result.field, result.grid, scene, config.metrics.motion_min_displacement))
    if sample.trajectory == SCENE:
        values.update(generator_metrics(pipeline, result.latents, scene, sample.seed))
    folder = sample.folder(Path(config.out))
    (folder / "metrics.json").unlink(missing_ok=True)  # unfinished until rewritten below
    (folder / "features.json").unlink(missing_ok=True)
    (folder / "i3d.npy").unlink(missing_ok=True)
    write_video(folder / "rgb.mp4", render.rgb, crf=g.video_crf)
    save_camera_path(folder / "cameras.json", c2w, K, size, render.times)
    document = {
        "settings": settings,
        "caption": scene.caption,
        "metrics": values,
        "curves": curves,
        "failures": failures,
        "timings": result.timings,
    }
    write_json(folder / "metrics.json", document)
    return document


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device: not a torch device: {name!r} (e.g. cpu, cuda, cuda:1)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested, but no CUDA device is visible here; use cpu")
    return device


class LazyPipeline:
    """The pipeline, loaded at the first sample that needs generating (a finished run never loads the model)."""

    def __init__(self, config: EvalConfig, device: torch.device):
        self.config, self.device, self._pipeline = config, device, None

    def __call__(self):
        if self._pipeline is None:
            from d4s.generation import DTYPES
            from d4s.pipeline import Diff4SplatPipeline

            self._pipeline = Diff4SplatPipeline.from_checkpoint(
                self.config.ckpt,
                self.config.model_config,
                self.device,
                DTYPES[self.config.generation.dtype],
                use_ema=not self.config.no_ema,
            )
        return self._pipeline


def load_lpips(config: MetricConfig, device: torch.device):
    """LPIPS with the configured local backbone, or ``None`` (skipped) when no backbone is configured."""
    if config.lpips_backbone is None:
        return None
    from d4s.models.perceptual import LPIPS

    return LPIPS(config.lpips_net, backbone_path=config.lpips_backbone).to(device)


def run_protocol(config: EvalConfig) -> dict[str, Any]:
    """Run the whole protocol (module docstring) and write the report; returns the report (``report.json``).

    Raises ``FileNotFoundError`` for a missing checkpoint or scene source and ``ValueError`` for bad settings,
    before any generation.
    """
    go_offline()
    ckpt = Path(config.ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt} (give a .ckpt written by python -m d4s.fit, --ckpt)")
    device = resolve_device(config.device)
    out = Path(config.out)
    scenes = load_scenes(config.scenes, config.generation, config.metrics.motion_tracks)
    by_name = {scene.name: scene for scene in scenes}
    samples = plan_samples(scenes, config)
    pipeline = LazyPipeline(config, device)
    lpips = load_lpips(config.metrics, device)
    results: dict[Sample, dict] = {}
    generated = 0
    for sample in tqdm(samples, desc="samples", unit="sample"):
        scene = by_name[sample.scene]
        _, _, scale = sample_cameras(sample, scene, config)
        settings = sample_settings(sample, scale, config, scene)
        cached = completed(sample, settings, out)
        if cached is None:
            cached = generate_sample(pipeline(), sample, scene, config, settings, lpips)
            generated += 1
        results[sample] = cached
    features, distribution, skipped = feature_metrics(samples, by_name, config, device)
    if config.metrics.lpips_backbone is None and any(s.trajectory in REAL_CAMERA_SAMPLES for s in samples):
        skipped.append(
            {
                "metric": "lpips",
                "skipped": "no LPIPS backbone: set metrics.lpips_backbone to torchvision's local "
                f"{config.metrics.lpips_net} ImageNet weights file",
            }
        )
    run = {"generated": generated, "reused": len(samples) - generated, "device": str(device)}
    report = build_report(out, config, scenes, samples, results, features, distribution, skipped, run)
    return write_report(out, report)
