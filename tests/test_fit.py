"""``python -m d4s.fit``: the stage configs parse, paper scale instantiates on the meta device, and a tiny stage 1
trains with DDP on two CPU processes in bf16-mixed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from d4s.fit import command, main
from d4s.models.ldrm import parameter_count
from d4s.stages import DynamicFinetune, HiResRefine, LPIPSConfig, StaticPretrain, VideoPretrain
from d4s.utils.cli import run_cli
from tests.data.conftest import toy4d_shards  # noqa: F401  (the session's shards)

ROOT = Path(__file__).resolve().parents[1]
STAGES = {0: VideoPretrain, 1: StaticPretrain, 2: HiResRefine, 3: DynamicFinetune}


@pytest.mark.parametrize(
    "config", ["stage1", "stage2", "stage3", "tiny/stage0", "tiny/stage1", "tiny/stage2", "tiny/stage3"]
)
def test_stage_configs_parse(config, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_code:
        main(["--config", f"configs/{config}.yaml", "--print_config"])
    assert exit_code.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    stage = int(config[-1])
    assert printed["model"]["class_path"] == f"d4s.stages.{STAGES[stage].__name__}"
    tiny = config.startswith("tiny")
    assert printed["trainer"]["precision"] == ("32-true" if tiny else "bf16-mixed")  # these CPUs lack bf16
    assert printed["data"]["train"]["motion"] == {0: "any", 3: "dynamic"}.get(stage, "static")
    # what trains is in the YAML (Sec. 3.4): the LDRM from stage 1, the deformation head in stage 3 only
    trains = printed["model"]["init_args"]["stage"]
    assert (trains["reconstruct"], trains["deformation"], trains["expects_init"]) == (stage > 0, stage == 3, stage > 1)
    if tiny and stage > 0:  # the generator comes from stage 0 and stays frozen
        recipe = printed["model"]["init_args"]["recipe"]
        assert recipe["dit"] == "frozen" and recipe["flow_matching"]["shift"] == 3.0
        assert printed["model"]["init_args"]["init_from"].startswith(f"outputs/tiny/stage{stage - 1}/")
    if not tiny:
        assert printed["trainer"]["max_steps"] == {1: 40000, 2: 40000, 3: 20000}[stage]  # Sec. 3.4
        assert printed["data"]["clip"]["height"] == (256, 512, 512)[stage - 1]
        # stage 3 trains the 5B DiT: sharded to fit 80 GB (python -m d4s.stages.memory); stages 1-2 fit under DDP
        strategy = printed["trainer"]["strategy"]
        assert strategy == "ddp" if stage < 3 else strategy["class_path"] == "d4s.stages.sharding.ShardedStrategy"
        optimizer = printed["model"]["init_args"]["optimizer"]
        assert optimizer["lr"] == 1e-5 and optimizer["weight_decay"] == 1e-4  # Sec. 4.1
        assert printed["model"]["init_args"]["losses"]["lpips"] == 0.5
        assert printed["model"]["init_args"]["losses"]["motion"] == (2.0 if stage == 3 else None)  # lambda_m
        # Sec. 3.4: the LDRM alone on static scenes, then "the entire model" in stage 3
        recipe = printed["model"]["init_args"]["recipe"]
        assert (recipe["dit"], recipe["ldrm_input"]) == (("full", "one_step") if stage == 3 else ("frozen", "clean"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "--model.init_args.recipe.dit=fulll",
            "model.recipe.dit: 'fulll' is not one of ['full', 'camera', 'lora', 'frozen']",
        ),
        (
            "--model.init_args.recipe.motion_frames=some",
            "model.recipe.motion_frames: 'some' is not one of ['targets', 'all']",
        ),
        ("--model.init_args.recipe.num_target_views=abc", "model.recipe.num_target_views: expected int, got 'abc'"),
        ("--model.init_args.recipe.num_target_views=-3", "recipe.num_target_views: expected >= 1, got -3"),
        ("--model.init_args.recipe.bogus=1", "model.recipe: unknown key 'bogus'"),
        ("--data.batch_size=x", "data.batch_size: expected int, got 'x'"),
        ("--trainer.max_stepz=3", "unrecognized arguments: --trainer.max_stepz=3 (python -m d4s.fit --help lists"),
        ("--model.init_args.losses.motion=2", "losses.motion: StaticPretrain cannot use this term"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_field_and_exit_status_2(override, message, capsys, monkeypatch):
    """Whether the parser (types, ``Literal`` choices, unknown keys) or the stage refuses it."""
    monkeypatch.chdir(ROOT)
    assert run_cli(command, ["--config", "configs/tiny/stage1.yaml", override]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"error: {message}") and stderr.count("\n") == 1, stderr


@pytest.mark.parametrize("stage", [1, 2])
def test_the_joint_reading_of_the_static_stages_is_the_documented_override(stage, capsys, monkeypatch):
    """Each static stage file names the flags of the other reading (the DiT trained jointly from stage 1)."""
    monkeypatch.chdir(ROOT)
    path = ROOT / "configs" / f"stage{stage}.yaml"
    flags = [
        "--model.init_args.recipe.dit=full",
        "--model.init_args.recipe.ldrm_input=one_step",
        "--trainer.strategy.class_path=d4s.stages.sharding.ShardedStrategy",
    ]
    assert all(flag in path.read_text() for flag in flags)
    with pytest.raises(SystemExit):
        main(["--config", str(path.relative_to(ROOT)), *flags, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    recipe = printed["model"]["init_args"]["recipe"]
    assert (recipe["dit"], recipe["ldrm_input"]) == ("full", "one_step")
    assert printed["trainer"]["strategy"]["class_path"] == "d4s.stages.sharding.ShardedStrategy"


def test_a_missing_file_is_one_line_naming_it_and_exit_status_2(toy4d_shards, tmp_path, capsys, monkeypatch):  # noqa: F811
    """A data index that is not there (no `make annotate` yet), then a --ckpt_path that is not there."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)  # no data/ here
    args = ["--config", "configs/tiny/stage1.yaml", "--model.init_args.init_from=null", "--trainer.logger=false"]
    assert run_cli(command, args) == 2
    stderr = capsys.readouterr().err
    assert (
        stderr.startswith("error: source 'toy4d': cannot read the index data/toy4d/index.json")
        and "make annotate" in stderr
    )
    assert stderr.count("\n") == 1, stderr
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "toy4d").symlink_to(toy4d_shards)  # as make annotate lays it out
    assert run_cli(command, [*args, "--ckpt_path=nope.ckpt"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.splitlines()[-1] == "error: Checkpoint file not found: nope.ckpt", stderr


@pytest.mark.parametrize("stage", [1, 3])
def test_paper_scale_stages_instantiate_on_the_meta_device(stage, tmp_path):
    """The paper's model config with random weights (no files here), built without allocating memory."""
    paper = yaml.safe_load((ROOT / "configs/model/paper.yaml").read_text())
    paper["video_dit"]["random_init"] = True
    paper["text"] = {"mode": "null", "max_length": 226, "dim": 4096}
    config = tmp_path / "paper.yaml"
    config.write_text(yaml.safe_dump(paper))
    with torch.device("meta"):
        module = STAGES[stage](str(config), lpips=LPIPSConfig(backbone_path=None, random_backbone=True))
    assert parameter_count(module.video_dit.transformer) > 5e9  # CogVideoX-5B
    assert all(p.device.type == "meta" for p in module.parameters())
    assert any(p.requires_grad for p in module.ldrm.deformation_head.parameters()) == (stage == 3)


def test_tiny_stage1_runs_with_ddp_on_two_cpu_processes_in_bf16(toy4d_shards, tmp_path):  # noqa: F811
    index = toy4d_shards / "index.json"
    command = [
        sys.executable,
        "-m",
        "d4s.fit",
        "--config",
        "configs/tiny/stage1.yaml",
        "--model.init_args.init_from=null",  # no stage-0 run here: a random DiT
        "--trainer.precision=bf16-mixed",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.val_check_interval=2",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--data.train.sources=[{{name: toy4d, index: {index}}}]",
        f"--data.val.sources=[{{name: toy4d, index: {index}, split: val}}]",
        "--data.num_workers=1",
        "--data.clip.height=32",
        "--data.clip.width=32",
        "--data.clip.num_frames=5",
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bfloat16" in result.stderr + result.stdout  # Lightning announces bf16 autocast
    checkpoint = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=True)
    assert checkpoint["global_step"] == 2
    saved = yaml.safe_load(next(tmp_path.rglob("config.yaml")).read_text())
    assert saved["trainer"]["precision"] == "bf16-mixed" and str(saved["trainer"]["devices"]) == "2"
