"""The demo's two sizes and the files it derives from the tiny configs.

``full`` (``make demo``): toy4d as ``make annotate`` writes it (48 scenes of 49 frames, 128 px, in ``data/toy4d``)
and the tiny stages for the step counts of ``configs/tiny/stage{0,1,2,3}.yaml``; about 20 minutes on 2 CPU cores.
``fast`` (``make demo DEMO_FAST=1``; ``make test-slow`` checks that it learns): a smaller toy4d (80 scenes of 33
frames at 64 px, in the run folder) and short stages; about 7 minutes. Both evaluate on the held-out ``test`` split
and judge learning by the same checks, with thresholds for their scale (:class:`LearningChecks`; the values measured
are in ``bench/RESULTS.md``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TINY_CONFIGS = Path("configs/tiny")
EVAL_CONFIG = TINY_CONFIGS / "eval.yaml"
TRAINED, UNTRAINED, REFERENCE = "trained", "untrained", "reference"  # the evaluated models (eval/<name>)
STAGES = (0, 1, 2, 3)  # stage 0: the video DiT alone (d4s.stages.VideoPretrain), the prior the paper starts from


@dataclass(frozen=True)
class LearningChecks:
    """What "the model learned" means in the summary, on the held-out clips along their real cameras (means over
    the clips; every check is required for "learned" and ``--check``):

    - the generator, apart from the LDRM: for every latent frame after the first, the sampled latents come closer to
      the real video's latents than frame 0's latents do (a still copy) by at least ``latent_margin`` dB of PSNR,
      so the generator predicts change, not noise and not a still;
    - the scene generated from the first frame: PSNR of frames 1..T-1 at least ``psnr`` dB, rendered depth
      correlation with the true depth at least ``depth_corr``, and, on the moving tracks of the dynamic clips, a
      mean cosine of at least ``motion_cosine`` between the predicted and the true displacement (an untrained head
      predicts no motion: cosine 0);
    - its render at ``t = 0`` from the first camera at most ``first_frame_gap`` dB below the render at ``t = 0`` of
      the LDRM run on the real video's latents (frame 0 is the input: the generator should give it back).
    """

    latent_margin: float
    psnr: float
    depth_corr: float
    motion_cosine: float
    first_frame_gap: float


@dataclass(frozen=True)
class DemoPlan:
    """One demo size. ``steps``/``checkpoint_every``: per training stage (0 to 3); ``annotate``: ``--set`` overrides of
    ``configs/annotate/toy4d.yaml``; ``data``: the annotation folder (``None``: inside the run folder);
    ``model_config``: other tiny models for every stage, e.g. ``configs/tiny/model_wan.yaml`` (the Wan2.2 twin)."""

    name: str
    out: Path
    data: Path | None
    annotate: tuple[str, ...]
    steps: tuple[int, int, int, int]
    checkpoint_every: tuple[int, int, int, int]
    checks: LearningChecks
    contact_sheet_scenes: int = 3
    seed: int = 0
    model_config: Path | None = None  # the tiny models (None: each stage config's, configs/tiny/model.yaml)

    @property
    def data_dir(self) -> Path:
        return self.data if self.data is not None else self.out / "data" / "toy4d"

    @property
    def index(self) -> Path:
        return self.data_dir / "index.json"

    def stage_dir(self, stage: int) -> Path:
        return self.out / f"stage{stage}"

    def last_checkpoint(self, stage: int) -> Path:
        return self.stage_dir(stage) / "checkpoints" / "last.ckpt"

    def config_path(self, stage: int) -> Path:
        return self.out / "configs" / f"stage{stage}.yaml"


FULL = DemoPlan(
    name="full",
    out=Path("runs/demo"),
    data=Path("data/toy4d"),
    annotate=(),
    steps=(2000, 500, 50, 400),
    checkpoint_every=(500, 100, 25, 100),
    checks=LearningChecks(latent_margin=0.0, psnr=20.0, depth_corr=0.7, motion_cosine=0.3, first_frame_gap=1.0),
)
FAST = DemoPlan(
    name="fast",
    out=Path("runs/demo-fast"),
    data=None,
    annotate=(
        "reader.num_scenes=80",
        "reader.num_frames=33",
        "reader.size=64",
        "clips.frames_per_clip=33",
        "clips.stride=33",
    ),
    steps=(600, 80, 10, 200),
    checkpoint_every=(300, 40, 10, 100),
    checks=LearningChecks(latent_margin=0.0, psnr=16.5, depth_corr=0.45, motion_cosine=0.1, first_frame_gap=2.0),
    contact_sheet_scenes=2,
)


def stage_config(plan: DemoPlan, stage: int, tiny: Path = TINY_CONFIGS) -> dict[str, Any]:
    """The LightningCLI config of one demo stage: ``configs/tiny/stage<N>.yaml`` with the run's folders, step count,
    checkpoint interval, data (the ``data:`` file inlined, its sources pointed at the demo's index) and the previous
    stage's checkpoint as ``init_from`` (the hand-off, Sec. 3.4)."""
    source = tiny / f"stage{stage}.yaml"
    config = yaml.safe_load(source.read_text())
    trainer, model = config["trainer"], config["model"]["init_args"]
    root = str(plan.stage_dir(stage))
    trainer["default_root_dir"] = root
    trainer["logger"]["init_args"]["save_dir"] = root
    trainer["max_steps"] = plan.steps[stage]
    trainer["val_check_interval"] = plan.checkpoint_every[stage]
    for callback in trainer["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["every_n_train_steps"] = plan.checkpoint_every[stage]
    model["model_config"] = str(Path(plan.model_config or model["model_config"]).resolve())
    model["recipe"] = {**model.get("recipe", {}), "seed": plan.seed}
    if stage > STAGES[0]:
        model["init_from"] = str(plan.last_checkpoint(stage - 1))
    data = config["data"]
    if isinstance(data, str):  # a data YAML relative to the stage config
        data = yaml.safe_load((source.parent / data).read_text())
    data = copy.deepcopy(data)
    for split in ("train", "val"):
        for entry in data[split]["sources"]:
            entry["index"] = str(plan.index)
    config["data"] = data
    config["seed_everything"] = plan.seed
    return config


def write_stage_config(plan: DemoPlan, stage: int) -> Path:
    """Write :func:`stage_config` to ``<out>/configs/stage<N>.yaml`` (what ``python -m d4s.fit --config`` reads)."""
    path = plan.config_path(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Demo stage {stage} ({plan.name}), written by python -m d4s.demo from {TINY_CONFIGS}/stage{stage}.yaml.\n"
        f"# Rerun by hand: python -m d4s.fit --config {path}\n"
    )
    path.write_text(header + yaml.safe_dump(stage_config(plan, stage), sort_keys=False))
    return path


def eval_config(plan: DemoPlan, checkpoint: Path, name: str):
    """``configs/tiny/eval.yaml`` on the demo's data for one checkpoint, into ``<out>/eval/<name>``, without the
    paper's five trajectories: at 64 px the pose estimator registers almost no frame of them (none in any full demo
    run: RPE undefined), so their 25 generations per model gave no number and took about half of each evaluation."""
    from d4s.eval.config import load_config

    overrides = {
        "ckpt": str(checkpoint),
        "out": str(plan.out / "eval" / name),
        "scenes.index": str(plan.index),
        "metrics.trajectories": [],
    }
    return load_config(EVAL_CONFIG, overrides)
