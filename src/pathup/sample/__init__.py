"""Sampling: overview generation, patch-wise timestep tracking, weight maps, tiled VAE, image writers.

* ``weights``: the pyramid weight map of Eq. 6 (and uniform weights for the Table 4 ablation).
* ``grid``: the overlapping, border-aligned latent patch grid.
* ``tracking``: Algorithm 1 as a pure function on tensors (``track_patches``, ``tracked_img2img``).
* ``overview``: the low-resolution reference overview (text-to-image).
* ``vae_tiling``: encode/decode in blended tiles.
* ``writers``: PNG with settings, pyramidal TIFF, JSON sidecars.
* ``pipeline``: ``PathUpPipeline``, the Python API that the CLI wraps.
* ``generate``: ``generate_to_folder`` / ``upscale_to_file``, the folder layout and resume logic that
  ``pathup generate`` / ``pathup upscale`` wrap; ``class_dirname`` (a class's folder name) and
  ``read_generated`` (class and level of every image of such a folder).
* ``compose``: ``ComposeConfig`` and ``compose_to_folder``, mixed-tissue images from a class map, that
  ``pathup compose`` wraps (``PathUpPipeline.compose`` in memory).
* ``layout``: class maps for ``compose``: ``Layout``, ``load_layout``, ``read_label_image``,
  ``read_region_json``, ``read_legend``, ``random_layout``, ``geojson_regions``.

Submodules import torch; this package's top level stays light (attributes load on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PathUpPipeline": "pathup.sample.pipeline",
    "PathUpOutput": "pathup.sample.pipeline",
    "SampleConfig": "pathup.sample.config",
    "parse_size": "pathup.sample.config",
    "pyramid_weights": "pathup.sample.weights",
    "uniform_weights": "pathup.sample.weights",
    "patch_weights": "pathup.sample.weights",
    "patch_grid": "pathup.sample.grid",
    "PatchBox": "pathup.sample.grid",
    "track_patches": "pathup.sample.tracking",
    "tracked_img2img": "pathup.sample.tracking",
    "guided_denoiser": "pathup.sample.tracking",
    "generate_overview": "pathup.sample.overview",
    "encode_tiled": "pathup.sample.vae_tiling",
    "decode_tiled": "pathup.sample.vae_tiling",
    "save_png": "pathup.sample.writers",
    "save_tiff": "pathup.sample.writers",
    "read_settings": "pathup.sample.writers",
    "generate_to_folder": "pathup.sample.generate",
    "upscale_to_file": "pathup.sample.generate",
    "GenerateResult": "pathup.sample.generate",
    "image_paths": "pathup.sample.generate",
    "seeds_for_process": "pathup.sample.generate",
    "is_done": "pathup.sample.generate",
    "pending_seeds": "pathup.sample.generate",
    "upscale_path": "pathup.sample.generate",
    "class_dirname": "pathup.sample.generate",
    "read_generated": "pathup.sample.generate",
    "GeneratedImage": "pathup.sample.generate",
    # compose (the function ``compose`` is ``PathUpPipeline.compose``; the name here is the submodule)
    "ComposeConfig": "pathup.sample.compose",
    "ComposeResult": "pathup.sample.compose",
    "ComposeOutput": "pathup.sample.compose",
    "compose_to_folder": "pathup.sample.compose",
    "Layout": "pathup.sample.layout",
    "load_layout": "pathup.sample.layout",
    "read_label_image": "pathup.sample.layout",
    "read_region_json": "pathup.sample.layout",
    "read_legend": "pathup.sample.layout",
    "random_layout": "pathup.sample.layout",
    "geojson_regions": "pathup.sample.layout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pathup.sample' has no attribute {name!r}")
