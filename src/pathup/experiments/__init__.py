"""Everything that runs several stages: the PathUp paper's Tables 1-4 and the demo.

* ``pathup experiment run`` (``run.run_experiment``): trains the Table 2 arms (``arms``), makes the images
  (``makers``: PathUp overviews and upscales, bicubic, diffusers upscalers), evaluates each (table,
  condition, level, seed) (``plan``) and writes the report (``tables``); options in ``config``.
* ``pathup demo`` (``demo``): prepare -> train -> generate -> evaluate -> report on the shipped samples.

Resuming is ``pathup.stages`` throughout. Names load lazily (``pathup --help`` stays fast).
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submodules=["arms", "config", "demo", "makers", "plan", "run", "tables"],
    submod_attrs={
        "config": ["ExperimentConfig"],
        "run": ["run_experiment"],
        "tables": ["build_report"],
    })
