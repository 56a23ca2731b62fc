"""Training data: the shard record (schema), webdataset streaming and the DataModule."""
