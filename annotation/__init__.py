"""Annotation pipeline: raw datasets to webdataset shards of metric 4D clips (see docs/annotation.md)."""
