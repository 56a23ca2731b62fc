"""The demo's report: ``SUMMARY.md``, ``summary.json``, ``contact_sheet.png`` and ``loss_curves.png`` in the run folder.

Metrics come from the evaluation reports of the trained and the untrained model (``<out>/eval/<name>/report.json``):
along the held-out clips' real cameras, the scene generated from the first frame (``reconstruction``) and the LDRM
alone on the real video's latents (``latents``), plus the protocol's trajectory metrics. Beside them, a ground-truth
reference computed here: frame 0 lifted into Gaussians with its true depth (:func:`rgbd_field`), held still and
rendered along the same cameras, i.e. what a perfect static reconstruction of the input view scores.

The learning checks (:class:`~d4s.demo.plan.LearningChecks`) judge the generator on its own (its sampled latents
against the real video's, per latent frame, beside frame 0's latents held still) and the scenes generated from the
first frame (PSNR, depth, motion, and the render at t = 0 against the LDRM's on the real video).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from d4s.demo.plan import REFERENCE, STAGES, TRAINED, UNTRAINED, DemoPlan, eval_config
from d4s.eval.report import latent_frames
from d4s.utils.fileio import atomic_output, write_json

#: the reconstruction metrics of the table: key in the evaluation report, column title, higher is better
COLUMNS = (
    ("psnr", "PSNR (dB) ↑", True),
    ("psnr_t0", "PSNR at t = 0 (dB) ↑", True),
    ("ssim", "SSIM ↑", True),
    ("depth_abs_rel", "Depth AbsRel ↓", False),
    ("depth_corr", "Depth corr. ↑", True),
    ("motion_cosine", "Motion cos. ↑", True),
    ("motion_predicted", "Pred. motion (m)", None),
    ("motion_true", "True motion (m)", None),
    ("motion_epe", "Motion EPE (m) ↓", False),
)
PROTOCOL_COLUMNS = (("orbit", "cycle_psnr", "Cycle PSNR (dB) ↑"),)  # the trajectories' RPE: see plan.eval_config
HELD = "input_held"
#: table rows: (key in summary.json's metrics, title)
ROWS = (
    (f"{UNTRAINED}/generated", "untrained (random init), generated from frame 0"),
    (f"{TRAINED}/generated", "**trained, generated from frame 0**"),
    (f"{UNTRAINED}/video", "untrained, LDRM on the real video's latents"),
    (f"{TRAINED}/video", "**trained, LDRM on the real video's latents**"),
    (REFERENCE, "ground truth: frame 0 + true depth, static"),
    (HELD, "frame 0 shown at every time (no model)"),
)
ROW_TITLES = {UNTRAINED: "untrained (random init)", TRAINED: "**trained (this demo)**"}
CURVES = (  # (panel title, [(stage tag, label)])
    ("training loss (total)", [("train/loss", "train")]),
    ("flow matching (Eq. 2): the video DiT", [("train/flow_matching", "train"), ("val/flow_matching", "val")]),
    ("PSNR (dB) of the rendered views", [("train/psnr", "train"), ("val/psnr", "val")]),
    ("depth: 1 - Pearson correlation (Eq. 4)", [("train/depth_pearson", "train"), ("val/depth_pearson", "val")]),
    ("motion error (Eq. 5, stage 3)", [("train/motion", "train"), ("val/motion", "val")]),
)


# ------------------------------------------------------------------------------------------------------ metrics
def _means(section: dict[str, Any] | None) -> dict[str, float]:
    return {k: v["mean"] for k, v in (section or {}).items() if isinstance(v, dict) and v.get("mean") is not None}


def reference_metrics(plan: DemoPlan, scenes) -> tuple[dict[str, float], dict[str, float]]:
    """Two references, averaged over the held-out clips with depth: the ground truth (module docstring) and the
    input image held still (frame 0 shown at every time: what ignoring the camera and the motion scores)."""
    from d4s.eval import metrics as m
    from d4s.eval.config import SCENE
    from d4s.eval.samples import Sample
    from d4s.eval.scoring import weight_free_metrics
    from d4s.export import follow_times, render_sequence
    from d4s.gaussians.field import DeformableGaussianField
    from d4s.gaussians.procedural import rgbd_field

    config = eval_config(plan, plan.last_checkpoint(3), REFERENCE)
    values: dict[str, list[float]] = {}
    held: dict[str, list[float]] = {}
    for scene in scenes:
        if scene.video is None or scene.depth is None:
            continue
        T, size = scene.c2w.shape[0], tuple(scene.image.shape[-2:])
        field = DeformableGaussianField.static(rgbd_field(scene.image, scene.depth[0], scene.K_video[0]), T)
        render = render_sequence(field, scene.c2w, scene.K_video, follow_times(T, T), size, config.generation.backend)
        sample = Sample(scene.name, SCENE, 0)
        metrics, _, _ = weight_free_metrics(sample, scene, render.rgb, render.depth, scene.c2w, scene.K_video, config)
        for key, value in metrics.items():
            values.setdefault(key, []).append(value)
        real = scene.video.float() / 255.0
        still = real[:1].expand_as(real)
        held.setdefault("psnr", []).append(m.psnr(still[1:], real[1:]))
        held.setdefault("ssim", []).append(m.ssim(still[1:], real[1:]))
    return ({k: float(np.mean(v)) for k, v in values.items()}, {k: float(np.mean(v)) for k, v in held.items()})


def learning_checks(plan: DemoPlan, rows: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """The plan's :class:`~d4s.demo.plan.LearningChecks` against the measured rows: name, value, threshold, passed."""
    generated, video, limits = rows[f"{TRAINED}/generated"], rows[f"{TRAINED}/video"], plan.checks
    nan = float("nan")
    later = [(k, g, still) for k, g, still in latent_frames(generated) if still is not None]
    checks = [
        (f"generator: latent frame {k}, PSNR gain over frame 0 held still (dB)", g - still, limits.latent_margin)
        for k, g, still in later
    ] or [("generator: latent PSNR per frame (none measured)", nan, limits.latent_margin)]
    checks += [
        ("generated from frame 0: PSNR (dB)", generated.get("psnr", nan), limits.psnr),
        ("generated from frame 0: depth correlation", generated.get("depth_corr", nan), limits.depth_corr),
        (
            "generated from frame 0: motion cosine on moving tracks",
            generated.get("motion_cosine", nan),
            limits.motion_cosine,
        ),
        (
            "generated from frame 0: PSNR at t = 0 minus the LDRM's on the real video (dB)",
            generated.get("psnr_t0", nan) - video.get("psnr_t0", nan),
            -limits.first_frame_gap,
        ),
    ]
    return [
        {"check": name, "value": value, "threshold": limit, "passed": bool(math.isfinite(value) and value >= limit)}
        for name, value, limit in checks
    ]


def learned(checks: list[dict[str, Any]]) -> bool:
    """Every learning check passed."""
    return all(check["passed"] for check in checks)


# ------------------------------------------------------------------------------------------------------ figures
def _read_rgb(path: Path) -> np.ndarray:
    from d4s.utils.video import read_video

    return read_video(path)


def _moves(scene, min_displacement: float) -> bool:
    """Whether a visible track of ``scene`` moves at least ``min_displacement`` metres from where it was at frame 0."""
    if scene.track_xyz is None:
        return False
    shift = (scene.track_xyz - scene.track_xyz[:, :1]).norm(dim=-1)
    return bool((shift[scene.track_visible & scene.track_visible[:, :1]] >= min_displacement).any())


def contact_sheet(plan: DemoPlan, scenes, path: Path, min_displacement: float = 0.02) -> Path:
    """Per held-out clip (dynamic ones first), along its real cameras: the real frames, the trained model's scene
    generated from frame 0 (the input image), the trained LDRM's scene from the real video's latents (the evaluation's
    ``latents`` sample), the generated scene's depth, the true depth and the untrained model's generated scene."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from d4s.eval.config import LATENTS
    from d4s.utils.video import colorize_depth

    chosen = sorted(scenes, key=lambda s: not _moves(s, min_displacement))[: plan.contact_sheet_scenes]
    if not chosen:
        raise ValueError("contact sheet: no held-out clip to show")
    T = chosen[0].video.shape[0]
    columns = sorted({0, T // 4, T // 2, (3 * T) // 4, T - 1})
    row_names = ("ground truth", "generated", "from the video", "generated depth", "true depth", "untrained")
    figure, axes = plt.subplots(
        len(chosen) * len(row_names),
        len(columns),
        figsize=(1.3 * len(columns) + 1.2, 1.3 * len(chosen) * len(row_names)),
    )
    axes = np.atleast_2d(axes)
    for s, scene in enumerate(chosen):
        trained = _read_rgb(plan.out / "generated" / scene.name / "rgb.mp4")
        from_video = _read_rgb(plan.out / "eval" / TRAINED / "samples" / scene.name / LATENTS / "rgb.mp4")
        untrained = _read_rgb(plan.out / "generated_untrained" / scene.name / "rgb.mp4")
        depth = torch.from_numpy(np.load(plan.out / "generated" / scene.name / "depth.npy"))
        valid = scene.depth[scene.depth > 0]
        near, far = (float(valid.quantile(0.02)), float(valid.quantile(0.98))) if valid.numel() else (None, None)
        rows = (
            scene.video.permute(0, 2, 3, 1).numpy(),
            trained,
            from_video,
            colorize_depth(depth, near, far).numpy(),
            colorize_depth(scene.depth, near, far).numpy(),
            untrained,
        )
        for r, (name, frames) in enumerate(zip(row_names, rows)):
            for c, t in enumerate(columns):
                axis = axes[s * len(row_names) + r, c]
                axis.imshow(frames[t], interpolation="nearest")
                axis.set_xticks([])
                axis.set_yticks([])
                if c == 0:
                    axis.set_ylabel(name if r else f"{scene.name}\n{name}", fontsize=7)
                if s == 0 and r == 0:
                    axis.set_title("input (t=0)" if t == 0 else f"t={t}", fontsize=8)
    figure.suptitle("Held-out toy4d clips along their real cameras", fontsize=9)
    figure.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.3 / figure.get_figheight()))
    return _save(figure, path)


def _scalars(stage_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(stage_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _smooth(values: np.ndarray, width: int = 9) -> np.ndarray:
    if len(values) < width:
        return values
    kernel = np.ones(width) / width
    padded = np.pad(values, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def loss_curves(plan: DemoPlan, path: Path) -> Path:
    """The TensorBoard scalars of the stages on one step axis (stage boundaries marked); training curves are
    smoothed over 9 logged points (the raw ones faint behind)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(14, 6.5))
    offset = 0
    for stage in STAGES:
        scalars = _scalars(plan.stage_dir(stage))
        for axis, (title, tags) in zip(axes.flat, CURVES):
            for tag, label in tags:
                if tag not in scalars:
                    continue
                steps, values = (np.array(x, dtype=float) for x in zip(*scalars[tag]))
                colour = f"C{stage}"
                name = f"stage {stage} {label}"
                if label == "train":
                    axis.plot(steps + offset, values, color=colour, alpha=0.2, linewidth=0.8)
                    axis.plot(steps + offset, _smooth(values), color=colour, label=name)
                else:
                    axis.plot(steps + offset, values, "o--", color=colour, markersize=4, label=name)
            axis.set_title(title, fontsize=9)
        offset += plan.steps[stage]
        for axis in axes.flat:
            axis.axvline(offset, color="grey", linewidth=0.6, linestyle=":")
    for axis in axes.flat[len(CURVES) :]:
        axis.set_visible(False)
    for axis in axes.flat:
        axis.set_xlabel(f"training step (stages {', '.join(map(str, STAGES))} in turn)", fontsize=8)
        axis.tick_params(labelsize=7)
        if axis.get_legend_handles_labels()[0]:  # a run too short to log has only the stage boundaries
            axis.legend(fontsize=6)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    from matplotlib import pyplot as plt

    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=130, format="png")
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------------------------------- markdown
def _format(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def generator_rows(rows: dict[str, dict[str, float]]) -> list[list[str]]:
    """The generator table of ``SUMMARY.md``: per latent frame, the trained and untrained DiT's latent PSNR, the
    still copy's and the trained DiT's gain over it."""
    untrained = rows[f"{UNTRAINED}/generated"]
    return [
        [
            str(k),
            _format(generated),
            _format(untrained.get(f"latent_psnr_{k}")),
            _format(still),
            "–" if still is None else f"{generated - still:+.2f}",
        ]
        for k, generated, still in latent_frames(rows[f"{TRAINED}/generated"])
    ]


def render_markdown(summary: dict[str, Any]) -> str:
    """``SUMMARY.md`` from the ``summary.json`` document."""
    out = Path(summary["out"])
    rows, protocol = summary["metrics"], summary["protocol"]
    protocol_rows = [
        [ROW_TITLES[name], *(_format(protocol[name].get(key)) for _, key, _ in PROTOCOL_COLUMNS)] for name in protocol
    ]
    verdict = "learned" if learned(summary["checks"]) else "did NOT pass every learning check"
    lines = [
        f"# d4s demo ({summary['plan']}): {verdict}",
        "",
        (
            f"Wall time {summary['total_seconds'] / 60:.1f} min, peak memory {_format(summary['peak_memory_gib'])} GiB "
            f"(all processes together), on {summary['machine']}. Held-out clips: {len(summary['scenes'])} toy4d test "
            f"clips ({summary['dynamic_scenes']} dynamic), {summary['eval_frames']} frames at "
            f"{summary['eval_size']}, generated from their first frame along their real cameras."
        ),
        "",
        "## Trained vs untrained, on held-out clips",
        "",
        *_table(
            ["model", *(title for _, title, _ in COLUMNS)],
            [[title, *(_format(rows[key].get(metric)) for metric, _, _ in COLUMNS)] for key, title in ROWS],
        ),
        "",
        (
            "Generated: the full pipeline from the first frame (sampling, LDRM, rendering); video: the LDRM alone on "
            "the real clip's latents. PSNR and SSIM: frames 1..T-1 (the views the model did not see); PSNR at t = 0: "
            "the input view; depth over all frames (AbsRel after median scaling; Pearson correlation, the quantity of "
            "Eq. 4). Motion: each 3D track's Gaussian, displaced by the predicted deformation, against the track's "
            "true displacement, over the moving (track, time) pairs of the dynamic clips; an untrained deformation "
            "head predicts no motion. toy4d objects rise or sink by their colour, so the first frame says where they "
            "go. The last two rows are not models: the ground truth shows what the input view alone allows (regions "
            "not visible in frame 0 stay black); showing frame 0 at every time is what a model that ignored the "
            "camera and the motion would score."
        ),
        "",
        "## The generator alone (before the LDRM)",
        "",
        *_table(
            ["latent frame", "trained: sampled vs real (dB)", "untrained (dB)", "frame 0 held still (dB)", "gain"],
            generator_rows(rows),
        ),
        "",
        (
            f"PSNR of the latents the DiT samples from the first frame ({summary['eval_steps']} Euler steps, guidance "
            f"{summary['eval_guidance']:g} on Eq. 6's cosine schedule) against "
            "the real video's latents, per latent frame, averaged over the held-out clips. Frame 0 is the condition: "
            "the DiT must give it back. For the later frames, frame 0's latents held still are the baseline: beating "
            "them means the generator predicts how the view changes, not noise and not a still."
        ),
        "",
        "Learning checks:",
        "",
        *[
            f"- {'✓' if c['passed'] else '✗'} {c['check']}: {_format(c['value'])} (needs ≥ {c['threshold']:g})"
            for c in summary["checks"]
        ],
        "",
        "Protocol metrics (`make eval`, weight-free; a closed orbit: at 64 px the pose estimator registers almost no "
        "frame of the paper's five trajectories, so the demo leaves them out):",
        "",
        *_table(["model", *(title for _, _, title in PROTOCOL_COLUMNS)], protocol_rows),
        "",
        "## Pictures",
        "",
        "![contact sheet](contact_sheet.png)",
        "",
        "![loss curves](loss_curves.png)",
        "",
        "## Time and memory per phase",
        "",
        *_table(
            ["phase", "seconds", "peak memory (GiB)"],
            [[name, f"{p['seconds']:.0f}", _format(p.get("peak_memory_gib"))] for name, p in summary["phases"].items()],
        ),
        "",
        "## Where everything is",
        "",
        *[f"- {label}: `{path}`" for label, path in summary["files"].items()],
        "",
        (
            f"Look at the training curves with `tensorboard --logdir {out}`; open a generated scene with "
            f"`python -m d4s.view {out}/generated/<scene>/scene.npz`."
        ),
        "",
    ]
    return "\n".join(lines)


def write_summary(plan: DemoPlan, phases: dict[str, dict[str, Any]], scenes) -> Path:
    """Write the four summary files (module docstring) and print where everything is; returns ``SUMMARY.md``."""
    import platform

    from d4s.eval.config import LATENTS

    reports = {
        name: json.loads((plan.out / "eval" / name / "report.json").read_text()) for name in (UNTRAINED, TRAINED)
    }
    rows = {f"{name}/generated": _means(report["reconstruction"]) for name, report in reports.items()}
    rows.update({f"{name}/video": _means(report[LATENTS]) for name, report in reports.items()})
    rows[REFERENCE], rows[HELD] = reference_metrics(plan, scenes)
    protocol = {
        name: {key: _means(report[section]).get(key) for section, key, _ in PROTOCOL_COLUMNS}
        for name, report in reports.items()
    }
    files = {
        "summary": plan.out / "SUMMARY.md",
        "contact sheet": contact_sheet(plan, scenes, plan.out / "contact_sheet.png"),
        "loss curves": loss_curves(plan, plan.out / "loss_curves.png"),
        "trained checkpoint": plan.last_checkpoint(3),
        "untrained checkpoint": plan.out / "untrained.ckpt",
        "stage configs": plan.out / "configs",
        "generated scenes (videos, depth, .ply, scene.npz)": plan.out / "generated",
        "evaluation reports": plan.out / "eval",
        "logs": plan.out / "logs",
        "training data (shards)": plan.data_dir,
    }
    config = eval_config(plan, plan.last_checkpoint(3), TRAINED).generation
    summary = {
        "plan": plan.name,
        "out": str(plan.out),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}",
        "total_seconds": sum(p["seconds"] for p in phases.values()),
        "peak_memory_gib": max((p.get("peak_memory_gib") or 0.0 for p in phases.values()), default=None),
        "phases": phases,
        "scenes": [scene.name for scene in scenes],
        "dynamic_scenes": sum(
            1 for s in reports[TRAINED]["samples"] if s["trajectory"] == "scene" and "motion_cosine" in s["metrics"]
        ),
        "eval_frames": config.frames,
        "eval_steps": config.steps,
        "eval_guidance": config.guidance,
        "eval_size": f"{config.height}x{config.width}",
        "metrics": rows,
        "protocol": protocol,
        "checks": learning_checks(plan, rows),
        "files": {label: str(path) for label, path in files.items()},
    }
    write_json(plan.out / "summary.json", summary)
    with atomic_output(files["summary"]) as tmp:
        tmp.write_text(render_markdown(summary))
    print("\n" + "\n".join(f"  {label:<52} {path}" for label, path in summary["files"].items()))
    for check in summary["checks"]:
        mark = "ok  " if check["passed"] else "FAIL"
        print(f"  [{mark}] {check['check']}: {_format(check['value'])} (needs >= {check['threshold']:g})")
    return files["summary"]
