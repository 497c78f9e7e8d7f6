"""Metrics between real and synthetic image sets (PathUp paper section 4.3, SPEC.md section 6).

Pure functions of feature matrices: ``pathup.metrics.fid.fid``, ``pathup.metrics.kid.kid`` and
``precision_recall`` (Improved Precision and Recall, k = 3); a ``seam_score`` for tiling artifacts; feature extractors in ``pathup.metrics.features``; the
``evaluate(cfg)`` API in ``pathup.metrics.evaluate``. (``fid`` and ``kid`` are not re-exported here: they
are also the submodules' names.) Names are imported lazily (torch and scipy load
only when used, so ``pathup --help`` stays fast).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "feature_statistics": "fid", "frechet_distance": "fid", "mmd2_unbiased": "kid", "polynomial_kernel": "kid",
    "knn_radii": "prdc", "pairwise_distances_chunked": "prdc", "precision_recall": "prdc",
    "grid_lines": "seam", "patch_starts": "seam", "seam_score": "seam",
    "make_extractor": "features", "evaluate": "evaluate", "EvaluateConfig": "evaluate",
    "compute_metrics": "evaluate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
