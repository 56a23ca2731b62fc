"""The three training stages of the progressive scheme (paper Sec. 3.4) over one shared LightningModule, and an
optional video pre-training stage for models without a pretrained video prior."""

from d4s.stages.base import Diff4SplatModule, LPIPSConfig, OptimizerConfig, Recipe
from d4s.stages.dynamic_finetune import DynamicFinetune
from d4s.stages.hires_refine import HiResRefine
from d4s.stages.objective import LossWeights, StageConfig
from d4s.stages.static_pretrain import StaticPretrain
from d4s.stages.video_pretrain import VideoPretrain

__all__ = [
    "Diff4SplatModule",
    "DynamicFinetune",
    "HiResRefine",
    "LPIPSConfig",
    "LossWeights",
    "OptimizerConfig",
    "Recipe",
    "StageConfig",
    "StaticPretrain",
    "VideoPretrain",
]
