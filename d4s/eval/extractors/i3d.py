"""I3D video features for FVD and KVD (StyleGAN-V's FVD protocol, Skorokhodov et al. 2022).

The network is the TorchScript port of the Kinetics-400 I3D that StyleGAN-V ships as ``i3d_torchscript.pt``. As
StyleGAN-V's ``compute_fvd`` calls it (``src/metrics/frechet_video_distance.py`` and ``metric_utils.py``, checked at
commit 1f630af), it gets the videos as uint8 ``[B, 3, T, H, W]`` at their own size with ``rescale=True, resize=True,
return_features=True``: the network itself maps the values to ``[-1, 1]`` and resizes every frame to 224 x 224 (the
whole frame, not a crop: a non-square video is squeezed), and returns the 400-d logits averaged over time, the
features FVD compares. Frames in ``[0, 1]`` become uint8 as StyleGAN-V turns its generator's ``[-1, 1]`` output into
images: ``x * 127.5 + 128``, clamped, truncated.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from d4s.eval.extractors._preprocess import check_frames
from d4s.eval.extractors.errors import require_path
from d4s.utils.checks import check_shape

CALL_FLAGS = ("rescale", "resize", "return_features")
#: how the network is called; raised when that changes, so that cached features are computed again (2: StyleGAN-V's
#: own call, uint8 frames with rescale and resize; 1 resized and cropped them here)
PROTOCOL_VERSION = 2


class I3D:
    """FVD/KVD features of videos: ``I3D.load(path).features(videos [B, T, 3, H, W]) -> [B, 400]``.

    ``min_frames``: shorter clips are refused (the I3D's temporal pooling needs about 10 frames; StyleGAN-V uses 16).
    ``batch_size``: videos per forward pass; ``device``: where the network runs (features are returned on the CPU).
    """

    def __init__(
        self,
        model: torch.jit.ScriptModule,
        min_frames: int = 10,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
    ):
        self.model, self.min_frames, self.batch_size, self.device = model, min_frames, batch_size, torch.device(device)

    @classmethod
    def load(
        cls, path: str | Path | None, min_frames: int = 10, batch_size: int = 8, device: str | torch.device = "cpu"
    ) -> I3D:
        """Load ``i3d_torchscript.pt`` onto ``device``.

        Raises ``MissingWeights`` when ``path`` is ``None`` or absent, ``ValueError`` naming the file when it is not
        a TorchScript module with the StyleGAN-V call signature.
        """
        path = require_path("i3d", path)
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format the weights exist in
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"FVD/KVD (I3D): {path} is not a TorchScript module: {err}") from err
        try:
            arguments = {argument.name for argument in model.forward.schema.arguments}
        except (AttributeError, RuntimeError) as err:
            raise ValueError(f"FVD/KVD (I3D): {path} has no scripted forward: {err}") from err
        missing = [flag for flag in CALL_FLAGS if flag not in arguments]
        if missing:
            raise ValueError(
                f"FVD/KVD (I3D): {path}: forward lacks {missing}; expected StyleGAN-V's i3d_torchscript.pt, "
                f"forward(x, rescale, resize, return_features)"
            )
        return cls(model.eval(), min_frames=min_frames, batch_size=batch_size, device=device)

    @staticmethod
    def preprocess(video: Tensor) -> Tensor:
        """``video [T, 3, H, W]`` in ``[0, 1]`` -> the I3D input ``[3, T, H, W]`` uint8 (StyleGAN-V's conversion)."""
        return ((video * 2.0 - 1.0) * 127.5 + 128.0).clamp(0, 255).to(torch.uint8).permute(1, 0, 2, 3).contiguous()

    @torch.no_grad()
    def features(self, videos: Tensor) -> Tensor:
        """``videos [B, T, 3, H, W]`` float in ``[0, 1]`` -> features ``[B, 400]`` float32 (time-averaged logits)."""
        check_shape(videos, "videos", (None, None, 3, None, None))
        if videos.shape[1] < self.min_frames:
            raise ValueError(f"videos: I3D needs at least {self.min_frames} frames per clip, got {videos.shape[1]}")
        check_frames(videos.flatten(0, 1), "videos")
        out = []
        for start in range(0, videos.shape[0], self.batch_size):
            clips = videos[start : start + self.batch_size].to(self.device, torch.float32)
            batch = torch.stack([self.preprocess(video) for video in clips])
            feats = self.model(batch, rescale=True, resize=True, return_features=True)
            if not isinstance(feats, Tensor) or feats.dim() != 2 or feats.shape[0] != batch.shape[0]:
                got = list(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
                raise ValueError(f"I3D: the model returned {got}, expected features [{batch.shape[0]}, 400]")
            out.append(feats.float().cpu())
        return torch.cat(out)
