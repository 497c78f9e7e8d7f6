"""Mixed-tissue large images from a class map, with their label masks (beyond the paper; the upscaling is PathUp section 3.3, Algorithm 1).

Composition reuses PathUp's two stages with regional conditioning in the style of MultiDiffusion
(Bar-Tal et al. 2023, "MultiDiffusion: Fusing Diffusion Paths for Controlled Image Generation"):

1. Overview: the layout is resized to the overview's latent grid and feathered into soft class masks;
   text-to-image at the model's resolution predicts, every step, each class's guided noise with its
   ``overview`` prompt and blends them per position by the masks (``tracked_text2img`` with a
   ``RegionDenoiser``: one patch, one scheduler).
2. Upscale: the overview is resized, encoded and noised to ``strength`` as in ``pathup generate``; in
   patch-wise timestep tracking (PathUp Algorithm 1) each latent patch evaluates only the classes whose
   soft mask is non-zero under it, blends their guided predictions with the ``patch`` prompts by the
   masks (feathered over ``feather`` latent positions, default a quarter patch), and the patches combine
   with the pyramid weight map of Eq. 6 as before. UNet evaluations per patch are ``1 + n`` for ``n``
   classes under it (with guidance), so a patch inside one region costs what plain generation costs.

A layout with one class is plain generation: its overview comes from the same text-to-image sampler and
its upscale builds the same UNet batches, so ``compose`` gives bit for bit what ``pathup generate`` gives
for that class and seed (tested).

Outputs of ``compose_to_folder`` (``NAME`` is the layout file's stem, or ``random``)::

    OUT/NAME_s<seed>.png            the image (pyramidal .tiff from 8192 px, as generate)
    OUT/NAME_s<seed>.json           sidecar: layout, legend, prompts, seed, model, every option, UNet counts
    OUT/NAME_s<seed>_mask.png       label mask at full resolution: the class id of every pixel
    OUT/NAME_s<seed>_mask_colour.png  colour preview of the mask (long side at most --preview-size)
    OUT/NAME_s<seed>_overlay.png    the image with the mask's colours and borders over it (same size)
    OUT/NAME_s<seed>.geojson        the regions as classified annotations (QuPath: File > Import objects)
    OUT/overview/NAME_s<seed>.png   the class-mixed overview
    OUT/compose_config.yaml         the resolved options

Mask ids are the model's class indices (its ``pathup.json`` class table; listed in the sidecar's
``legend``). The image and its sidecar are written last, so an image counts as done when both exist.

``ComposeConfig`` (the options) lives with the other sampling options in ``pathup.sample.config``;
``regional`` makes one composed image and ``compose_folder`` writes a folder of them. This module imports
torch only inside functions, so that ``pathup --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pathup.errors import PathUpError
from pathup.sample.config import ComposeConfig, config_from_options, validate

if TYPE_CHECKING:
    from pathup.sample.pipeline import PathUpPipeline


def compose(pipe: "PathUpPipeline", layout: Any = None, *, legend: Any = None, num_images: int = 1,
            output_type: str = "pil", **options: Any) -> "ComposeOutput":
    """The Python API behind ``PathUpPipeline.compose`` (see there)."""
    cfg = config_from_options(ComposeConfig, options, {"num", "format", "device", "dtype", "overwrite",
                                                      "preview_size"})
    if output_type not in ("pil", "np", "latent"):
        raise PathUpError(f"unknown output_type {output_type!r}; allowed: pil, np, latent")
    cfg = validate(cfg)
    from pathup.sample.compose_folder import _settings
    from pathup.sample.regional import compose_image, make_layout

    fixed = None if layout is None else make_layout(pipe, cfg, cfg.seed, layout=layout, legend=legend)
    out = ComposeOutput()
    from tqdm.auto import tqdm

    for i in tqdm(range(num_images), desc="compose", disable=not pipe.progress or num_images < 2):
        seed = cfg.seed + i
        lay = fixed if fixed is not None else make_layout(pipe, cfg, seed)
        comp = compose_image(pipe, lay, cfg, seed, output_type="np" if output_type == "pil" else output_type)
        image = comp.image
        if output_type == "pil":
            from PIL import Image

            image = Image.fromarray(image, "RGB")
        out.images.append(image)
        out.masks.append(comp.mask)
        out.overviews.append(comp.overview)
        out.layouts.append(lay)
        out.unet.append(comp.unet)
        out.settings.append(_settings(pipe, cfg, seed, lay, layout, legend, comp.unet))
    return out


@dataclass
class ComposeOutput:
    """Result of ``PathUpPipeline.compose``: one entry per image."""

    images: list[Any] = field(default_factory=list)  # PIL (or uint8 arrays / latents)
    masks: list[np.ndarray] = field(default_factory=list)  # (H, W) class ids
    overviews: list[Any] = field(default_factory=list)  # PIL
    layouts: list[Any] = field(default_factory=list)  # pathup.sample.layout.Layout
    unet: list[dict[str, Any]] = field(default_factory=list)  # UNet evaluation counts
    settings: list[dict[str, Any]] = field(default_factory=list)

