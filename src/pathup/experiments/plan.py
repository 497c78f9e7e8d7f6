"""Which evaluations the tables need: one ``pathup evaluate`` per (table, condition, level, seed).

Overviews are evaluated at the dataset's tile size against its overview tiles; upscaled images with random
tile-size crops against the patch tiles (PathUp paper section 4.3, the overview and patch levels), so that a
crop covers the same tissue as a real patch tile. Table 4 adds the seam score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathup.experiments.config import ARMS, WEIGHT_MAP_CONDITIONS, ExperimentConfig, slug


@dataclass(frozen=True)
class EvalJob:
    """One evaluate call: table, condition (row), level, seed, the fake folder and whether to add the seam."""

    table: int
    condition: str
    level: str
    seed: int
    fake: Path
    seam: bool = False

    def out(self, root: Path) -> Path:
        return root / "results" / f"table{self.table}" / self.condition / f"{self.level}_seed{self.seed}.json"


def plan_evaluations(cfg: ExperimentConfig, compare: dict[str, str], upscalers: dict[str, str]) -> list[EvalJob]:
    """Every (table, condition, level, seed) to evaluate, with the folder of its synthetic images."""
    img = Path(cfg.out) / "images"
    jobs: list[EvalJob] = []
    for s in range(cfg.seeds):
        def both(table: int, cond: str, key: str) -> None:
            jobs.append(EvalJob(table, cond, "overview", s, img / key / f"seed{s}" / "overview"))
            jobs.append(EvalJob(table, cond, "patch", s, img / key / f"seed{s}" / "pyramid"))

        if 1 in cfg.tables:
            both(1, ARMS["pathup"][0], "pathup")
            for name in compare:
                both(1, name, f"cmp-{slug(name)}")
        if 2 in cfg.tables:
            for arm, (cond, _o) in ARMS.items():
                both(2, cond, arm)
        if 3 in cfg.tables:
            jobs.append(EvalJob(3, "PathUp", "patch", s, img / "pathup" / f"seed{s}" / "pyramid"))
            jobs.append(EvalJob(3, "bicubic", "patch", s, img / "pathup" / f"seed{s}" / "bicubic"))
            for name in upscalers:
                jobs.append(EvalJob(3, name, "patch", s, img / "pathup" / f"seed{s}" / f"upscaler-{slug(name)}"))
        if 4 in cfg.tables:
            for wm, cond in WEIGHT_MAP_CONDITIONS.items():
                jobs.append(EvalJob(4, cond, "patch", s, img / "pathup" / f"seed{s}" / wm, seam=True))
    return jobs


def table_orders(cfg: ExperimentConfig, compare: dict[str, str], upscalers: dict[str, str]) -> dict[int, list[str]]:
    """The row order of each table (written as ``results/table<N>/order.txt``)."""
    return {1: ["PathUp", *compare], 2: [c for c, _o in ARMS.values()], 3: ["PathUp", "bicubic", *upscalers],
            4: ["weight map off", "weight map on"]}


def evaluate_job(cfg: ExperimentConfig, job: EvalJob, tile: int) -> dict[str, Any]:
    """``pathup evaluate`` of one job against the dataset's real tiles of the job's level."""
    from pathup.metrics.evaluate import EvaluateConfig, evaluate

    ecfg = EvaluateConfig(data=cfg.data, fake=str(job.fake), out=str(job.out(Path(cfg.out))), level=job.level,
                          split=cfg.split, features=cfg.features, features_weights=cfg.features_weights,
                          overview_size=tile, crop_px=tile, crops_per_image=cfg.crops_per_image,
                          num_samples=cfg.num_samples, repeats=1, seed=job.seed, kid_subsets=cfg.kid_subsets,
                          kid_subset_size=cfg.kid_subset_size, batch_size=cfg.batch_size, device=cfg.device,
                          cache_dir=str(Path(cfg.out) / "cache" / "features"), seam=job.seam,
                          progress=cfg.progress)
    return evaluate(ecfg)
