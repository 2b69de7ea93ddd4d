"""Webdataset shards for every stage: format, writer, loader, packing."""
