"""The demo's phases (:mod:`d4s.demo`), each resumable, and the journal that records what each one took.

Annotation and training run as the commands a user would type (``python -m annotation``, ``python -m d4s.fit``) in
child processes (``d4s`` never imports ``annotation``; each training stage gets a fresh process), the rest in this one.
``<out>/demo.json`` holds, per finished phase, its wall time and the peak memory of the whole process tree during it.
"""

from __future__ import annotations

import codecs
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from d4s.demo.plan import EVAL_CONFIG, STAGES, TRAINED, UNTRAINED, DemoPlan, eval_config, write_stage_config
from d4s.utils.fileio import atomic_output, write_json
from d4s.utils.memory import TreeMemoryMonitor

JOURNAL = "demo.json"
NOVEL_TRAJECTORY = "spiral"


class DemoError(RuntimeError):
    """A phase failed; the message says which command and where its log is."""


class Journal:
    """``<out>/demo.json``: the plan's name and, per finished phase, ``{"seconds", "peak_memory_gib", ...}``."""

    def __init__(self, plan: DemoPlan):
        self.path = plan.out / JOURNAL
        self.plan = plan
        stored = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if stored and stored.get("plan") != plan.name:
            raise ValueError(
                f"{plan.out} holds a {stored.get('plan')!r} demo, not {plan.name!r}; use another --out or --restart"
            )
        self.phases: dict[str, dict[str, Any]] = stored.get("phases", {})

    def done(self, phase: str) -> bool:
        return phase in self.phases

    def record(self, phase: str, entry: dict[str, Any]) -> None:
        self.phases[phase] = entry
        write_json(self.path, {"plan": self.plan.name, "phases": self.phases})


def run_phase(journal: Journal, phase: str, work: Callable[[], dict[str, Any] | None], note: str = "") -> None:
    """Run ``work`` unless the journal has ``phase``; record its wall time, peak tree memory and what it returns."""
    if journal.done(phase):
        print(f"[demo] {phase}: done earlier ({journal.phases[phase]['seconds']:.0f} s), skipped")
        return
    print(f"[demo] {phase}{': ' + note if note else ''}", flush=True)
    start = time.perf_counter()
    with TreeMemoryMonitor() as memory:
        details = work() or {}
    seconds = time.perf_counter() - start
    journal.record(phase, {"seconds": seconds, "peak_memory_gib": memory.peak_gib, **details})
    print(f"[demo] {phase}: {seconds:.0f} s", flush=True)


def _run_command(command: list[str], log: Path, quiet_warnings: bool = False) -> None:
    """Run a child ``python -m ...`` command, its output on the console and in ``log``; raise :class:`DemoError`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if quiet_warnings:  # Lightning's advice on a 2-core demo is noise; run the logged command by hand to see it
        env["PYTHONWARNINGS"] = "ignore"
    printable = " ".join(command[1:]) if command[0] == sys.executable else " ".join(command)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # chunks may split a character
    with log.open("w") as handle:
        handle.write(f"$ python {printable}\n")
        handle.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert process.stdout is not None
        for chunk in iter(lambda: process.stdout.read1(4096), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            handle.write(decoder.decode(chunk))
        handle.write(decoder.decode(b"", final=True))
        code = process.wait()
    if code != 0:
        raise DemoError(f"`python {printable}` failed with exit status {code}; its output is in {log}")


# ------------------------------------------------------------------------------------------------------- phases
def annotate(plan: DemoPlan) -> dict[str, Any]:
    """toy4d into shards (resumes and skips finished work, so a complete folder costs seconds)."""
    command = [sys.executable, "-m", "annotation", "--dataset", "toy4d", "--out", str(plan.data_dir)]
    if plan.annotate:  # other reader options than data_manifests/toy4d.json was built with: the reader's scene list
        command += ["--manifest", "none"]
    for override in plan.annotate:
        command += ["--set", override]
    _run_command(command, plan.out / "logs" / "annotate.log")
    index = json.loads(plan.index.read_text())
    return {"clips": {split: info["samples"] for split, info in index["splits"].items()}}


def _checkpoint_step(path: Path) -> int:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(checkpoint.get("global_step", 0))


def train_stage(plan: DemoPlan, stage: int) -> dict[str, Any]:
    """One training stage through ``python -m d4s.fit``; a killed stage resumes from its ``last.ckpt``."""
    config = write_stage_config(plan, stage)
    command = [sys.executable, "-m", "d4s.fit", "--config", str(config)]
    last = plan.last_checkpoint(stage)
    if last.is_file() and _checkpoint_step(last) > 0:
        print(f"[demo] stage {stage}: resuming from {last} (step {_checkpoint_step(last)})")
        command += ["--ckpt_path", str(last)]
    _run_command(command, plan.out / "logs" / f"stage{stage}.log", quiet_warnings=True)
    step = _checkpoint_step(last) if last.is_file() else 0
    if step < plan.steps[stage]:
        raise DemoError(f"stage {stage} stopped at step {step} of {plan.steps[stage]} (log: {plan.out}/logs)")
    return {"steps": step, "checkpoint": str(last)}


def save_untrained(plan: DemoPlan, path: Path) -> dict[str, Any]:
    """The stage-3 module as built before any training (random initialisation from the plan's seed), saved the way
    Lightning saves a checkpoint, so the same pipeline loads it."""
    config = yaml.safe_load(plan.config_path(3).read_text())
    module_path, _, class_name = config["model"]["class_path"].rpartition(".")
    module_class = getattr(importlib.import_module(module_path), class_name)
    arguments = {k: v for k, v in config["model"]["init_args"].items() if k != "init_from"}
    torch.manual_seed(plan.seed)
    module = module_class(**arguments)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 0}
    module.on_save_checkpoint(checkpoint)
    with atomic_output(path) as tmp:
        torch.save(checkpoint, tmp)
    return {"checkpoint": str(path)}


def held_out_scenes(plan: DemoPlan):
    """The held-out clips (the ``test`` split) at the evaluation's size, with depth and tracks."""
    from d4s.eval.scenes import load_scenes

    config = eval_config(plan, plan.last_checkpoint(3), TRAINED)
    return load_scenes(config.scenes, config.generation, config.metrics.motion_tracks)


def generate(plan: DemoPlan, checkpoint: Path, folder: Path, scenes, ply: bool = True) -> dict[str, Any]:
    """What ``python -m d4s.generate`` makes (:func:`d4s.generation.generate_scene`) from each held-out first frame
    (with its caption) along its real cameras (the clip's ``cameras.json``), plus a novel spiral and a bullet-time
    orbit: videos, depth and, with ``ply``, ``.ply`` per time; the sampling of ``make eval``'s tiny config."""
    from d4s.generation import DTYPES, GenerationSettings, Job, generate_scene
    from d4s.geometry.trajectories import save_camera_path
    from d4s.pipeline import Diff4SplatPipeline

    config = eval_config(plan, checkpoint, TRAINED).generation
    sampling = config.sampling(plan.seed)
    pipeline = Diff4SplatPipeline.from_checkpoint(checkpoint, device="cpu", dtype=DTYPES[config.dtype])
    for scene in scenes:
        inputs = folder / "inputs" / scene.name
        image = inputs / "first_frame.png"
        with atomic_output(image) as tmp:
            pixels = (scene.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(tmp, format="PNG")
        cameras = save_camera_path(
            inputs / "real_cameras.json", scene.c2w, scene.K_video, tuple(scene.image.shape[-2:])
        )
        settings = GenerationSettings(
            trajectory=str(cameras),
            frames=config.frames,
            size=(config.height, config.width),
            sampling=sampling,
            novel_trajectory=NOVEL_TRAJECTORY,
            backend=config.backend,
            ply=ply,
        )
        record = {"ckpt": str(checkpoint), "image": str(image), "prompt": scene.caption, **asdict(settings)}
        generate_scene(pipeline, Job(image, scene.caption, folder / scene.name), settings, record)
    return {"scenes": [scene.name for scene in scenes]}


def evaluate(plan: DemoPlan, checkpoint: Path, name: str) -> dict[str, Any]:
    """The weight-free evaluation protocol (``make eval`` on the tiny config) of one checkpoint."""
    from d4s.eval.run import run_protocol

    report = run_protocol(eval_config(plan, checkpoint, name))
    return {"report": str(plan.out / "eval" / name / "report.json"), "samples": report["run"]["samples"]}


def check_workspace(plan: DemoPlan) -> None:
    """The demo reads ``configs/`` relative to the working directory: the repository root."""
    for needed in (EVAL_CONFIG, *(Path(f"configs/tiny/stage{stage}.yaml") for stage in STAGES)):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found: run the demo from the repository root (where Makefile is)")


def run_demo(plan: DemoPlan, restart: bool = False) -> Path:
    """Every phase in order (module docstring); returns the summary's path."""
    from d4s.demo.summary import write_summary

    check_workspace(plan)
    if restart and plan.out.exists():
        if any(plan.out.iterdir()) and not (plan.out / JOURNAL).is_file():
            raise ValueError(f"--restart: {plan.out} is not a demo run folder (no {JOURNAL}); refusing to delete it")
        shutil.rmtree(plan.out)
    plan.out.mkdir(parents=True, exist_ok=True)
    journal = Journal(plan)
    run_phase(journal, "data", lambda: annotate(plan), f"toy4d -> {plan.data_dir}")
    for stage in STAGES:
        note = f"{plan.steps[stage]} steps -> {plan.stage_dir(stage)}"
        run_phase(journal, f"stage{stage}", lambda stage=stage: train_stage(plan, stage), note)
    untrained = plan.out / "untrained.ckpt"
    run_phase(journal, "baseline", lambda: save_untrained(plan, untrained), f"untrained model -> {untrained}")
    scenes = held_out_scenes(plan)
    trained = plan.last_checkpoint(3)
    run_phase(
        journal,
        "generate",
        lambda: {
            **generate(plan, trained, plan.out / "generated", scenes),
            "untrained": generate(plan, untrained, plan.out / "generated_untrained", scenes, ply=False),
        },
        f"{len(scenes)} held-out first frames -> {plan.out / 'generated'}",
    )
    for name, checkpoint in ((TRAINED, trained), (UNTRAINED, untrained)):
        run_phase(journal, f"eval_{name}", lambda c=checkpoint, n=name: evaluate(plan, c, n), f"{name} model")
    start = time.perf_counter()
    summary = write_summary(plan, journal.phases, scenes)
    print(f"[demo] summary: {time.perf_counter() - start:.0f} s")
    return summary
