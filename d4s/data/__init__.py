"""Training data: the shard record (schema), clip sampling, webdataset streaming and the DataModule."""

from d4s.data.batch import Batch, collate_clips
from d4s.data.clips import ClipConfig, ClipSample, sample_clip
from d4s.data.datamodule import ClipDataModule, ClipLoader, SplitConfig
from d4s.data.shards import ClipDataset
from d4s.data.sources import ShardInfo, ShardSource, resolve_source

__all__ = [
    "Batch",
    "ClipConfig",
    "ClipDataModule",
    "ClipDataset",
    "ClipLoader",
    "ClipSample",
    "ShardInfo",
    "ShardSource",
    "SplitConfig",
    "collate_clips",
    "resolve_source",
    "sample_clip",
]
