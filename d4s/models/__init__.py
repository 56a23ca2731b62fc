"""Models: the Latent Dynamic Reconstruction Model and its heads (the camera-controlled video DiT arrives next)."""

from d4s.models.heads import DeformationHead, GaussianHead
from d4s.models.ldrm import LatentDynamicReconstructionModel, LDRMConfig, LDRMOutput, parameter_count

__all__ = [
    "DeformationHead",
    "GaussianHead",
    "LDRMConfig",
    "LDRMOutput",
    "LatentDynamicReconstructionModel",
    "parameter_count",
]
