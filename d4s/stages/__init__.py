"""The three training stages of the progressive scheme (paper Sec. 3.4) over one shared LightningModule."""

from d4s.stages.base import Diff4SplatModule, LossWeights, LPIPSConfig, OptimizerConfig, Recipe
from d4s.stages.dynamic_finetune import DynamicFinetune
from d4s.stages.hires_refine import HiResRefine
from d4s.stages.static_pretrain import StaticPretrain

__all__ = [
    "Diff4SplatModule",
    "DynamicFinetune",
    "HiResRefine",
    "LPIPSConfig",
    "LossWeights",
    "OptimizerConfig",
    "Recipe",
    "StaticPretrain",
]
