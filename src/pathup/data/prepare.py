"""``pathup prepare``: from RoIs or whole-slide images to a tiled, split, prompted dataset (PathUp paper 3.1).

The stage runs in three resumable steps, all recorded under ``DATASET/.prepare/``
(``pathup.data.prepare_state``):

1. **scan** every source (``pathup.data.cut.scan_source``: read the image, or a low-resolution level of the
   slide): cut the tile grid of each level (``pathup.data.tiling``) and drop background tiles with the
   tissue mask (``pathup.data.tissue``). Results are appended to ``scan.jsonl`` one source at a time.
2. **plan**: splits by patient or slide (``pathup.data.splits``), then at most ``max_per_class`` tiles per
   class, level and split, drawn with a seeded generator. Saved once in ``plan.json``.
3. **write** the chosen tiles as PNG under ``DATASET/tiles/<level>/<class>/`` (``pathup.data.cut.write_source``);
   each finished source is appended to ``done.jsonl``. ``manifest.csv``, ``dataset.json`` and
   ``config.yaml`` are written atomically at the end.

Regions are level-0 pixels, or pixels at ``target_mpp`` microns per pixel when it is set (every source is
then cut at the same physical scale; ``pathup.data.prepare_config``). The manifest's ``mpp`` column and
dataset.json's ``mpp`` record the tiles' scale.

Rerunning the same command resumes: scanned and finished sources are skipped. Rerunning with other
options or sources into the same folder is refused unless ``overwrite`` is set.

Single bad files (missing, corrupt, truncated, unreadable slide) are skipped with a warning and
counted in the summary; ``strict`` makes the first one fatal.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathup.config import save_config, to_dict
from pathup.data.cut import CutParams, missing_scale, scan_source, tile_mpp, write_source
from pathup.data.manifest import SPLITS, level_mpp, write_dataset_info, write_manifest
from pathup.data.prepare_config import PrepareConfig, check_config, level_specs, load_descriptions
from pathup.data.prepare_state import fingerprint_settings, open_state, remove_stale_temp_files
from pathup.data.sources import BadFile, SourceItem, collect_sources
from pathup.data.splits import assign_splits, stable_int
from pathup.data.workers import available_cpus, run_jobs
from pathup.errors import PathUpError
from pathup.io import plain_text
from pathup.prompts import PromptTable, build_prompt

__all__ = ["PrepareConfig", "PrepareSummary", "cap_tiles", "class_order", "prepare"]

log = logging.getLogger(__name__)


@dataclass
class PrepareSummary:
    """What ``prepare`` did. ``tiles`` maps (class, level, split) to the number of tiles written."""

    out: Path
    classes: list[str]
    levels: list[str]
    tiles: dict[tuple[str, str, str], int]
    dropped_background: dict[str, int]
    capped: dict[str, int]
    bad_files: list[BadFile]
    n_sources: int
    n_resumed: int
    seconds: float

    @property
    def n_tiles(self) -> int:
        return sum(self.tiles.values())

    def table(self) -> str:
        """The tiles per class x level x split, then dropped, capped and skipped counts."""
        names = {c: plain_text(c) for c in self.classes}  # a class name's escape sequences never reach the terminal
        width = max([len("class")] + [len(n) for n in names.values()])
        head = f"{'class':<{width}}  {'level':<8} " + " ".join(f"{s:>7}" for s in (*SPLITS, "total"))
        lines = [head, "-" * len(head)]
        col_tot = Counter()
        for c in self.classes:
            for lv in self.levels:
                n = [self.tiles.get((c, lv, s), 0) for s in SPLITS]
                col_tot.update(dict(zip(SPLITS, n)))
                lines.append(f"{names[c]:<{width}}  {lv:<8} " + " ".join(f"{v:>7}" for v in (*n, sum(n))))
        lines.append("-" * len(head))
        tot = [col_tot[s] for s in SPLITS]
        lines.append(f"{'total':<{width}}  {'':<8} " + " ".join(f"{v:>7}" for v in (*tot, sum(tot))))
        lines.append("background tiles dropped: " + ", ".join(f"{lv} {self.dropped_background.get(lv, 0)}"
                                                               for lv in self.levels))
        lines.append("tiles left out by --max-per-class: " + ", ".join(f"{lv} {self.capped.get(lv, 0)}"
                                                                        for lv in self.levels))
        lines.append(f"bad files skipped: {len(self.bad_files)}")
        lines.append(f"sources: {self.n_sources} ({self.n_resumed} already done); {self.n_tiles} tiles "
                     f"in {self.seconds:.1f} s -> {plain_text(self.out)}")
        return "\n".join(lines)



def cap_tiles(candidates: list[Any], cap: int, seed: int, *key: object) -> tuple[list[Any], int]:
    """At most ``cap`` of ``candidates`` (in their order), drawn without replacement by a generator seeded
    with ``seed`` and ``key`` (e.g. class, level, split), so each group's draw is independent of others.
    Returns the kept candidates and how many were left out. ``cap <= 0`` keeps all."""
    if cap <= 0 or len(candidates) <= cap:
        return list(candidates), 0
    rng = np.random.default_rng([seed, stable_int(*key)])
    chosen = np.sort(rng.choice(len(candidates), size=cap, replace=False))
    return [candidates[i] for i in chosen], len(candidates) - cap


def _plan(items: list[SourceItem], splits: list[str], scans: dict[str, dict], cfg: PrepareConfig,
          levels: list[str]) -> dict[str, Any]:
    groups: dict[tuple[str, str, str], list[tuple[str, list]]] = defaultdict(list)
    dropped: Counter = Counter()
    for it, split in zip(items, splits):
        scan = scans.get(it.key)
        if scan is None:
            continue
        for lv in levels:
            dropped[lv] += scan["levels"][lv]["dropped"]
            for t in scan["levels"][lv]["tiles"]:
                groups[(it.class_name, lv, split)].append((it.key, t))
    tiles: dict[str, dict[str, list]] = {it.key: {lv: [] for lv in levels}
                                         for it in items if it.key in scans}
    capped: Counter = Counter()
    for (cls, lv, split), cands in sorted(groups.items()):
        kept, left = cap_tiles(cands, cfg.max_per_class, cfg.seed, cls, lv, split)
        capped[lv] += left
        for key, t in kept:
            tiles[key][lv].append(t)
    return {"tiles": tiles, "splits": {it.key: s for it, s in zip(items, splits)},
            "dropped": dict(dropped), "capped": dict(capped)}



def class_order(items: list[SourceItem]) -> list[str]:
    """Classes ordered by the source's rank (BRACS ``k``) where given, then by name."""
    rank: dict[str, int] = {}
    for it in items:
        if it.class_order >= 0:
            rank[it.class_name] = min(rank.get(it.class_name, it.class_order), it.class_order)
    names = {it.class_name for it in items}
    return sorted(names, key=lambda c: (c not in rank, rank.get(c, 0), c))



def _bad(bad: list[BadFile], path: str, reason: str, strict: bool) -> None:
    b = BadFile(path, reason)
    if strict:
        raise PathUpError(f"bad file (--strict): {reason}")
    log.warning("skipped bad file: %s", reason)
    bad.append(b)



def _check_scale(cfg: PrepareConfig, items: list[SourceItem]) -> None:
    """``target_mpp`` needs every image's scale (``mpp``); slides may carry their own (checked when read)."""
    if cfg.target_mpp is not None and cfg.mpp is None:
        first = next((it for it in items if it.kind == "image"), None)
        if first is not None:
            raise missing_scale(first.path)


def _scan(items: list[SourceItem], state: Any, params: CutParams, workers: int, progress: bool,
          bad: list[BadFile], strict: bool) -> tuple[dict[str, dict], list[list[str]]]:
    scans = state.scan.read()
    scan_bad = []
    jobs = [(it, params) for it in items if it.key not in scans]
    with contextlib.closing(run_jobs(scan_source, jobs, workers, "scan", progress)) as results:
        for res in results:  # (closing: an error or Ctrl+C here stops the workers at once)
            if "fatal" in res:
                raise PathUpError(res["fatal"])
            if "error" in res:
                _bad(bad, res["key"], res["error"], strict)
                scan_bad.append([res["key"], res["error"]])
            else:
                state.scan.append(res)
                scans[res["key"]] = res
    return scans, scan_bad


def prepare(cfg: PrepareConfig, progress: bool = True) -> PrepareSummary:
    """Run ``pathup prepare`` (see the module docstring) and return its summary."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    t0 = time.perf_counter()
    check_config(cfg)
    specs = level_specs(cfg)
    levels = [s.name for s in specs]
    params = CutParams(tuple(specs), cfg.tissue_threshold, cfg.min_tissue, cfg.small_tile, cfg.max_image_pixels,
                       cfg.target_mpp, cfg.mpp)
    workers = cfg.workers or available_cpus()

    with logging_redirect_tqdm():
        items, listed_bad, _layouts = collect_sources(list(cfg.sources), cfg.layout, cfg.slide_classes)
        _check_scale(cfg, items)
        bad: list[BadFile] = []
        for b in listed_bad:
            _bad(bad, b.path, str(b), cfg.strict)
        classes = class_order(items)
        descriptions = load_descriptions(cfg.descriptions, classes)
        splits = assign_splits(items, cfg.split_by, cfg.val_fraction, cfg.test_fraction, cfg.seed)

        out = Path(cfg.out)
        state = open_state(out, fingerprint_settings(cfg, items), cfg.overwrite)
        stale = remove_stale_temp_files(out)
        if stale:
            log.info("removed %d temporary file(s) left by an interrupted run in %s", stale, out / "tiles")
        by_key = {it.key: it for it in items}

        plan = state.read_plan()
        if plan is not None:
            for key, reason in plan.get("bad", []):
                _bad(bad, key, reason, cfg.strict)
        else:
            scans, scan_bad = _scan(items, state, params, workers, progress, bad, cfg.strict)
            plan = _plan(items, splits, scans, cfg, levels)
            plan["bad"] = scan_bad
            state.write_plan(plan)

        done = state.done.read()
        n_resumed = sum(1 for k in plan["tiles"] if k in done)
        jobs = [(by_key[k], plan["tiles"][k], plan["splits"][k], params, str(out))
                for k in plan["tiles"] if k not in done]
        try:
            with contextlib.closing(run_jobs(write_source, jobs, workers, "tiles", progress)) as results:
                for res in results:
                    if "fatal" in res:
                        raise PathUpError(res["fatal"])
                    if "error" in res:
                        _bad(bad, res["key"], res["error"], cfg.strict)
                    else:
                        state.done.append(res)
                        done[res["key"]] = res
        except BaseException:  # Ctrl+C, a fatal error: the workers are stopped; no temporary tile stays
            remove_stale_temp_files(out)
            raise

        rows = []
        for it in items:  # listing order, whatever order the workers finished in
            for row in (done.get(it.key) or {}).get("rows", []):
                rows.append({**row, "prompt": build_prompt(row["class"], row["level"], descriptions)})
        order = {lv: i for i, lv in enumerate(levels)}
        rows.sort(key=lambda r: order[r["level"]])  # stable: patch tiles first, then overview
        if not rows:
            raise PathUpError(f"no tiles were written to {out}: every tile was background or every file was bad "
                              f"(see the warnings; min_tissue {cfg.min_tissue})")

        tiles = Counter((r["class"], r["level"], r["split"]) for r in rows)
        empty = [c for c in classes if not any(tiles.get((c, lv, s)) for lv in levels for s in SPLITS)]
        if empty:
            log.warning("class(es) %s have no tiles (all background or bad files; min_tissue %s): a model "
                        "trained on this dataset cannot learn them, and 'pathup train' refuses them",
                        ", ".join(repr(c) for c in empty), cfg.min_tissue)
        no_train = [c for c in classes if c not in empty and not any(tiles.get((c, lv, "train")) for lv in levels)]
        if no_train:
            log.warning("class(es) %s have no tiles in the train split (all went to val/test); "
                        "'pathup train' refuses them", ", ".join(repr(c) for c in no_train))
        write_manifest(out, rows, extra_columns=("tissue", "mpp"))
        mpp, note = level_mpp(rows, levels, nominal={s.name: tile_mpp(s, cfg.target_mpp) for s in specs}
                              if cfg.target_mpp is not None else None)
        table = PromptTable(classes=classes, levels=levels, descriptions=descriptions)
        info = {"classes": classes, "levels": levels, "descriptions": descriptions, "tile_size": cfg.tile_px,
                "mpp": mpp, **({"mpp_note": note} if note else {}),
                "prompts": table.prompts(),
                "level_regions": {s.name: {"size": s.size, "overlap": s.overlap} for s in specs},
                "counts": {f"{c}/{lv}/{s}": n for (c, lv, s), n in sorted(tiles.items())},
                "dropped_background": plan["dropped"], "capped": plan["capped"],
                "bad_files": [str(b) for b in bad], "n_sources": len(items),
                "options": to_dict(cfg)}
        write_dataset_info(out, info)
        save_config(cfg, out / "config.yaml")

    return PrepareSummary(out=out, classes=classes, levels=levels, tiles=dict(tiles),
                          dropped_background=dict(plan["dropped"]), capped=dict(plan["capped"]), bad_files=bad,
                          n_sources=len(items), n_resumed=n_resumed, seconds=time.perf_counter() - t0)
