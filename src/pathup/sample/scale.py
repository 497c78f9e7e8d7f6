"""Physical scale of generated images: microns per pixel from the model (PathUp section 3.2).

A trained model folder's ``pathup.json`` records ``"mpp": {"patch": float|null, "overview": float|null}``,
the microns per pixel of the tiles it was trained on (copied from the dataset's ``dataset.json``; older
models have none). A generated large image is the overview (the model's training resolution) upscaled to
``--size``, so it covers the overview's field of view::

    image MPP = overview MPP x overview width / image width

(``output_mpp``). ``--mpp`` overrides it; without either the image carries no scale.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pathup.errors import PathUpError

MODEL_META = "pathup.json"


def model_meta_file(model: str | Path | None) -> Path | None:
    """The ``pathup.json`` of a local model folder (or of a training run's ``RUN/model``); None otherwise."""
    if model is None:
        return None
    path = Path(str(model)).expanduser()
    for folder in (path, path / "model"):
        if (folder / MODEL_META).is_file():
            return folder / MODEL_META
    return None


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise PathUpError(f"{where}: mpp must be a positive number or null, got {value!r}")
    return float(value)


def read_model_mpp(model: str | Path | None) -> dict[str, float | None]:
    """``{"patch": .., "overview": ..}`` microns per pixel of a model folder's levels (None where unknown).

    Raises:
        PathUpError: a ``pathup.json`` whose ``mpp`` is not a mapping of positive numbers or nulls.
    """
    empty: dict[str, float | None] = {"patch": None, "overview": None}
    meta_file = model_meta_file(model)
    if meta_file is None:
        return empty
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return empty
    mpp = meta.get("mpp") if isinstance(meta, dict) else None
    if mpp is None:
        return empty
    if not isinstance(mpp, dict):
        raise PathUpError(f"{meta_file}: mpp must be a mapping {{patch: .., overview: ..}}, got {mpp!r}")
    return {level: _number(mpp.get(level), str(meta_file)) for level in ("patch", "overview")}


def output_mpp(model_mpp: dict[str, float | None] | None, overview_width: int, width: int,
               override: float | None = None) -> float | None:
    """Microns per pixel of an image of ``width`` pixels upscaled from an overview ``overview_width`` wide.

    ``override`` (the ``mpp`` option) wins; else ``model_mpp["overview"] x overview_width / width``; None
    when the model's overview MPP is unknown.
    """
    if override is not None:
        return float(override)
    overview = (model_mpp or {}).get("overview")
    if overview is None:
        return None
    return float(overview) * overview_width / width


def writer_kwargs(save: Any, mpp: float | None) -> dict[str, Any]:
    """``{"mpp": mpp}`` for a writer that takes the keyword (``pathup.sample.writers``), else ``{}``."""
    import inspect

    if mpp is None:
        return {}
    try:
        params = inspect.signature(save).parameters
    except (TypeError, ValueError):
        return {}
    return {"mpp": mpp} if "mpp" in params else {}
