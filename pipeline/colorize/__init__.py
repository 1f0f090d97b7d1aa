"""The run: inference on a batch (predict) in a number type (precision; int8 by the model's
twin), each image's previews and the shard's strip, the shard worker (a Ray actor's callable)
and the distributor over the cluster.
Imports `pipeline.imaging` and `pipeline.archive`."""
