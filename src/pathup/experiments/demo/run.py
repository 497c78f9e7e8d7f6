"""``run_demo``: the demo's stages in order, each reused on rerun when its settings are unchanged
(``pathup.stages.Stages``, markers in ``OUT/.stages``)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from pathup.errors import OptionError
from pathup.experiments.demo.config import STAGES, DemoConfig


def run_demo(cfg: DemoConfig) -> Path:
    """Run the demo; returns the path of ``report.html``."""
    from pathup.progress import library_bars

    with library_bars(cfg.progress):
        return _run_demo(cfg)


def _run_demo(cfg: DemoConfig) -> Path:
    from pathup.config import save_config, to_dict
    from pathup.experiments.demo import stages as work
    from pathup.experiments.demo.report import write_report
    from pathup.stages import Stages

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise OptionError("out", f"{out} exists and is not a folder")
    if cfg.overwrite:  # only what the demo writes; anything else in --out stays
        for name in (".stages", "dataset", "run", "generated", "metrics", "report_files"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo_config.yaml")
    stages = Stages(out / ".stages", STAGES)
    s = to_dict(cfg)
    s["tile_size"] = cfg.tile_px  # the stage settings keep the older name: earlier demo folders stay reusable

    def pick(*names: str) -> dict[str, Any]:
        return {k: s[k] for k in names}

    dataset, run_dir, gen = out / "dataset", out / "run", out / "generated"
    prepare_key = pick("sample", "classes", "tile_size", "seed")
    if cfg.max_per_class is not None:  # only when set: earlier demo folders stay reusable
        prepare_key["max_per_class"] = cfg.max_per_class
    stages.run("prepare", prepare_key,
               lambda: work.prepare_sample(cfg.sample, dataset, classes=cfg.classes, tile_px=cfg.tile_px,
                                           max_per_class=cfg.max_per_class, seed=cfg.seed, progress=cfg.progress))
    stages.run("train", pick("vae_steps", "vae_crop", "train_steps", "batch_size", "fel_beta", "encoder_epochs", "seed",
                             "device"),
               lambda: work.train_model(cfg, dataset, run_dir))
    stages.run("generate", pick("steps", "scheduler", "guidance", "overviews_per_class", "size", "latent_patch", "compose_classes",
                                "guidance_compare", "latent_overlap", "strength", "seed", "device"),
               lambda: work.generate_images(cfg, run_dir, gen))
    metrics = stages.run("evaluate", pick("features", "repeats", "seed", "tile_size", "device"),
                         lambda: work.evaluate_images(cfg, dataset, gen, out / "metrics"))
    report = stages.run("report", {"t": time.time()},
                        lambda: str(write_report(cfg, out, dataset, run_dir, gen, metrics)))
    return Path(report)
