"""Data preparation: sources (folders, BRACS, CSV, whole-slide images), tiling, tissue mask,
splits, the manifest, and the training dataset."""
