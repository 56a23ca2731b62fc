"""``python -m d4s.stages.memory``: the memory plan of a stage, computed on the meta device.

The counter (:class:`LiveBytes`) against closed forms of what autograd keeps; the per-component bytes against a
brute-force sum over the stage's parameters; the shipped paper configs against an 80 GB GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from d4s.stages.memory import GIB, LiveBytes, flash_attention_memory, main, memory_plan
from d4s.utils.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_live_bytes_counts_what_autograd_keeps_and_frees_it():
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(100, 200), nn.ReLU(), nn.Linear(200, 300))
        x = torch.empty(8, 100)
    for p in net.parameters():
        p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    counter = LiveBytes()
    counter.ignore([*net.parameters(), x])
    with counter:
        y = net(x)
        # alive: the ReLU's output (saved by it and by the second Linear) and y; the first Linear's output is freed
        assert counter.live == 4 * 8 * (200 + 300)
        loss = y.sum()
        del y
        loss.backward()
        del loss
    assert counter.live == 0
    # the peak holds at least the largest weight gradient (300 x 200) while it is accumulated
    assert counter.peak >= 4 * (300 * 200)


def test_views_and_in_place_results_are_counted_once():
    counter = LiveBytes()
    with counter, torch.device("meta"):
        a = torch.empty(1000)
        b = a.view(10, 100)
        b.mul_(2.0)
        assert counter.live == 4000
        del a, b
    assert counter.live == 0 and counter.peak == 4000


def test_attention_is_counted_as_flash_attention_keeps_it():
    """Output and a float32 log-sum-exp, no N x N matrix (which the math kernel would materialise)."""
    with torch.device("meta"):
        q, k, v = (torch.empty(1, 4, 1024, 32, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    counter = LiveBytes()
    counter.ignore([q, k, v])
    with counter, flash_attention_memory():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert counter.live == 2 * 4 * 1024 * 32 + 4 * 4 * 1024  # out (bf16) + lse (float32)
    assert out.shape == q.shape


def stage_config(tmp_path: Path, strategy: str, dit: str = "full") -> Path:
    """The tiny stage 3 with the DiT training, under ``strategy`` on 4 ranks."""
    stage = yaml.safe_load((ROOT / "configs/tiny/stage3.yaml").read_text())
    stage["trainer"] |= {"strategy": strategy, "devices": 4}
    stage["model"]["init_args"]["recipe"] |= {"dit": dit, "ldrm_input": "one_step"}
    stage["model"]["init_args"]["model_config"] = str(ROOT / "configs/tiny/model.yaml")
    stage["data"] = str(ROOT / "configs/tiny/data/stage3.yaml")
    path = tmp_path / "stage.yaml"
    path.write_text(yaml.safe_dump(stage))
    return path


def test_weights_gradients_and_adamw_are_the_parameters_bytes(tmp_path):
    from d4s.stages import DynamicFinetune, LPIPSConfig

    module = DynamicFinetune(
        str(ROOT / "configs/tiny/model.yaml"),
        lpips=LPIPSConfig(net="alex", backbone_path=None, random_backbone=True),
        recipe={"dit": "full", "ldrm_input": "one_step"},
    )
    parts = {"video DiT (+ camera adapter)": ("video_dit.transformer.", "video_dit.plucker."), "LDRM": ("ldrm.",)}
    ddp, _ = memory_plan(stage_config(tmp_path, "ddp"))
    sharded, _ = memory_plan(stage_config(tmp_path, {"class_path": "d4s.stages.sharding.ShardedStrategy"}))
    ddp, sharded = {r.name: r for r in ddp}, {r.name: r for r in sharded}
    for name, prefixes in parts.items():
        params = [p for n, p in module.named_parameters() if n.startswith(prefixes)]
        count, trained = sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
        assert (ddp[name].parameters, ddp[name].trained) == (count, trained) and trained > 0
        assert (ddp[name].weights, ddp[name].gradients, ddp[name].optimizer) == (4 * count, 4 * trained, 8 * trained)
        # sharded over the 4 ranks
        assert (sharded[name].weights, sharded[name].optimizer) == (count, 2 * trained)
    all_trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert ddp["DDP gradient buckets"].gradients == 4 * all_trained
    assert "DDP gradient buckets" not in sharded
    activations = "activations (measured, float32)"
    assert ddp[activations].activations == sharded[activations].activations > 0


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_the_paper_stage_configs_fit_an_80_gb_gpu(stage, monkeypatch):
    monkeypatch.chdir(ROOT)
    rows, plan = memory_plan(Path(f"configs/stage{stage}.yaml"))
    total = sum(row.total for row in rows) / GIB
    assert total < 80, total
    assert plan.sharded == (stage == 3)  # stage 3 trains the 5B DiT: 16 B per weight would not fit under DDP
    dit = next(row for row in rows if row.name.startswith("video DiT"))
    assert dit.parameters > 5e9 and (dit.trained > 0) == (stage == 3)


def test_the_stage_3_model_under_ddp_does_not_fit(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    stage = yaml.safe_load((ROOT / "configs/stage3.yaml").read_text())
    stage["trainer"]["strategy"] = "ddp"
    stage["data"] = str(ROOT / "configs/data/stage3.yaml")
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(stage))
    rows, _ = memory_plan(tmp_path / "ddp.yaml")
    assert sum(row.total for row in rows) / GIB > 80


def test_the_command_prints_the_plan_and_a_missing_config_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["--config", "configs/tiny/stage3.yaml", "--json", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "total per GPU" in out and "fits in 80 GiB" in out and (tmp_path / "plan.json").is_file()
    assert run_cli(main, ["--config", "nope.yaml"]) == 2
    assert capsys.readouterr().err == "error: config not found: nope.yaml\n"
