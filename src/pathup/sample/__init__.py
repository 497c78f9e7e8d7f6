"""Sampling: overview generation, patch-wise timestep tracking, weight maps, tiled VAE, image writers.

* ``weights``: the pyramid weight map of Eq. 6 (and uniform weights for the Table 4 ablation).
* ``grid``: the overlapping, border-aligned latent patch grid.
* ``tracking``: Algorithm 1 as a pure function on tensors (``track_patches``, ``tracked_img2img``);
  ``denoisers`` (classifier-free guidance, MultiDiffusion's region rule), ``step_noise`` (canvas step
  noise of stochastic samplers) and ``batching`` (patches per UNet call) are its parts.
* ``overview``: the low-resolution reference overview (text-to-image); ``to_pil`` for any image given.
* ``vae_tiling``: encode/decode in blended tiles.
* ``writers``: PNG with settings, pyramidal TIFF, JSON sidecars.
* ``config``: ``SampleConfig`` and ``ComposeConfig`` (the options, ``size`` parsed once into a ``Size``) and
  their ``validate``.
* ``pipeline``: ``PathUpPipeline``, a ``diffusers.DiffusionPipeline`` and the Python API that the CLI wraps;
  ``model_card`` writes its README.md on ``save_pretrained``.
* ``scale``: microns per pixel of generated images from the model's ``pathup.json``.
* ``generate``: ``generate_to_folder`` / ``upscale_to_file``, the folder layout that ``pathup generate`` /
  ``pathup upscale`` wrap, and ``make_images``, the one loop (overview, upscale, files with their scale)
  that it and the experiments share; ``resume``: what must match for a rerun of a folder to resume.
* ``compose``: the ``compose`` API, mixed-tissue images from a class map;
  ``regional`` (one composed image) and ``compose_folder`` (``compose_to_folder``, that ``pathup compose``
  wraps) are its parts.
* ``layout``: class maps for ``compose``: ``Layout``, ``random_layout``; ``layout_files`` reads label
  images, legends and JSON regions (``load_layout``); ``geojson`` writes the regions for QuPath.

Submodules import torch; this package's top level stays light (attributes load on first use).
"""

from __future__ import annotations

import lazy_loader

# One lazy-import mechanism for the package (scientific-python's lazy_loader): names load on first use.
__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submodules=[
    "batching", "compose", "compose_folder", "config", "denoisers", "generate", "geojson", "grid", "layout",
    "layout_files", "model_card", "overview", "pipeline", "regional", "resume", "scale", "step_noise", "tracking",
    "vae_tiling", "weights", "writers"], submod_attrs={
    "pipeline": ["PathUpPipeline", "PathUpOutput"],
    "config": ["SampleConfig", "ComposeConfig", "Size", "parse_size"],
    "weights": ["pyramid_weights", "uniform_weights", "patch_weights"],
    "grid": ["patch_grid", "PatchBox"],
    "tracking": ["track_patches", "tracked_img2img"],
    "denoisers": ["guided_denoiser", "RegionDenoiser"],
    "overview": ["generate_overview"],
    "vae_tiling": ["encode_tiled", "decode_tiled"],
    "writers": ["save_png", "save_tiff", "read_settings"],
    "generate": ["generate_to_folder", "upscale_to_file", "make_images", "ImageJob", "GenerateResult", "image_paths",
                 "seeds_for_process", "pending_seeds", "upscale_path", "class_dirname", "read_generated", "GeneratedImage"],
    "resume": ["is_done"],
    "scale": ["model_mpp", "output_mpp", "natural_width", "check_scale"],
    "compose": ["ComposeOutput"],
    "compose_folder": ["ComposeResult", "compose_to_folder"],
    "layout": ["Layout", "random_layout"],
    "layout_files": ["load_layout", "read_label_image", "read_region_json", "read_legend"],
    "geojson": ["geojson_regions"],
})
