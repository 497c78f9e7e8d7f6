"""``pathup demo``: the whole pipeline on the real sample images shipped with PathUp, with a report.

Stages (each resumable: a finished stage is reused on rerun when its settings are unchanged):

1. prepare: a shipped sample (Kather 2016 colorectal tiles by default, or BreakHis) -> patch tiles (full
   resolution) and overview tiles, with the sample's held-out split (by slide or patient);
2. train: the ``tiny`` latent diffusion model from scratch with ``pathup train``'s defaults
   (autoencoder first, then the UNet and its text encoder with patho-align prompts and the feature
   entropy loss);
3. generate: overviews per class, the same seeds of one class at several guidance scales, then
   patch-wise timestep tracking to a large image per class, one image upscaled with uniform weights
   (the paper's Table 4 ablation) from the same overview, and one mixed-tissue image from a random
   class map (``pathup compose``);
4. evaluate: IP / IR / FID / KID at the overview and patch levels with an offline feature extractor
   (its numbers are not comparable with the literature's Inception numbers), class-consistency beside
   its real ceiling with per-class colour, and seam scores with and without the weight map;
5. report: ``OUT/report.html`` (class x seed grid beside real tiles, class-consistency and colour,
   guidance strip, the large image with a patch-grid overlay, the composed image with its mask, loss
   curves, metrics, settings).

Modules: ``config`` (``DemoConfig``), ``stages`` (the work of stages 1-4), ``figures``, ``report`` (the
Jinja2 template ``templates/demo.html``), ``run`` (``run_demo``).
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submodules=["config", "figures", "report", "run", "stages"],
    submod_attrs={
        "config": ["DemoConfig"],
        "report": ["check_links"],
        "run": ["run_demo"],
        "stages": ["prepare_sample"],
    })
