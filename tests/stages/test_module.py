"""The shared training module: trainable parts, condition dropout, EMA, schedule, guards, checkpoints, resume."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from d4s.diffusion import Guidance
from d4s.models.config import ModelConfig
from d4s.models.video_dit import Conditioning, VideoDiT
from d4s.stages import DynamicFinetune, StaticPretrain, VideoPretrain
from d4s.stages.base import OptimizerConfig, adamw, warmup_cosine
from d4s.stages.checkpoint import AtomicCheckpointIO
from d4s.stages.ema import ParameterEMA
from tests.stages.conftest import RANDOM_LPIPS, tiny_data, tiny_module, tiny_trainer

REPO = Path(__file__).resolve().parents[2]


def trainable(module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def test_which_parts_train_in_each_stage_and_dit_setting():
    stage1 = tiny_module(StaticPretrain)
    names = trainable(stage1)
    assert not any(n.startswith("ldrm.deformation_head.") for n in names)
    assert any(n.startswith("ldrm.blocks.") for n in names) and any(".transformer_blocks." in n for n in names)
    assert not any(n.startswith(("video_dit.vae.", "lpips.", "text.")) for n in names)
    stage3 = tiny_module(DynamicFinetune)
    assert any(n.startswith("ldrm.deformation_head.") for n in trainable(stage3))
    camera = trainable(tiny_module(DynamicFinetune, recipe={"dit": "camera"}))
    dit_camera = {n for n in camera if n.startswith("video_dit.")}
    assert dit_camera and all(
        n.startswith(("video_dit.plucker.", "video_dit.transformer.patch_embed.proj.camera.")) for n in dit_camera
    )
    lora = {
        n
        for n in trainable(tiny_module(DynamicFinetune, recipe={"dit": "lora", "lora_rank": 4}))
        if n.startswith("video_dit.")
    }
    assert any(".down." in n for n in lora) and not any(n.endswith(".base.weight") for n in lora)
    assert not any(
        n.startswith("video_dit.") for n in trainable(tiny_module(DynamicFinetune, recipe={"dit": "frozen"}))
    )


def test_text_and_camera_are_dropped_together(toy4d_shards, monkeypatch):
    module = tiny_module(DynamicFinetune, recipe={"condition_dropout": 0.5})
    data = tiny_data(toy4d_shards, "any", batch_size=8)
    data.setup("fit")
    batch = next(iter(data.train_dataloader())).prepare()
    seen = {}
    forward = module.video_dit.forward

    def spy(noisy, image, camera, text, timestep):
        seen.update(camera=camera, text=text)
        return forward(noisy, image, camera, text, timestep)

    monkeypatch.setattr(module.video_dit, "forward", spy)
    monkeypatch.setattr(module.text, "forward", lambda captions, device: torch.ones(len(captions), 8, 32))
    module.compute_losses(batch, train=True)
    camera_dropped = seen["camera"].flatten(1).abs().sum(1) == 0
    text_dropped = seen["text"].flatten(1).abs().sum(1) == 0
    assert torch.equal(camera_dropped, text_dropped)
    assert 0 < int(camera_dropped.sum()) < 8  # p = 0.5 over 8 clips with this seed


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110) == pytest.approx(0.5)  # half way through the cosine
    assert warmup_cosine(110, 10, 110, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(35, 10, 110, min_ratio=0.2) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_the_paper_schedule_is_one_cosine_continued_across_the_stages():
    """configs/stage{1,2,3}.yaml: each stage starts where the previous one ended on one warm-up + cosine over the
    paper's 100K iterations (Sec. 4.1); without schedule_steps the schedule restarts within the stage."""
    module = tiny_module(StaticPretrain)
    factors = {}
    for n in (1, 2, 3):
        config = yaml.safe_load((REPO / "configs" / f"stage{n}.yaml").read_text())
        module.optim = OptimizerConfig(**config["model"]["init_args"]["optimizer"])
        steps = config["trainer"]["max_steps"]
        module._trainer = SimpleNamespace(max_steps=steps, precision="32-true")
        schedule = module.configure_optimizers()["lr_scheduler"]["scheduler"]
        factors[n] = (schedule.lr_lambdas[0](0), schedule.lr_lambdas[0](steps))
    assert factors[1][0] == pytest.approx(1 / 1000)  # the warm-up's first step
    assert factors[1][1] == pytest.approx(factors[2][0]) and factors[2][1] == pytest.approx(factors[3][0])
    assert factors[2][0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 39000 / 99000)))  # 40K into 100K, after warm-up
    assert factors[3][1] == pytest.approx(0.0, abs=1e-12)  # the end of the 100K iterations
    module.optim = OptimizerConfig(warmup_steps=10)  # the other reading: each stage its own warm-up and cosine
    module._trainer = SimpleNamespace(max_steps=110, precision="32-true")
    restarted = module.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert restarted(0) == pytest.approx(0.1) and restarted(60) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule_steps"):
        OptimizerConfig(schedule_start=100, schedule_steps=100)


def test_ema_averages_trainable_weights_and_swaps_back():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].requires_grad_(False)
    ema = ParameterEMA(model, decay=0.9)
    assert ema.names == ["0.weight", "0.bias"]
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    expected = 0.9 * start + 0.1 * (start + 1.0)
    with ema.swapped_in(model):
        torch.testing.assert_close(model[0].weight, expected)
    torch.testing.assert_close(model[0].weight, start + 1.0)
    with pytest.raises(ValueError, match="decay"):
        ParameterEMA(model, decay=1.0)


class SaboteurCallback(L.Callback):
    """Poisons the LDRM with NaN for some steps (the loss is then not finite)."""

    def __init__(self, steps: set[int]):
        self.steps = steps

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        weight = module.ldrm.project.weight
        if batch_idx in self.steps:
            self.saved = weight.detach().clone()
            with torch.no_grad():
                weight.fill_(float("nan"))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx in self.steps:
            with torch.no_grad():
                module.ldrm.project.weight.copy_(self.saved)


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(toy4d_shards, tmp_path):
    module = tiny_module(StaticPretrain, recipe={"max_nonfinite_in_a_row": 2})
    data = tiny_data(toy4d_shards, "static")
    trainer = tiny_trainer(tmp_path, max_steps=4, callbacks=[SaboteurCallback({1, 2})])
    trainer.fit(module, data)
    assert module.nonfinite_total == 2 and module.nonfinite_in_a_row == 0
    assert all(torch.isfinite(p).all() for p in module.parameters())  # no NaN reached the weights

    module = tiny_module(StaticPretrain, recipe={"max_nonfinite_in_a_row": 2})
    trainer = tiny_trainer(tmp_path, max_steps=6, callbacks=[SaboteurCallback({1, 2, 3, 4})])
    with pytest.raises(RuntimeError, match="3 training steps in a row had a non-finite loss"):
        trainer.fit(module, data)


class Crash(L.Callback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("killed")  # the run dies mid-epoch, without a final checkpoint


class Observe(L.Callback):
    def on_train_start(self, trainer, module):
        optimizer = trainer.optimizers[0]
        self.step = trainer.global_step
        self.adam_steps = {int(s["step"]) for s in optimizer.state.values()} if optimizer.state else set()
        self.lr = optimizer.param_groups[0]["lr"]
        self.scheduler_epoch = trainer.lr_scheduler_configs[0].scheduler.last_epoch
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())  # its tensors change in place later
        self.weights = {k: v.clone() for k, v in module.state_dict().items()}


def resumable_run(shards, root, max_steps, callbacks=(), ckpt_path=None):
    module = tiny_module(StaticPretrain, lr=1e-3, recipe={"ema_decay": 0.9})
    data = tiny_data(shards, "static", samples_per_epoch=8)  # 4 steps per epoch
    checkpoints = ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=2, save_top_k=-1)
    trainer = tiny_trainer(
        root,
        max_steps=max_steps,
        enable_checkpointing=True,
        callbacks=[checkpoints, *callbacks],
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, trainer


def test_killed_run_resumes_exactly_where_it_stopped(toy4d_shards, tmp_path):
    straight, _ = resumable_run(toy4d_shards, tmp_path / "straight", max_steps=6)
    with pytest.raises(RuntimeError, match="killed"):
        resumable_run(toy4d_shards, tmp_path / "crashed", max_steps=6, callbacks=[Crash(at_step=3)])
    last = tmp_path / "crashed" / "last.ckpt"
    saved = torch.load(last, weights_only=True)  # plain tensors and values only
    assert saved["global_step"] == 2  # mid-epoch: the last checkpoint before the kill
    observe = Observe()
    resumed, trainer = resumable_run(toy4d_shards, tmp_path / "crashed", 6, callbacks=[observe], ckpt_path=str(last))
    assert observe.step == 2 and observe.adam_steps == {2} and observe.scheduler_epoch == 2
    assert observe.lr == pytest.approx(1e-3 * warmup_cosine(2, 10, 6))
    for key, value in saved["state_dict"].items():  # weights and EMA, bit for bit
        assert torch.equal(observe.weights[key], value), key
    moments = saved["optimizer_states"][0]["state"]
    for index, state in moments.items():
        assert torch.equal(observe.optimizer_state["state"][index]["exp_avg"], state["exp_avg"])
    assert trainer.global_step == 6
    # the rest of the interrupted epoch's data, then the next epoch: the same run as without the kill
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key


def test_checkpoints_are_atomic(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed while saving")

    with pytest.raises(RuntimeError, match="killed while saving"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, target)
    assert torch.load(target, weights_only=False) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_checkpoints_leave_out_frozen_weights_that_come_from_files(tmp_path):
    with_vae = "configs/tiny/model_vae.yaml"  # a VAE has weights to come from files; the tiny codec has none
    tiny = yaml.safe_load(Path(with_vae).read_text())
    torch.manual_seed(0)
    VideoDiT.from_config(ModelConfig.from_yaml(with_vae).video_dit).save_pretrained(tmp_path / "dit")
    tiny["video_dit"] = {"path": str(tmp_path / "dit"), "camera_channels": tiny["video_dit"]["camera_channels"]}
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump(tiny))
    module = StaticPretrain(str(config), lpips=RANDOM_LPIPS)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    assert not any(key.startswith("video_dit.vae.") for key in checkpoint["state_dict"])
    assert any(key.startswith("video_dit.transformer.") for key in checkpoint["state_dict"])
    assert checkpoint["d4s_model_config"]["video_dit"]["path"] == str(tmp_path / "dit")
    restored = StaticPretrain(str(config), lpips=RANDOM_LPIPS)
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])  # strict: the VAE came back from its files
    for key, value in module.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key


def test_squared_motion_option_still_logs_eq5(toy4d_shards):
    module = tiny_module(DynamicFinetune, losses={"motion_squared_scale": 0.1})
    data = tiny_data(toy4d_shards, "dynamic", samples_per_epoch=None, frame_step=2, batch_size=8)
    data.setup("fit")
    batch = next(iter(data.train_dataloader())).prepare()
    squared, _ = module.compute_losses(batch, train=True)
    module.losses.motion_squared_scale = None
    plain, _ = module.compute_losses(batch, train=True)  # same step: same tracks, frames and predictions
    assert "motion_l2" not in plain
    assert squared["motion_l2"] > 0 and squared["motion_l2"] == plain["motion"]
    # the untrained head predicts no motion: motion = mean |dX|^2 / 0.1 >= (mean |dX|)^2 / 0.1 = motion_l2^2 / 0.1
    assert squared["motion"] != plain["motion"]
    assert squared["motion"] >= squared["motion_l2"] ** 2 / 0.1 * (1 - 1e-5)


def test_motion_frames_all_supervises_every_frame_and_renders_the_same_views(toy4d_shards, monkeypatch):
    from d4s.stages import base

    module = tiny_module(DynamicFinetune, recipe={"ldrm_input": "clean"})
    with torch.no_grad():
        module.ldrm.deformation_head.out.weight.normal_(std=1e-2)  # a head that moves
    data = tiny_data(toy4d_shards, "dynamic", samples_per_epoch=None, frame_step=2, batch_size=3)
    data.setup("fit")
    batch = next(iter(data.train_dataloader())).prepare()
    seen = []

    def spy(dmu, *args):
        seen.append((dmu.detach(), args[-2]))
        return base_track_motion(dmu, *args)

    base_track_motion = base.track_motion
    monkeypatch.setattr(base, "track_motion", spy)
    targets, rendered_targets = module.compute_losses(batch, train=True)
    module.recipe.motion_frames = "all"
    every, rendered_every = module.compute_losses(batch, train=True)  # same step: same views, noise and tracks

    (dmu_targets, frames_targets), (dmu_every, frames_every) = seen
    B, T = batch.video.shape[:2]
    frames = rendered_targets["frames"]
    assert torch.equal(frames_targets, frames) and torch.equal(rendered_every["frames"], frames)
    assert torch.equal(frames_every, torch.arange(T).expand(B, T))
    assert dmu_every.shape[1] == T and dmu_targets.shape[1] == frames.shape[1]
    assert dmu_targets.abs().amax() > 1e-3
    torch.testing.assert_close(dmu_every.gather(1, frames[..., None, None].expand_as(dmu_targets)), dmu_targets)
    torch.testing.assert_close(rendered_every["rgb"], rendered_targets["rgb"])
    assert every["mse"].item() == pytest.approx(targets["mse"].item(), rel=1e-5)
    assert every["motion"] != targets["motion"]
    with pytest.raises(ValueError, match="motion_frames"):
        tiny_module(DynamicFinetune, recipe={"motion_frames": "some"})


def test_load_init_starts_from_the_previous_stages_ema_weights(tmp_path):
    stage0 = tiny_module(VideoPretrain, recipe={"ema_decay": 0.9})
    with torch.no_grad():
        for name in stage0.ema.names:  # averages unlike the trained weights
            getattr(stage0.ema, name.replace(".", "__")).normal_()
    checkpoint = {"state_dict": stage0.state_dict()}
    stage0.on_save_checkpoint(checkpoint)
    path = tmp_path / "stage0.ckpt"
    torch.save(checkpoint, path)
    stage1 = tiny_module(StaticPretrain, seed=1, recipe={"dit": "frozen"})
    stage1.load_init(path)
    parameters = dict(stage1.networks.named_parameters())
    assert stage0.ema.names and all(n.startswith("video_dit.") for n in stage0.ema.names)  # the DiT alone trains
    for name in stage0.ema.names:
        assert torch.equal(parameters[name], getattr(stage0.ema, name.replace(".", "__")))
        assert not torch.equal(parameters[name], dict(stage0.networks.named_parameters())[name])
    torch.testing.assert_close(stage1.ldrm.state_dict(), stage0.ldrm.state_dict())  # no EMA there: the weights


def test_a_frozen_dit_keeps_the_time_shift_it_was_trained_with(tmp_path):
    stage0 = tiny_module(VideoPretrain, recipe={"flow_matching": {"shift": 3.0}})
    checkpoint = {"state_dict": stage0.state_dict(), "hyper_parameters": dict(stage0.hparams)}
    stage0.on_save_checkpoint(checkpoint)  # as Lightning saves it: plain values
    path = tmp_path / "stage0.ckpt"
    torch.save(checkpoint, path)
    tiny_module(StaticPretrain, recipe={"dit": "frozen", "flow_matching": {"shift": 3.0}}).load_init(path)
    tiny_module(StaticPretrain, recipe={"dit": "camera", "flow_matching": {"shift": 1.0}}).load_init(path)  # retrained
    stage1 = tiny_module(StaticPretrain, recipe={"dit": "frozen"})  # the default shift, 1
    with pytest.raises(
        ValueError, match=r"^recipe\.flow_matching\.shift: 1\.0 here, but the frozen DiT .* 3\.0; set it"
    ):
        stage1.load_init(path)


def test_video_pretrain_trains_the_dit_alone_on_flow_matching(toy4d_shards):
    module = tiny_module(VideoPretrain)
    assert module.lpips is None and trainable(module) and all(n.startswith("video_dit.") for n in trainable(module))
    data = tiny_data(toy4d_shards, "any")
    data.setup("fit")
    terms, pictures = module.compute_losses(next(iter(data.train_dataloader())), train=True)
    assert set(terms) == {"flow_matching", "loss"} and not pictures
    assert terms["loss"] == module.losses.flow_matching * terms["flow_matching"]
    with pytest.raises(ValueError, match="recipe.dit cannot be frozen"):
        tiny_module(VideoPretrain, recipe={"dit": "frozen"})


def test_sampled_ldrm_input_is_the_dits_few_step_sample_from_the_first_frame(toy4d_shards, monkeypatch):
    module = tiny_module(StaticPretrain, recipe={"dit": "frozen", "ldrm_input": "sampled", "ldrm_sample_steps": 2})
    data = tiny_data(toy4d_shards, "static")
    data.setup("fit")
    batch = next(iter(data.train_dataloader())).prepare()
    seen = []
    ldrm_forward = module.ldrm.forward
    monkeypatch.setattr(
        module.ldrm, "forward", lambda latents, *args: seen.append(latents) or ldrm_forward(latents, *args)
    )
    frames = module.target_frames(len(batch), batch.video.shape[1], None)
    _, terms = module.reconstruct(batch, frames, torch.Generator().manual_seed(5), train=True)
    assert not terms  # a frozen DiT adds no flow-matching loss
    # the same draws by hand: the codec's latents, then the condition latents and the noise, then 2 guided steps
    generator = torch.Generator().manual_seed(5)
    z0 = module.video_dit.encode(batch.video, generator)
    image = module.video_dit.image_latents(batch.condition_image, z0.shape[1], generator)
    noise = torch.randn(z0.shape, generator=generator)
    text, null = module.text(batch.captions), module.text.null(len(batch))
    expected = module.video_dit.sample(noise, Conditioning(image, batch.plucker, text, null), 2, Guidance(), 1.0)
    torch.testing.assert_close(seen[0], expected)
    assert not torch.allclose(seen[0], z0, atol=1e-2)  # not the clean latents
    with pytest.raises(ValueError, match="ldrm_sample_steps"):
        tiny_module(StaticPretrain, recipe={"ldrm_input": "sampled", "ldrm_sample_steps": 0})


def test_adamw_is_fused_unless_mixed_precision_and_both_kernels_take_the_same_step():
    weights = [torch.nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(i))) for i in range(3)]
    config = OptimizerConfig(lr=1e-2, weight_decay=0.1)
    assert adamw(weights, config, mixed_precision=False).defaults["fused"]
    mixed = adamw(weights, config, mixed_precision=True)  # Lightning refuses clipping with a fused one there
    assert not mixed.defaults["fused"] and mixed.defaults["foreach"]
    assert not adamw(weights, OptimizerConfig(fused=False), mixed_precision=False).defaults["fused"]
    results = []
    for mixed_precision in (False, True):
        copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
        optimizer = adamw(copies, config, mixed_precision)
        for step in range(3):
            for i, w in enumerate(copies):
                w.grad = torch.sin(w.detach() * (step + i + 1))
            optimizer.step()
        results.append(copies)
    for fused, loop, start in zip(*results, weights):
        torch.testing.assert_close(fused, loop)
        assert not torch.allclose(fused, start)  # the steps moved the weights
