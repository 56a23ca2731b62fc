"""Models: the camera-controlled video DiT (CogVideoX I2V + Plücker adapter), text conditioning, and the LDRM."""

from d4s.models.config import ModelConfig
from d4s.models.heads import DeformationHead, GaussianHead
from d4s.models.ldrm import LatentDynamicReconstructionModel, LDRMConfig, LDRMOutput, parameter_count
from d4s.models.text import TextEncoder
from d4s.models.video_dit import Conditioning, VideoDiT, VideoDiTConfig

__all__ = [
    "Conditioning",
    "DeformationHead",
    "GaussianHead",
    "LDRMConfig",
    "LDRMOutput",
    "LatentDynamicReconstructionModel",
    "ModelConfig",
    "TextEncoder",
    "VideoDiT",
    "VideoDiTConfig",
    "parameter_count",
]
