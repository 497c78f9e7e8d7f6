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

import lazy_loader

# One lazy-import mechanism for the package (scientific-python's lazy_loader): names load on first use.
__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submodules=["compose", "config", "generate", "grid", "layout", "overview", "pipeline", "tracking", "vae_tiling", "weights", "writers"], submod_attrs={
    "pipeline": ["PathUpPipeline", "PathUpOutput"],
    "config": ["SampleConfig", "parse_size"],
    "weights": ["pyramid_weights", "uniform_weights", "patch_weights"],
    "grid": ["patch_grid", "PatchBox"],
    "tracking": ["track_patches", "tracked_img2img", "guided_denoiser"],
    "overview": ["generate_overview"],
    "vae_tiling": ["encode_tiled", "decode_tiled"],
    "writers": ["save_png", "save_tiff", "read_settings"],
    "generate": ["generate_to_folder", "upscale_to_file", "GenerateResult", "image_paths", "seeds_for_process", "is_done", "pending_seeds", "upscale_path", "class_dirname", "read_generated", "GeneratedImage"],
    "compose": ["ComposeConfig", "ComposeResult", "ComposeOutput", "compose_to_folder"],
    "layout": ["Layout", "load_layout", "read_label_image", "read_region_json", "read_legend", "random_layout", "geojson_regions"],
})
