"""Physical scale of generated images: microns per pixel from the model (PathUp section 3.2).

A trained model folder's ``pathup.json`` records ``"mpp": {"patch": float|null, "overview": float|null}``,
the microns per pixel of the tiles it was trained on (copied from the dataset's ``dataset.json``; older
models have none). A generated large image is the overview (the model's training resolution) upscaled to
``--size``, so it covers the overview's field of view::

    image MPP = overview MPP x overview width / image width

(``output_mpp``). ``--mpp`` overrides it; without either the image carries no scale.
"""

from __future__ import annotations

from typing import Any

from pathup.errors import PathUpError

LEVELS = ("patch", "overview")


def model_mpp(mpp: Any, where: str = "model") -> dict[str, float | None]:
    """``{"patch": .., "overview": ..}`` microns per pixel of a model's levels (None where unknown), from
    ``LDM.mpp`` (the ``"mpp"`` of the model folder's ``pathup.json``; None for older models).

    Raises:
        PathUpError: naming ``where``, for a value that is not a mapping of positive numbers or nulls.
    """
    from pathup.data.slides import check_mpp

    if mpp is None:
        return {level: None for level in LEVELS}
    if not isinstance(mpp, dict):
        raise PathUpError(f"{where}: mpp must be a mapping {{patch: .., overview: ..}}, got {mpp!r}")
    return {level: check_mpp(mpp.get(level), f"{where}: mpp {level}") for level in LEVELS}


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
