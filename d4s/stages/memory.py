"""The memory plan of a training stage on one GPU, computed without a GPU.

    python -m d4s.stages.memory --config configs/stage3.yaml [--gpu-gib 80] [--json plan.json]

Per component (the video DiT with its camera adapter, the VAE, T5, the LDRM, LPIPS), from the stage's own modules
built on the meta device (no memory, no weight files read) with what trains set by the stage config:

- **weights** (float32, as they are loaded), **gradients** (float32, trained weights only) and **AdamW** state
  (two float32 moments per trained weight), divided by the number of ranks for the networks that
  :class:`~d4s.stages.sharding.ShardedStrategy` shards (the DiT, the LDRM, T5);
- what the strategy and precision add: DDP's gradient buckets (a second float32 copy of the gradients, Lightning's
  default ``gradient_as_bucket_view=False``), the sharded strategy's gathered units (the largest unit whole, twice:
  the one computing and the one prefetched), and under ``bf16-mixed`` autocast's cache of a bfloat16 copy of every
  trained weight, kept for the whole forward pass;
- **activations**: measured, not estimated: one training step's networks (the VAE's encoding, the DiT's forward
  where the recipe runs it, the LDRM's) run forward and backward on meta tensors of the data config's batch, at its
  frame count and size, and :class:`LiveBytes` reports the peak of the bytes alive that the step created. Gradient checkpointing is as the model config sets it. Attention is counted as
  FlashAttention keeps it on a GPU (output and log-sum-exp saved, no ``N x N`` matrix), and every activation in float32:
  an upper bound for ``bf16-mixed``, which keeps matrix products in bfloat16;
- **rendering**: estimated from gsplat's saved buffers, :data:`RENDER_BYTES_PER_GAUSSIAN_VIEW` per Gaussian and
  target view (its projection: 2D mean, conic, colour, opacity, depth, radii, and the deformed mean, rotation and
  scale), and :data:`TILES_PER_GAUSSIAN` tile intersections of 12 bytes each (an assumption: it depends on the
  scene); checked on a GPU by ``bench/gpu_suite.sh``.

The total is compared with ``--gpu-gib``. Not counted: the CUDA context and allocator fragmentation (a few GiB),
T5's activations (no gradient; under 1 GiB), data loader memory (host).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import json
import sys
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from d4s.data.batch import Batch
from d4s.models.ldrm import parameter_count
from d4s.stages.base import Diff4SplatModule, LPIPSConfig
from d4s.utils.config import read_yaml_mapping

GIB = 2**30
#: gsplat's saved buffers per Gaussian and rendered view: means2d 8, conics 12, colours 12, opacity 4, depth 4,
#: radii 8, and the deformed means 12, rotations 16 and scales 12 (float32)
RENDER_BYTES_PER_GAUSSIAN_VIEW = 88
#: tile intersections per Gaussian and view (16 x 16 tiles), 12 bytes each (tile id int64, flatten id int32)
TILES_PER_GAUSSIAN = 4
#: UMT5-XXL's vocabulary (Wan2.2's text encoder has T5 XXL's layers over it)
UMT5_XXL_VOCABULARY = 256384
#: CogVideoX-5b-I2V's text encoder (T5 v1.1 XXL), used when the config's folder holds no config.json
T5_XXL = {
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "vocab_size": 32128,
    "feed_forward_proj": "gated-gelu",
}


@dataclass
class Row:
    """Bytes on one GPU for one component or one addition of the strategy."""

    name: str
    parameters: int = 0
    trained: int = 0
    weights: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


@dataclass
class StagePlan:
    """What :func:`memory_plan` read from a stage config."""

    module_class: type[Diff4SplatModule]
    init_args: dict[str, Any]
    model_config: Path
    world_size: int
    sharded: bool
    mixed_precision: bool
    batch_size: int
    frames: int
    height: int
    width: int


def read_stage(config: Path) -> StagePlan:
    """The stage config's module, strategy, precision and clip shape (its ``data:`` file read relative to it)."""
    stage = read_yaml_mapping(config)
    trainer, model = stage.get("trainer", {}), stage.get("model", {})
    data = stage.get("data", {})
    if isinstance(data, str):
        data = read_yaml_mapping(config.parent / data)
    module_path, _, name = model.get("class_path", "d4s.stages.DynamicFinetune").rpartition(".")
    module_class = getattr(importlib.import_module(module_path), name)
    strategy = trainer.get("strategy", "ddp")
    strategy = strategy.get("class_path", "") if isinstance(strategy, dict) else str(strategy)
    init_args = dict(model.get("init_args", {}))
    clip = data.get("clip", {})
    devices = trainer.get("devices", 1)
    return StagePlan(
        module_class=module_class,
        init_args=init_args,
        model_config=Path(init_args.pop("model_config", "configs/model/paper.yaml")),
        world_size=int(devices if isinstance(devices, int) else 1) * int(trainer.get("num_nodes", 1)),
        sharded=strategy.endswith("ShardedStrategy"),
        mixed_precision=str(trainer.get("precision", "32-true")).endswith("mixed"),
        batch_size=int(data.get("batch_size", 1)),
        frames=int(clip.get("num_frames", 49)),
        height=int(clip.get("height", 512)),
        width=int(clip.get("width", 512)),
    )


def meta_module(plan: StagePlan, folder: Path) -> tuple[Diff4SplatModule, nn.Module | None]:
    """The stage's module on the meta device with random weights (its model config with ``random_init``), and T5 (built
    from its ``config.json`` when the folder is there, else CogVideoX's T5 XXL or Wan2.2's UMT5 XXL sizes; ``None``
    without T5)."""
    from transformers import AutoConfig, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    model = yaml.safe_load(plan.model_config.read_text())
    model["video_dit"]["random_init"] = True
    text = model.get("text", {})
    model["text"] = {"mode": "null", "max_length": text.get("max_length", 226), "dim": text.get("dim", 4096)}
    (folder / "model.yaml").write_text(yaml.safe_dump(model))
    args = {k: v for k, v in plan.init_args.items() if k != "init_from"}
    args["lpips"] = LPIPSConfig(net=args.get("lpips", {}).get("net", "vgg"), backbone_path=None, random_backbone=True)
    with torch.device("meta"):
        module = plan.module_class(str(folder / "model.yaml"), **args)
        t5 = None
        if text.get("mode") == "t5":
            stored = Path(text.get("path", "")) / "config.json"
            if stored.is_file():
                t5_config = AutoConfig.from_pretrained(stored.parent)
            elif model["video_dit"].get("backbone") == "wan2.2-ti2v":  # Wan2.2's UMT5-XXL: T5 XXL's layers
                t5_config = UMT5Config(**T5_XXL | {"vocab_size": UMT5_XXL_VOCABULARY})
            else:
                t5_config = T5Config(**T5_XXL)
            encoder_class = UMT5EncoderModel if t5_config.model_type == "umt5" else T5EncoderModel
            t5 = encoder_class(t5_config).requires_grad_(False)
    return module, t5


class _FlashAttentionMemory(torch.autograd.Function):
    """Scaled dot-product attention as FlashAttention holds it: the output, and q, k, v, the output and a float32
    log-sum-exp ``[B, heads, N]`` saved for backward (values are not computed: meta tensors)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def flash_attention_memory() -> Iterator[None]:
    """Route ``F.scaled_dot_product_attention`` through :class:`_FlashAttentionMemory` (see there)."""
    original = F.scaled_dot_product_attention

    def attention(query, key, value, *args, **kwargs):  # diffusers passes them by name
        return _FlashAttentionMemory.apply(query, key, value)

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def meta_batch(plan: StagePlan) -> Batch:
    """A batch of the stage's clip shape on the meta device."""
    B, T, H, W = plan.batch_size, plan.frames, plan.height, plan.width
    with torch.device("meta"):
        flags = torch.empty(B, dtype=torch.bool)
        return Batch(
            keys=[f"clip{b}" for b in range(B)],
            datasets=["meta"] * B,
            captions=[""] * B,
            video=torch.empty(B, T, 3, H, W),
            K=torch.empty(B, T, 3, 3),
            c2w=torch.empty(B, T, 4, 4),
            times=torch.empty(B, T),
            frame_indices=torch.empty(B, T, dtype=torch.long),
            depth=torch.empty(B, T, H, W),
            has_depth=flags,
            dynamic_mask=torch.empty(B, T, H, W, dtype=torch.bool),
            has_dynamic_mask=flags,
            track_xyz=torch.empty(B, 0, T, 3),
            track_visible=torch.empty(B, 0, T, dtype=torch.bool),
            track_valid=torch.empty(B, 0, dtype=torch.bool),
            has_tracks=flags,
            is_dynamic=flags,
            is_padding=flags,
            plucker=torch.empty(B, T, 6, H, W),  # what Batch.prepare computes (its camera checks read values)
        )


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors that ops create inside it, counted while they are alive (each storage once, views and
    in-place results included), and their peak: what an allocator would hold for them. Storages that existed
    before (:meth:`ignore`: weights, inputs) are not counted. Works on the meta device, where nothing is allocated."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen = WeakIdKeyDictionary()  # storage -> weak reference whose callback subtracts its bytes

    def ignore(self, tensors: Iterable[Tensor]) -> None:
        for tensor in tensors:
            self._seen[tensor.untyped_storage()] = None

    def _freed(self, size: int, _reference: weakref.ref) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, Tensor):
                storage = tensor.untyped_storage()
                if storage not in self._seen:
                    size = storage.nbytes()
                    self._seen[storage] = weakref.ref(storage, functools.partial(self._freed, size))
                    self.live += size
                    self.peak = max(self.peak, self.live)
        return out


def step_activations(module: Diff4SplatModule, plan: StagePlan) -> tuple[float, int]:
    """Peak activation and temporary bytes of one training step's networks, measured on meta tensors (see the
    module docstring), and the number of Gaussians per clip."""
    module.train()
    batch = meta_batch(plan)
    with torch.device("meta"):
        frames = torch.zeros(plan.batch_size, module.recipe.num_target_views, dtype=torch.long)
    trained = [p for p in module.parameters() if p.requires_grad]  # gradients: counted by the plan, dropped here
    hooks = [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None)) for p in trained]
    counter = LiveBytes()
    counter.ignore([*module.parameters(), *module.buffers()])
    counter.ignore(x for x in vars(batch).values() if isinstance(x, Tensor))
    with counter, flash_attention_memory():
        output, terms = module.reconstruct(batch, frames, None, train=True)
        outputs = [output.means, output.sh, output.opacity_logits, *terms.values()]
        outputs += [x for x in (output.dmu, output.dq, output.ds) if x is not None]
        loss = sum(x.float().sum() for x in outputs)
        gaussians = int(output.means.shape[1])
        del output, terms, outputs
        if loss.requires_grad:
            loss.backward()
    for hook in hooks:
        hook.remove()
    return float(counter.peak), gaussians


def memory_plan(config: Path) -> tuple[list[Row], StagePlan]:
    """The rows of the plan of stage ``config`` on one GPU (see the module docstring)."""
    plan = read_stage(config)
    with tempfile.TemporaryDirectory() as folder:
        module, t5 = meta_module(plan, Path(folder))
    shards = plan.world_size if plan.sharded else 1
    parts: list[tuple[str, list[nn.Module], int]] = [
        ("video DiT (+ camera adapter)", [module.video_dit.transformer, module.video_dit.plucker], shards),
        ("VAE", [module.video_dit.vae], 1),
        ("text encoder (T5 or UMT5)", [t5] if t5 is not None else [], shards),
        ("LDRM", [module.ldrm], shards),
        ("LPIPS", [module.lpips] if module.lpips is not None else [], 1),
    ]
    rows = []
    for name, modules, split in parts:
        count = sum(parameter_count(m) for m in modules)
        trained = sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
        if modules:
            rows.append(Row(name, count, trained, 4 * count / split, 4 * trained / split, 8 * trained / split))
    trained = sum(row.trained for row in rows)
    if plan.sharded:
        units = [*module.video_dit.backbone.blocks(module.video_dit.transformer), *module.ldrm.blocks]
        units += list(t5.encoder.block) if t5 is not None else []
        rows.append(Row("gathered units (2 x the largest)", weights=2 * 4 * max(parameter_count(u) for u in units)))
    else:
        rows.append(Row("DDP gradient buckets", gradients=4 * trained))
    if plan.mixed_precision:
        rows.append(Row("autocast's bf16 weight copies", weights=2 * trained))
    activations, gaussians = step_activations(module, plan)
    rows.append(Row("activations (measured, float32)", activations=activations))
    views = plan.batch_size * module.recipe.num_target_views
    render = gaussians * views * (RENDER_BYTES_PER_GAUSSIAN_VIEW + 12 * TILES_PER_GAUSSIAN)
    rows.append(Row(f"rendering ({gaussians / 1e6:.2f} M Gaussians x {views} views, est.)", activations=render))
    return rows, plan


def format_plan(rows: list[Row], plan: StagePlan, config: Path, gpu_gib: float) -> str:
    strategy = f"sharded over {plan.world_size} ranks" if plan.sharded else f"DDP, {plan.world_size} ranks"
    precision = "bf16-mixed" if plan.mixed_precision else "float32"
    lines = [
        (
            f"{config}: {plan.module_class.__name__}, {strategy}, {precision}, batch {plan.batch_size} x "
            f"{plan.frames} frames x {plan.height}x{plan.width} per GPU"
        ),
        (
            f"{'component':44s} {'params':>9s} {'trained':>9s} {'weights':>8s} {'grads':>8s} {'AdamW':>8s} "
            f"{'activ.':>8s} {'total':>8s}  (GiB)"
        ),
    ]
    for row in rows:
        counts = f"{row.parameters / 1e6:8.1f}M {row.trained / 1e6:8.1f}M" if row.parameters else " " * 19
        lines.append(
            f"{row.name:44s} {counts} {row.weights / GIB:8.2f} {row.gradients / GIB:8.2f} "
            f"{row.optimizer / GIB:8.2f} {row.activations / GIB:8.2f} {row.total / GIB:8.2f}"
        )
    total = sum(row.total for row in rows) / GIB
    verdict = "fits" if total <= gpu_gib else "does NOT fit"
    lines.append(f"{'total per GPU':44s} {'':19s} {'':35s} {'':8s} {total:8.2f}  -> {verdict} in {gpu_gib:g} GiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m d4s.stages.memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, type=Path, help="a stage config (configs/stage{1,2,3}.yaml)")
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="the GPU's memory to compare with (GiB)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    try:
        rows, plan = memory_plan(args.config)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_plan(rows, plan, args.config, args.gpu_gib))
    if args.json:
        record = {"config": str(args.config), "gpu_gib": args.gpu_gib, "rows": [dataclasses.asdict(r) for r in rows]}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
