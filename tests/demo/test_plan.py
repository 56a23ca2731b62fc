"""The demo's stage configs: the tiny configs with the run's folders, steps, data and the stage hand-off, and
LightningCLI accepts them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from d4s.demo.plan import FAST, FULL, STAGES, stage_config, write_stage_config


def test_stage_configs_chain_the_stages_and_point_at_the_demo_data(tmp_path):
    plan = dataclasses.replace(FAST, out=tmp_path / "run")
    for stage in STAGES:
        config = stage_config(plan, stage)
        tiny = yaml.safe_load(Path(f"configs/tiny/stage{stage}.yaml").read_text())
        assert config["model"]["class_path"] == tiny["model"]["class_path"]
        assert config["trainer"]["max_steps"] == plan.steps[stage]
        assert config["trainer"]["default_root_dir"] == str(tmp_path / "run" / f"stage{stage}")
        assert config["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / "run" / f"stage{stage}")
        assert Path(config["model"]["init_args"]["model_config"]).is_absolute()
        init_from = config["model"]["init_args"].get("init_from")
        assert init_from == (None if stage == STAGES[0] else str(plan.last_checkpoint(stage - 1)))
        indexes = {entry["index"] for split in ("train", "val") for entry in config["data"][split]["sources"]}
        assert indexes == {str(tmp_path / "run" / "data" / "toy4d" / "index.json")}
        checkpoint = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint"))
        assert checkpoint["init_args"]["every_n_train_steps"] == plan.checkpoint_every[stage]
        assert plan.steps[stage] % plan.checkpoint_every[stage] == 0  # the last step is checkpointed
    assert FULL.data == Path("data/toy4d") and FULL.steps == tuple(
        yaml.safe_load(Path(f"configs/tiny/stage{stage}.yaml").read_text())["trainer"]["max_steps"] for stage in STAGES
    )  # the full demo is the tiny configs as they stand


def test_written_stage_config_parses_with_the_training_cli(tmp_path):
    from d4s.fit import main

    plan = dataclasses.replace(FAST, out=tmp_path / "run")
    path = write_stage_config(plan, 3)
    assert path.read_text().startswith("# Demo stage 3")
    cli_config = yaml.safe_load(Path(path).read_text())
    assert cli_config["model"]["init_args"]["recipe"]["seed"] == plan.seed
    printed = tmp_path / "printed.yaml"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
        main(["--config", str(path), "--print_config"])
    printed.write_text(buffer.getvalue())
    parsed = yaml.safe_load(printed.read_text())
    assert parsed["trainer"]["max_steps"] == plan.steps[3]
    assert parsed["model"]["init_args"]["init_from"] == str(plan.last_checkpoint(2))


def test_the_demo_runs_on_other_tiny_models_in_every_stage(tmp_path, capsys):
    """``--model-config configs/tiny/model_wan.yaml``: the Wan2.2 twin in every stage, a run of its own name (a run
    folder of the other models is refused, not resumed)."""
    from d4s.demo.__main__ import main
    from d4s.utils.cli import run_cli

    wan = Path("configs/tiny/model_wan.yaml")
    plan = dataclasses.replace(FAST, out=tmp_path / "run", model_config=wan)
    for stage in STAGES:
        assert stage_config(plan, stage)["model"]["init_args"]["model_config"] == str(wan.resolve())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "demo.json").write_text('{"plan": "fast", "phases": {}}')
    assert run_cli(main, ["--fast", "--out", str(tmp_path / "run"), "--model-config", str(wan)]) == 2
    assert "holds a 'fast' demo, not 'fast, model_wan'" in capsys.readouterr().err
