"""The archive on disk or S3: storage, shards and their commit markers (stats), DEST's
manifest, packing image folders into shards and exporting shards back to image files.
Imports `pipeline.imaging` only."""
