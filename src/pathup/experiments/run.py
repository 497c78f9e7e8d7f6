"""``pathup experiment run``: train, generate, upscale and evaluate the PathUp paper's Tables 1-4 on a dataset.

Everything is written under ``OUT``::

    OUT/experiment.yaml                      the resolved ExperimentConfig (a rerun must agree with it)
    OUT/runs/<arm>/                          training runs (pathup.train): pathup, no-fel, no-pa
    OUT/images/<arm>/seed<s>/overview/       overviews at the model resolution, <class>_<i>.png + sidecar .json
    OUT/images/<arm>/seed<s>/pyramid/        PathUp upscaling (Eq. 6 pyramid weight map) of those overviews
    OUT/images/pathup/seed<s>/uniform/       the same overviews and noise with uniform weights (Table 4)
    OUT/images/pathup/seed<s>/bicubic/       PIL bicubic resizes of the overviews (Table 3)
    OUT/images/pathup/seed<s>/upscaler-<n>/  a diffusers upscaler checkpoint (Table 3)
    OUT/results/table<N>/<condition>/<level>_seed<s>.json   one ``evaluate`` result per seed
    OUT/tables.md, OUT/table<N>.png          the report (``pathup.experiments.tables``)

Tables (PathUp paper, section 4, Tables 1-4):

* Table 1 (model comparison): ``PathUp`` plus every ``--compare NAME=PATH`` model (a diffusers Stable
  Diffusion folder or a PathUp run), overview level and patch level (each model's overviews upscaled by
  PathUp with the same model).
* Table 2 (ablation): ``PathUp`` (full), ``w-o FEL`` (``fel_beta=0``), ``w-o PA`` (``patho_align=False``),
  three training runs with the same options otherwise (``pathup.experiments.arms``); overview and patch level.
* Table 3 (upscaling, patch level): PathUp upscaling vs ``bicubic`` vs each ``--upscaler PATH``
  (``StableDiffusionUpscalePipeline`` or ``LDMSuperResolutionPipeline`` folders), all from the same
  overviews; an upscaler whose output size differs from the target is resized bicubically to it.
* Table 4 (weight map, patch level + seam score): ``weight map on`` (pyramid) vs ``weight map off``
  (uniform), same overviews, same noise.

Sizes follow the dataset: overviews are evaluated at the dataset's tile size against its overview tiles;
upscaled images are ``tile size x factor`` pixels, ``factor`` = overview region / patch region from
``dataset.json`` (4 in the paper: 2048 / 512); patch-level metrics use random tile-size crops against the
patch tiles (``pathup.experiments.plan``). Resumable: finished training runs, images and result files are
skipped; an interrupted training run resumes from its newest checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pathup.errors import PathUpError
from pathup.experiments.arms import train_arm, train_options
from pathup.experiments.config import (ExperimentConfig, check_out, dataset_info, slug, tile_px, upscale_size,
                                       validate)
from pathup.experiments.makers import Counts, bicubic_images, generate_arm, patch_prompts, upscaler_images
from pathup.experiments.plan import evaluate_job, plan_evaluations, table_orders


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Train, generate, upscale, evaluate and report the requested tables (see the module docstring).

    Returns:
        ``{"out", "trained": [arm, ...], "images_written", "images_skipped", "evaluated": [json paths],
        "evaluations_skipped", "report": build_report(...)}``.
    """
    from pathup.config import save_config
    from pathup.experiments.tables import build_report
    from pathup.io import atomic_write_text

    cfg = dataclasses.replace(cfg, tables=sorted(set(cfg.tables)))
    compare, upscalers = validate(cfg)
    info = dataset_info(cfg)
    opts = train_options(cfg)
    classes = list(cfg.classes) or list(info["classes"])
    if len(classes) * cfg.images_per_class < 4:
        raise PathUpError(f"{len(classes)} class(es) x --images-per-class {cfg.images_per_class} = "
                          f"{len(classes) * cfg.images_per_class} image(s) per seed; the metrics need at least 4")
    check_out(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "experiment.yaml")
    tile = tile_px(info)
    size = upscale_size(cfg, info)

    arms = ["pathup"] + (["no-fel", "no-pa"] if 2 in cfg.tables else [])
    trained, models = [], {}
    for arm in arms:
        models[arm], now = train_arm(cfg, arm, opts)
        if now:
            trained.append(arm)

    counts = Counts()
    for arm in arms:
        maps = ("pyramid", "uniform") if arm == "pathup" and 4 in cfg.tables else ("pyramid",)
        generate_arm(cfg, models[arm], arm, classes, size, maps, counts)
    if 1 in cfg.tables:
        for name, path in compare.items():
            generate_arm(cfg, path, f"cmp-{slug(name)}", classes, size, ("pyramid",), counts)
    if 3 in cfg.tables:
        bicubic_images(cfg, classes, size, counts)
        if upscalers:
            prompts = patch_prompts(models["pathup"], classes)
            for name, path in upscalers.items():
                upscaler_images(cfg, name, path, classes, size, prompts, counts)

    evaluated, skipped = [], 0
    for job in plan_evaluations(cfg, compare, upscalers):
        path = job.out(out)
        if path.is_file():
            skipped += 1
            continue
        evaluate_job(cfg, job, tile)
        evaluated.append(str(path))
    for t, order in table_orders(cfg, compare, upscalers).items():
        if t in cfg.tables:
            atomic_write_text(out / "results" / f"table{t}" / "order.txt", "\n".join(order) + "\n")
    report = build_report(out / "results", out)
    return {"out": str(out), "trained": trained, "images_written": counts.written, "images_skipped": counts.skipped,
            "evaluated": evaluated, "evaluations_skipped": skipped, "report": report}
