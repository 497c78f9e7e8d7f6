"""Physical scale of generated images: microns per pixel from the model (PathUp section 3.2).

A trained model folder's ``pathup.json`` records ``"mpp": {"patch": float|null, "overview": float|null}``,
the microns per pixel of the tiles it was trained on (copied from the dataset's ``dataset.json``; older
models have none). A generated large image is the overview (the model's training resolution) upscaled to
``--size``, so it covers the overview's field of view::

    image MPP = overview MPP x overview width / image width

(``output_mpp``). ``--mpp`` overrides it; without either the image carries no scale.

The paper's upscaling goes from the overview's scale to the patch level's: the model has learned tissue
at those two scales and no finer. So an upscaled image's natural width is::

    overview width x overview MPP / patch MPP

(``natural_width``; 2048 px for the paper's 2048 px overview fields at 512 px), and a larger ``--size``
magnifies beyond what the model learned: ``check_scale`` warns, naming the natural width. To show a
*larger field* at the patch scale, generate with ``--strength 1``: tracking then starts from noise (the
overview's content does not survive), every latent patch denoises with the patch prompt, and the image
has the patch level's MPP whatever its size.
"""

from __future__ import annotations

import logging
from typing import Any

from pathup.errors import PathUpError

log = logging.getLogger(__name__)

LEVELS = ("patch", "overview")
FINER_TOLERANCE = 0.95  # an image up to 5 % finer than the patch level's scale passes without a warning


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
               override: float | None = None, strength: float | None = None) -> float | None:
    """Microns per pixel of an image of ``width`` pixels upscaled from an overview ``overview_width`` wide.

    ``override`` (the ``mpp`` option) wins; at ``strength`` 1 (generated from noise at the patch level) the
    model's patch MPP; else ``model_mpp["overview"] x overview_width / width``; None when unknown.
    """
    if override is not None:
        return float(override)
    if strength is not None and strength >= 1.0:
        patch = (model_mpp or {}).get("patch")
        return None if patch is None else float(patch)
    overview = (model_mpp or {}).get("overview")
    if overview is None:
        return None
    return float(overview) * overview_width / width


def natural_width(model_mpp: dict[str, float | None] | None, overview_width: int) -> int | None:
    """The width at which an upscaled overview reaches the patch level's scale (PathUp section 3.3):
    ``overview_width x overview MPP / patch MPP``; None when either scale is unknown."""
    mpp = model_mpp or {}
    if mpp.get("overview") is None or mpp.get("patch") is None:
        return None
    return int(round(overview_width * float(mpp["overview"]) / float(mpp["patch"])))


def check_scale(model_mpp: dict[str, float | None] | None, overview_width: int, width: int, mpp: float | None) -> bool:
    """Warn when an image of ``mpp`` microns per pixel is finer than the model's patch level; False then.

    Such an image magnifies the tissue beyond any scale the model was trained on (the demo once labelled a
    5x magnified 74 um field 0.097 um/px, finer than any scanner).
    """
    patch = (model_mpp or {}).get("patch")
    if mpp is None or patch is None or mpp >= FINER_TOLERANCE * float(patch):
        return True
    natural = natural_width(model_mpp, overview_width)
    log.warning("an image %d px wide at %.3f um/px is finer than the model's patch level (%.3f um/px): it "
                "magnifies the tissue beyond what the model learned. The overview's field reaches the patch "
                "scale at %s px; for a larger field at the patch scale use --strength 1", width, mpp, float(patch),
                natural if natural is not None else "its natural width")
    return False
