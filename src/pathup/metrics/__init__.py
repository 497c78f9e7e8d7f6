"""Metrics between real and synthetic image sets (PathUp paper section 4.3).

Pure functions of feature matrices: ``pathup.metrics.fid.fid``, ``pathup.metrics.kid.kid`` and
``precision_recall`` (Improved Precision and Recall, k = 3); a ``seam_score`` for tiling artifacts; feature extractors in ``pathup.metrics.features``; the
``evaluate(cfg)`` API in ``pathup.metrics.evaluate``. (The experiments that train and generate before
evaluating live in ``pathup.experiments``.) (``fid`` and ``kid`` are not re-exported here: they
are also the submodules' names.) Names are imported lazily (torch and scipy load
only when used, so ``pathup --help`` stays fast).
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submodules=["consistency", "evaluate", "features", "fid", "kid", "prdc", "report", "samples", "seam"], submod_attrs={
    "fid": ["feature_statistics", "frechet_distance"],
    "kid": ["mmd2_unbiased", "polynomial_kernel"],
    "prdc": ["knn_radii", "pairwise_distances_chunked", "precision_recall"],
    "seam": ["grid_lines", "patch_starts", "seam_score"],
    "features": ["make_extractor"],
    "evaluate": ["evaluate", "EvaluateConfig", "compute_metrics"],
})
