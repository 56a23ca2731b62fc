"""The camera-controlled video DiT (paper Sec. 3, 4.1): CogVideoX image-to-video from diffusers plus Plücker rays.

Layout (diffusers' CogVideoX I2V): the transformer takes ``[noisy latents, image latents]`` concatenated on the
channel axis (16 + 16), with ``image latents`` = the first frame encoded by the 3D causal VAE (4x temporal, 8x
spatial compression) and zero-padded in time. Camera conditioning: Plücker maps ``[B, T, 6, H, W]`` are brought
to the latent grid by a causal 3D patchifier (first frame replicated 3 times, as the VAE does, then a convolution
of stride 4 x 8 x 8) and appended as extra input channels; the transformer's patch embedding gets a zero-initialised
projection for them, so a pretrained model computes exactly what it did before the adapter was added.

The VAE is frozen. ``forward`` takes the flow time ``t`` and returns the flow velocity of Eq. 2 for either kind of
transformer (``prediction``, :class:`VideoDiTConfig`): a ``flow`` transformer gets ``t * num_train_timesteps`` and
its output is the velocity; a ``v_prediction`` one (pretrained CogVideoX, a v-prediction DDPM with a zero-terminal-SNR
schedule) gets the signal-to-noise-matched DDPM state and timestep, and its ``v`` is converted to the velocity
(:mod:`d4s.diffusion.ddpm`). So the untuned prior samples correctly with :func:`~d4s.diffusion.euler_sample`, and
training with the flow loss starts from its own predictions. The kind is a property of the weights: it stays
through fine-tuning and is stored with them (``d4s_video_dit.json``, checkpoints' model config).

Weights come from a local directory (``transformer/`` and ``vae/`` in diffusers format, ``camera_adapter.safetensors``
and ``d4s_video_dit.json`` once trained); ``random_init: true`` builds random ones from the config dicts instead
(tiny CPU models, timing). ``codec: space_to_depth`` replaces the VAE by a weight-free codec of the same layout
(:mod:`d4s.models.codec`), for tiny models that must see their input.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from d4s.diffusion.ddpm import DDPMSchedule, flow_to_vp, v_to_flow_velocity, vp_scales
from d4s.diffusion.sampler import Guidance, euler_sample
from d4s.models.backbones import BACKBONES, BackboneName
from d4s.models.codec import SpaceToDepthCodec
from d4s.models.heads import TEMPORAL_STRIDE
from d4s.utils.checks import check_choice

ADAPTER_FILE = "camera_adapter.safetensors"
KIND_FILE = "d4s_video_dit.json"  # what the saved transformer predicts: {"prediction": ..., "scheduler": {...}}
SCHEDULER_FILE = Path("scheduler") / "scheduler_config.json"  # a diffusers folder's scheduler settings

Posterior = Literal["sample", "mean"]
Codec = Literal["vae", "space_to_depth"]
Prediction = Literal["flow", "v_prediction"]


@dataclass
class VideoDiTConfig:
    """Where the video DiT comes from. ``backbone``: ``cogvideox`` (CogVideoX I2V, the paper's) or ``wan2.2-ti2v``
    (Wan2.2-TI2V-5B; :mod:`d4s.models.backbones`). ``path``: a local directory with ``transformer/`` and ``vae/``
    (diffusers ``save_pretrained`` layout, e.g. CogVideoX-5b-I2V or Wan2.2-TI2V-5B-Diffusers). ``random_init``: build from ``transformer`` and ``vae``
    (diffusers config dicts) with random weights, which must be asked for explicitly. ``camera_channels``: width of
    the Plücker features appended to the transformer input. ``gradient_checkpointing``: recompute the transformer
    blocks' activations in the backward pass (diffusers' own switch; needed to train the 5B model at 49 frames).
    ``posterior``: how a video becomes latents: ``sample`` from the VAE's posterior (training as CogVideoX; a trained
    VAE's posterior is narrow) or its ``mean``. A randomly initialised VAE has a posterior of unit spread around a
    mean that varies far less (standard deviation ~1 vs ~0.3 with the tiny config), so samples drown the image in
    noise and a model trained on them learns to ignore its latents: random VAEs need ``mean``. ``codec``: what turns
    videos into latents: ``vae`` (CogVideoX's VAE, from ``path`` or ``vae``) or ``space_to_depth``
    (:class:`~d4s.models.codec.SpaceToDepthCodec` with the arguments in ``space_to_depth``; weight-free, for tiny
    models: a random tiny VAE keeps almost nothing of the video; ``posterior`` does not apply). ``prediction``: what
    the transformer predicts: ``flow`` (the velocity of Eq. 2 at timestep ``t * num_train_timesteps``) or
    ``v_prediction`` (a DDPM's ``v``, as pretrained CogVideoX; read through :mod:`d4s.diffusion.ddpm`). ``scheduler``:
    that DDPM's schedule (:class:`~d4s.diffusion.ddpm.DDPMSchedule`, the keys of diffusers' ``scheduler_config.json``;
    defaults: CogVideoX-5b-I2V's); its ``num_train_timesteps`` is the timestep range of both kinds. A ``path`` whose
    folder states its kind (``d4s_video_dit.json``, else ``scheduler/scheduler_config.json``) must agree with these."""

    backbone: BackboneName = "cogvideox"
    path: str | None = None
    random_init: bool = False
    transformer: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] = field(default_factory=dict)
    camera_channels: int = 16
    gradient_checkpointing: bool = False
    posterior: Posterior = "sample"
    codec: Codec = "vae"
    space_to_depth: dict[str, Any] = field(default_factory=dict)
    prediction: Prediction = "flow"
    scheduler: dict[str, Any] = field(default_factory=lambda: asdict(DDPMSchedule()))

    def __post_init__(self) -> None:
        check_choice(self.backbone, "video_dit.backbone", BackboneName)
        check_choice(self.posterior, "video_dit.posterior", Posterior)
        check_choice(self.codec, "video_dit.codec", Codec)
        check_choice(self.prediction, "video_dit.prediction", Prediction)
        self.scheduler = asdict(schedule_from_dict(self.scheduler, "video_dit.scheduler"))  # every key, as stored

    @property
    def schedule(self) -> DDPMSchedule:
        """``scheduler`` as a :class:`~d4s.diffusion.ddpm.DDPMSchedule`."""
        return DDPMSchedule(**self.scheduler)


def schedule_from_dict(values: dict[str, Any], source: str) -> DDPMSchedule:
    """A :class:`~d4s.diffusion.ddpm.DDPMSchedule` from ``values`` (missing keys: defaults), or a one-line
    ``ValueError`` naming ``source`` and the bad key."""
    known = [f.name for f in fields(DDPMSchedule)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown} (expected some of {known})")
    try:
        return DDPMSchedule(**values)
    except ValueError as error:
        raise ValueError(f"{source}.{error}") from error


def check_folder_kind(path: Path, prediction: str, schedule: DDPMSchedule) -> None:
    """Refuse a ``prediction`` and ``schedule`` other than what the folder ``path`` states: its
    ``d4s_video_dit.json`` (written by :meth:`VideoDiT.save_pretrained`), else a diffusers
    ``scheduler/scheduler_config.json`` (only the keys it has are compared; a ``FlowMatch*`` scheduler means
    ``flow``, a missing ``prediction_type`` diffusers' default ``epsilon``). Neither file: nothing to check.
    Raises a one-line ``ValueError`` naming the file and the first differing key."""
    ours = {"prediction": prediction} | {f"scheduler.{k}": v for k, v in asdict(schedule).items()}
    if (path / KIND_FILE).is_file():
        file = path / KIND_FILE
        stated = json.loads(file.read_text())
        theirs = {"prediction": ("prediction", stated.get("prediction"))}  # config key: (file key, value)
        theirs |= {f"scheduler.{k}": (f"scheduler.{k}", v) for k, v in stated.get("scheduler", {}).items()}
    elif (path / SCHEDULER_FILE).is_file():
        file = path / SCHEDULER_FILE
        stated = json.loads(file.read_text())
        flow = str(stated.get("_class_name", "")).startswith("FlowMatch")
        kind = "flow" if flow else stated.get("prediction_type", "epsilon")
        compared = list(asdict(schedule)) if kind == "v_prediction" else ["num_train_timesteps"]
        theirs = {"prediction": ("prediction_type", kind)}
        theirs |= {f"scheduler.{k}": (k, stated[k]) for k in compared if k in stated}
    else:
        return
    for key, (file_key, value) in theirs.items():
        if key in ours and ours[key] != value:
            raise ValueError(
                f"{file}: {file_key} is {value!r} there, but video_dit.{key} is {ours[key]!r}; make the video DiT "
                "config state what the folder's transformer predicts"
            )


class PluckerPatchifier(nn.Module):
    """Plücker maps ``[B, T, 6, H, W]`` -> camera features ``[B, T', C, H/8, W/8]`` on the latent grid, causally."""

    def __init__(self, channels: int, spatial: int = 8):
        super().__init__()
        self.conv = nn.Conv3d(
            6, channels, kernel_size=(TEMPORAL_STRIDE, spatial, spatial), stride=(TEMPORAL_STRIDE, spatial, spatial)
        )

    def forward(self, plucker: Tensor) -> Tensor:
        first = plucker[:, :1].expand(-1, TEMPORAL_STRIDE - 1, -1, -1, -1)
        return self.conv(torch.cat([first, plucker], dim=1).transpose(1, 2)).transpose(1, 2)


@dataclass(frozen=True)
class Conditioning:
    """What the video DiT generates a clip of ``B`` videos, ``T`` frames of ``H x W`` (``T'`` latent frames of
    ``h x w``), from: built by :meth:`VideoDiT.conditioning`, the one place training, sampling and the pipeline
    assemble it.

    Attributes:
        image: ``[B, T', C, h, w]`` the condition image's latents in the first latent frame, zeros after (CogVideoX
            I2V); never dropped.
        camera: ``[B, T, 6, H, W]`` Plücker maps (Sec. 3.2; zeros: no camera).
        text: ``[B, L, D]`` caption embeddings.
        null: ``[B or 1, L, D]`` the empty caption's embedding: the text of the unconditional input.
    """

    image: Tensor
    camera: Tensor
    text: Tensor
    null: Tensor

    def dropped(self, drop: Tensor | None = None) -> Conditioning:
        """Text and camera dropped together where ``drop [B]`` (bool) holds, everywhere when ``None``: the
        unconditional input of classifier-free guidance, and the condition dropout in training that teaches it."""
        if drop is None:
            drop = torch.ones(self.text.shape[0], dtype=torch.bool, device=self.text.device)
        text = torch.where(drop[:, None, None], self.null.to(self.text.dtype), self.text)
        camera = torch.where(drop[:, None, None, None, None], torch.zeros_like(self.camera), self.camera)
        return replace(self, text=text, camera=camera)


class VideoDiT(nn.Module):
    """A video backbone (:mod:`d4s.models.backbones`: CogVideoX I2V or Wan2.2 TI2V) + camera adapter. ``forward``
    predicts the flow velocity (see ``d4s.diffusion``) from a transformer of either kind: ``prediction`` ``flow`` or
    ``v_prediction`` with its DDPM ``schedule`` (default: CogVideoX-5b-I2V's; its ``num_train_timesteps`` also scales
    a ``flow`` transformer's timestep)."""

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        camera_channels: int,
        posterior: Posterior = "sample",
        prediction: Prediction = "flow",
        schedule: DDPMSchedule | None = None,
        backbone: BackboneName = "cogvideox",
    ):
        super().__init__()
        check_choice(prediction, "video DiT prediction", Prediction)
        check_choice(backbone, "video DiT backbone", BackboneName)
        self.backbone = BACKBONES[backbone]
        self.transformer, self.vae = transformer, vae.requires_grad_(False).eval()  # the VAE stays frozen
        self.posterior, self.prediction, self.schedule = posterior, prediction, schedule or DDPMSchedule()
        if isinstance(vae, SpaceToDepthCodec):
            self.latent_channels, spatial = vae.latent_channels, vae.spatial_compression
        else:
            self.latent_channels, spatial = self.backbone.latent_layout(vae)
        self.backbone.check(transformer, self.latent_channels)
        self.plucker = PluckerPatchifier(camera_channels, spatial)
        self.backbone.add_camera_adapter(transformer, camera_channels)

    @property
    def camera_adapter(self) -> nn.Module:
        """The zero-initialised camera projection in the transformer's patch embedding (trained with ``plucker``)."""
        return self.backbone.camera_adapter(self.transformer).camera

    def train(self, mode: bool = True) -> VideoDiT:
        """Set the transformer's mode; the frozen VAE stays in eval mode."""
        super().train(mode)
        self.vae.eval()
        return self

    @classmethod
    def from_config(cls, config: VideoDiTConfig) -> VideoDiT:
        """Load from ``config.path`` or, when ``config.random_init``, build random weights from the config dicts."""
        codec = SpaceToDepthCodec(**config.space_to_depth) if config.codec == "space_to_depth" else None
        backbone = BACKBONES[config.backbone]
        if config.random_init:
            transformer = backbone.transformer_class(**config.transformer)
            vae = codec or backbone.vae_class(**config.vae)
            model = cls(
                transformer,
                vae,
                config.camera_channels,
                config.posterior,
                config.prediction,
                config.schedule,
                config.backbone,
            )
        elif config.path is None:
            raise ValueError(
                f"video DiT: give path (a local {BACKBONES[config.backbone].release} directory) or set random_init: true"
            )
        else:
            model = cls.from_pretrained(
                config.path, config.camera_channels, codec, config.prediction, config.schedule, config.backbone
            )
            model.posterior = config.posterior
        if config.gradient_checkpointing:
            model.transformer.enable_gradient_checkpointing()
        return model

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        camera_channels: int = 16,
        codec: SpaceToDepthCodec | None = None,
        prediction: Prediction | None = None,
        schedule: DDPMSchedule | None = None,
        backbone: BackboneName = "cogvideox",
    ) -> VideoDiT:
        """Load ``backbone``'s ``path/transformer``, ``path/vae`` (unless a ``codec`` replaces the VAE) and, when present,
        ``path/camera_adapter.safetensors``.

        The transformer's kind: ``prediction`` and ``schedule`` when ``prediction`` is given (``schedule`` ``None``:
        CogVideoX-5b-I2V's), which must agree with what the folder states (:func:`check_folder_kind`); else the
        kind the folder's ``d4s_video_dit.json`` states (:meth:`save_pretrained`); else ``flow``.
        """
        path = Path(path)
        if prediction is None and (path / KIND_FILE).is_file():
            stated = json.loads((path / KIND_FILE).read_text())
            prediction = stated.get("prediction")
            check_choice(prediction, f"{path / KIND_FILE}: prediction", Prediction)
            schedule = schedule_from_dict(stated.get("scheduler", {}), f"{path / KIND_FILE}: scheduler")
        prediction, schedule = prediction or "flow", schedule or DDPMSchedule()
        check_folder_kind(path, prediction, schedule)
        if (path / KIND_FILE).is_file():
            saved = json.loads((path / KIND_FILE).read_text()).get("backbone", "cogvideox")
            if saved != backbone:
                raise ValueError(
                    f"{path / KIND_FILE}: backbone is {saved!r} there, but video_dit.backbone is {backbone!r}; set "
                    f"video_dit.backbone: {saved}"
                )
        needed = [path / "transformer" / "config.json"] + ([] if codec else [path / "vae" / "config.json"])
        missing = [p for p in needed if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"video DiT weights: {path} lacks {[str(p) for p in missing]}; expected a diffusers {backbone} "
                f"directory (transformer/ and vae/ with config.json and *.safetensors), e.g. a local copy of "
                f"{BACKBONES[backbone].release} (docs/training.md, 'The models')"
            )
        family = BACKBONES[backbone]
        model = cls(
            family.transformer_class.from_pretrained(path / "transformer"),
            codec or family.vae_class.from_pretrained(path / "vae"),
            camera_channels,
            prediction=prediction,
            schedule=schedule,
            backbone=backbone,
        )
        if (path / ADAPTER_FILE).is_file():
            result = model.load_state_dict(load_file(path / ADAPTER_FILE), strict=False)
            missing = [k for k in result.missing_keys if k.startswith(("plucker.", model.backbone.adapter_prefix()))]
            if result.unexpected_keys or missing:
                raise ValueError(
                    f"{path / ADAPTER_FILE}: does not fit camera_channels={camera_channels} (unexpected "
                    f"{result.unexpected_keys[:3]}, missing {missing[:3]})"
                )
        return model

    def save_pretrained(self, path: str | Path) -> None:
        """Write the ``from_pretrained`` layout: diffusers folders, the camera adapter's weights and the
        transformer's kind (``d4s_video_dit.json``: ``prediction`` and ``scheduler``)."""
        path = Path(path)
        owner, name = self.backbone.owner(self.transformer), self.backbone.projection[1]
        adapter = getattr(owner, name)
        setattr(owner, name, adapter.proj)  # diffusers' own layout on disk, loadable without d4s
        try:
            self.transformer.save_pretrained(path / "transformer")
        finally:
            setattr(owner, name, adapter)
        if not isinstance(self.vae, SpaceToDepthCodec):  # the codec has no weights
            self.vae.save_pretrained(path / "vae")
        camera = {
            k: v for k, v in self.state_dict().items() if k.startswith(("plucker.", self.backbone.adapter_prefix()))
        }
        save_file(camera, path / ADAPTER_FILE)
        kind = {"backbone": self.backbone.name, "prediction": self.prediction, "scheduler": asdict(self.schedule)}
        (path / KIND_FILE).write_text(json.dumps(kind, indent=2) + "\n")

    @torch.no_grad()
    def encode(self, video: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Video ``[B, T, 3, H, W]`` in ``[0, 1]`` -> scaled latents ``[B, T', C, H/8, W/8]`` (``T = 4T' - 3``),
        sampled from the VAE's posterior with ``generator``, or its mean (``posterior``, :class:`VideoDiTConfig`);
        a :class:`~d4s.models.codec.SpaceToDepthCodec` is deterministic."""
        if isinstance(self.vae, SpaceToDepthCodec):
            return self.vae(video)
        posterior = self.vae.encode(video.transpose(1, 2).to(self.vae.dtype) * 2.0 - 1.0).latent_dist
        latents = posterior.mode() if self.posterior == "mean" else posterior.sample(generator=generator)
        return self.backbone.normalise(self.vae, latents).transpose(1, 2)

    def image_latents(self, image: Tensor, latent_frames: int, generator: torch.Generator | None = None) -> Tensor:
        """The condition image ``[B, 3, H, W]`` encoded as a one-frame video, zero-padded to ``latent_frames``."""
        first = self.encode(image[:, None], generator)
        return torch.cat([first, first.new_zeros(first.shape[0], latent_frames - 1, *first.shape[2:])], dim=1)

    def conditioning(
        self,
        image: Tensor,
        camera: Tensor,
        text: Tensor,
        null: Tensor,
        latent_frames: int,
        generator: torch.Generator | None = None,
    ) -> Conditioning:
        """The :class:`Conditioning` of the condition images ``[B, 3, H, W]`` (encoded by :meth:`image_latents` to
        ``latent_frames``, the VAE's posterior sampled with ``generator``), their Plücker maps ``camera`` and the
        caption embeddings ``text`` and ``null`` (:class:`~d4s.models.text.TextEncoder`)."""
        return Conditioning(self.image_latents(image, latent_frames, generator), camera, text, null)

    def forward(self, noisy: Tensor, image_latents: Tensor, plucker: Tensor, text: Tensor, t: Tensor) -> Tensor:
        """Flow velocity ``[B, T', C, h, w]`` (``dz_t/dt`` of Eq. 2, ``noisy``'s dtype) at flow time ``t``.

        Args:
            noisy: ``[B, T', C, h, w]`` latents ``z_t`` on the flow path; image_latents: same shape (``image_latents``).
            plucker: ``[B, T, 6, 8h, 8w]`` (zeros: no camera); text: ``[B, L, D]`` (``TextEncoder``).
            t: ``[B]`` flow times in ``[0, 1]`` (1: noise). A ``flow`` transformer gets ``t * num_train_timesteps``;
                a ``v_prediction`` one the SNR-matched DDPM state and timestep, its ``v`` converted in float32 or
                wider (:mod:`d4s.diffusion.ddpm`).
        """
        if self.prediction == "flow":
            velocity = self._transformer_output(
                noisy, image_latents, plucker, text, t * self.schedule.num_train_timesteps
            )
        else:
            dtype = torch.promote_types(noisy.dtype, torch.float32)  # bf16 would round the conversion's cancellations
            a, sigma = vp_scales(t.to(dtype))
            x = flow_to_vp(noisy.to(dtype), a, sigma)
            v = self._transformer_output(x.to(noisy.dtype), image_latents, plucker, text, self.schedule.timestep(a**2))
            velocity = v_to_flow_velocity(x, v.to(dtype), a, sigma).to(noisy.dtype)
        if self.backbone.clean_first_frame:
            # the given first frame is not generated: its velocity carries z_t straight to the image latent,
            # (z_t - image) / t, so Euler ends on it and the one-step estimate z_t - t v equals it
            first = (noisy[:, :1] - image_latents[:, :1]) / t.reshape(-1, 1, 1, 1, 1).to(noisy.dtype)
            velocity = torch.cat([first.to(velocity.dtype), velocity[:, 1:]], dim=1)
        return velocity

    @torch.no_grad()
    def sample(
        self,
        noise: Tensor,
        conditioning: Conditioning,
        num_steps: int = 30,
        guidance: Guidance | None = None,
        shift: float = 1.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """Latents ``[B, T', C, h, w]`` sampled from ``noise`` (same shape) by :func:`~d4s.diffusion.euler_sample`.

        The conditional velocity sees ``conditioning``; the unconditional one of classifier-free guidance its
        :meth:`~Conditioning.dropped` form (text and camera dropped, as training drops them). Guided steps run both
        in one batch of ``2B``. The model runs in its own dtype; the ODE state stays float32 (bf16 steps of 1/30
        would not even sum to 1). ``progress(step, num_steps)`` is called after each step.
        """
        image, dtype = conditioning.image, conditioning.image.dtype
        inputs = {True: conditioning, False: conditioning.dropped()}

        def velocity(z: Tensor, t: Tensor, conditional: bool) -> Tensor:
            chosen = inputs[conditional]
            return self(z.to(dtype), image, chosen.camera, chosen.text, t).float()

        # guided steps: [conditional; unconditional] in one batch
        pair_image = torch.cat([image, image])
        pair_camera = torch.cat([inputs[True].camera, inputs[False].camera])
        pair_text = torch.cat([inputs[True].text, inputs[False].text])

        def velocity_pair(z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            z = z.to(dtype)
            v = self(torch.cat([z, z]), pair_image, pair_camera, pair_text, torch.cat([t, t])).float()
            return v.chunk(2)

        return euler_sample(velocity, noise.float(), num_steps, guidance, shift, progress, velocity_pair)

    def _transformer_output(
        self, x: Tensor, image_latents: Tensor, plucker: Tensor, text: Tensor, timestep: Tensor
    ) -> Tensor:
        """The transformer's own output ``[B, T', C, h, w]`` on ``x``, the image latents and the camera features at
        transformer timesteps ``timestep [B]``, as the backbone's diffusers I2V pipeline calls it (``Backbone.run``)."""
        camera = self.plucker(plucker).to(x.dtype)
        return self.backbone.run(self.transformer, x, image_latents, camera, text, timestep)
