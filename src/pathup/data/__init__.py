"""Data preparation: source readers (images and slides behind one interface, ``slides``), source listing
(folders, BRACS, CSV, whole-slide images), tiling at a physical scale, tissue mask, splits, the manifest,
and the training dataset."""
