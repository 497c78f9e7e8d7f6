"""``pathup prepare``: from RoIs or whole-slide images to a tiled, split, prompted dataset (SPEC.md section 2).

The stage runs in three resumable steps, all recorded under ``DATASET/.prepare/``:

1. **scan** every source (read the image, or a low-resolution level of the slide): cut the tile grid of
   each level (``pathup.data.tiling``) and drop background tiles with the tissue mask
   (``pathup.data.tissue``). Results are appended to ``scan.jsonl`` one source at a time.
2. **plan**: splits by patient or slide (``pathup.data.splits``), then at most ``max_per_class`` tiles per
   class, level and split, drawn with a seeded generator. Saved once in ``plan.json``.
3. **write** the chosen tiles as PNG under ``DATASET/tiles/<level>/<class>/``; each finished source is
   appended to ``done.jsonl``. ``manifest.csv``, ``dataset.json`` and ``config.yaml`` are written
   atomically at the end.

Rerunning the same command resumes: scanned and finished sources are skipped. Rerunning with other
options or sources into the same folder is refused unless ``overwrite`` is set.

Single bad files (missing, corrupt, truncated, unreadable slide) are skipped with a warning and
counted in the summary; ``strict`` makes the first one fatal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Optional

import numpy as np

from pathup.config import save_config, to_dict
from pathup.data.manifest import SPLITS, write_dataset_info, write_manifest
from pathup.data.sources import BadFile, SlideReader, SourceItem, collect_sources
from pathup.data.splits import assign_splits, stable_int
from pathup.data.tiling import LevelSpec, region_to_tile, tile_grid
from pathup.data.tissue import TissueMap, tissue_mask
from pathup.errors import PathUpError
from pathup.io import (DEFAULT_MAX_IMAGE_PIXELS, atomic_path, atomic_write_text, check_writable_dir, open_image,
                       safe_name)
from pathup.prompts import LEVELS, PromptTable, build_prompt

log = logging.getLogger(__name__)

STATE_DIR = ".prepare"
# Fast lossless PNG: zlib level 1 with Huffman-only coding (pathology tiles barely compress better at
# higher levels; Huffman-only is about 20% faster than level 1 at the same size on BreakHis tiles).
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_HUFFMAN_ONLY}
MASK_TILE_PIXELS = 32  # the tissue mask resolves the smallest tile into about 32 x 32 cells
MAX_MASK_SIDE = 4096  # a slide's mask is at most this many pixels on its long side
MIN_IMAGE_SIDE = 16  # a smaller image (or slide) cannot make a meaningful tile: skipped as a bad file
MAX_TILE_SIZE = 4096  # --tile-size bound (a 4096 px RGB tile is 48 MB in memory)
MAX_REGION_SIZE = 65536  # --patch-size / --overview-size bound, source pixels


@dataclass
class PrepareConfig:
    """Options of ``pathup prepare`` (the paper's defaults, PathUp paper 3.1 and 4.1)."""

    out: str = field(metadata={"help": "the dataset folder to write", "metavar": "DATASET"})
    sources: list[str] = field(default_factory=list, metadata={
        "cli": False, "help": "image folders, BRACS roots, CSV manifests or slides"})
    layout: Literal["auto", "folders", "bracs", "csv", "wsi"] = field(default="auto", metadata={
        "help": "how the sources are organised"})
    slide_classes: Optional[str] = field(default=None, metadata={
        "help": "CSV with columns slide (file name, stem or path), class [, patient, split] for whole-slide images",
        "metavar": "CSV"})
    levels: list[Literal["patch", "overview"]] = field(default_factory=lambda: list(LEVELS), metadata={
        "help": "spatial levels to cut"})
    patch_size: int = field(default=512, metadata={"help": "patch tile region, source pixels (at most 65536)",
                                                   "min": 1, "max": 65536})
    patch_overlap: int = field(default=64, metadata={"help": "overlap of neighbouring patch tiles, source pixels", "min": 0})
    overview_size: int = field(default=2048, metadata={"help": "overview tile region, source pixels (at most 65536)",
                                                       "min": 1, "max": 65536})
    overview_overlap: int = field(default=256, metadata={"help": "overlap of neighbouring overview tiles", "min": 0})
    tile_size: int = field(default=512, metadata={"help": "size of the written tiles, both levels (8 to 4096 pixels)",
                                                  "min": 8, "max": 4096})
    small_tile: Literal["resize", "pad"] = field(default="resize", metadata={
        "help": "an image smaller than a tile along an axis is used whole along it, then resized to a "
                "square tile or padded with white"})
    tissue_threshold: float = field(default=0.08, metadata={
        "help": "HSV saturation from which a pixel counts as tissue", "min": 0, "max": 1})
    min_tissue: float = field(default=0.25, metadata={
        "help": "tiles with a smaller tissue fraction are dropped as background (0 keeps all)", "min": 0, "max": 1})
    max_per_class: int = field(default=6000, metadata={
        "help": "at most this many tiles per class, level and split, seeded sample (0: no cap)", "min": 0})
    split_by: Literal["patient", "slide", "none"] = field(default="patient", metadata={
        "help": "group that stays on one side of a split; a split given by the source is kept"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of images (by group) for validation",
                                                       "min": 0, "max": 1, "max_exclusive": True})
    test_fraction: float = field(default=0.1, metadata={"help": "share of images (by group) for test",
                                                       "min": 0, "max": 1, "max_exclusive": True})
    seed: int = field(default=0, metadata={"help": "seed of the split and of the per-class cap", "min": 0})
    descriptions: Optional[str] = field(default=None, metadata={
        "help": "YAML or JSON file mapping class -> free-text description used in prompts", "metavar": "FILE"})
    strict: bool = field(default=False, metadata={"help": "stop at the first bad file instead of skipping it"})
    workers: int = field(default=0, metadata={"help": "worker processes (0: one per available CPU)", "min": 0})
    overwrite: bool = field(default=False, metadata={
        "help": "replace a dataset prepared with other options or sources in --out"})
    max_image_pixels: int = field(default=DEFAULT_MAX_IMAGE_PIXELS, metadata={
        "help": "images (not whole-slide files) with more pixels (width x height) are skipped as bad files "
                "before decoding (decompression bombs); raise it for genuinely large RoIs", "min": 1})


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
        width = max([len("class")] + [len(c) for c in self.classes])
        head = f"{'class':<{width}}  {'level':<8} " + " ".join(f"{s:>7}" for s in (*SPLITS, "total"))
        lines = [head, "-" * len(head)]
        col_tot = Counter()
        for c in self.classes:
            for lv in self.levels:
                n = [self.tiles.get((c, lv, s), 0) for s in SPLITS]
                col_tot.update(dict(zip(SPLITS, n)))
                lines.append(f"{c:<{width}}  {lv:<8} " + " ".join(f"{v:>7}" for v in (*n, sum(n))))
        lines.append("-" * len(head))
        tot = [col_tot[s] for s in SPLITS]
        lines.append(f"{'total':<{width}}  {'':<8} " + " ".join(f"{v:>7}" for v in (*tot, sum(tot))))
        lines.append("background tiles dropped: " + ", ".join(f"{lv} {self.dropped_background.get(lv, 0)}"
                                                               for lv in self.levels))
        lines.append("tiles left out by --max-per-class: " + ", ".join(f"{lv} {self.capped.get(lv, 0)}"
                                                                        for lv in self.levels))
        lines.append(f"bad files skipped: {len(self.bad_files)}")
        lines.append(f"sources: {self.n_sources} ({self.n_resumed} already done); {self.n_tiles} tiles "
                     f"in {self.seconds:.1f} s -> {self.out}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Per-source work (runs in worker processes: plain functions of picklable arguments)


@dataclass(frozen=True)
class _Params:
    levels: tuple[LevelSpec, ...]
    tissue_threshold: float
    min_tissue: float
    small_tile: str
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


def _open(item: SourceItem, params: _Params) -> Any:
    """A slide reader for whole-slide files; other images are decoded whole, after their header's size
    was checked against ``--max-image-pixels`` (PIL's own limit stays on)."""
    if item.kind == "slide":
        return SlideReader(item.path, params.max_pixels)
    return open_image(item.path, params.max_pixels, option="--max-image-pixels")


def _error_text(item: SourceItem, err: BaseException) -> str:
    text = str(err) if isinstance(err, PathUpError) else f"cannot read {item.path}: {type(err).__name__}: {err}"
    return " ".join(text.split())


def _check_side(item: SourceItem, width: int, height: int) -> None:
    if min(width, height) < MIN_IMAGE_SIDE:
        what = "slide" if item.kind == "slide" else "image"
        raise PathUpError(f"{what} {item.path} is {width}x{height} px: too small to cut a meaningful tile "
                          f"(each side needs at least {MIN_IMAGE_SIDE} px)")


def scan_source(item: SourceItem, params: _Params) -> dict[str, Any]:
    """Step 1 for one source: its size and, per level, the tissue tiles ``[x, y, w, h, fraction]`` and
    the number of background tiles dropped. Errors come back as ``{"error": ...}``."""
    min_size = min(s.size for s in params.levels)
    try:
        src = _open(item, params)
        if isinstance(src, SlideReader):
            try:
                W, H = src.dimensions
                _check_side(item, W, H)
                d = max(1.0, min_size / MASK_TILE_PIXELS, max(W, H) / MAX_MASK_SIDE)
                ov = src.overview(d)
            finally:
                src.close()
            tmap = TissueMap(tissue_mask(np.asarray(ov), params.tissue_threshold), W / ov.size[0], H / ov.size[1])
        else:
            W, H = src.size
            _check_side(item, W, H)
            tmap = TissueMap.from_image(src, params.tissue_threshold, max(1, min_size // MASK_TILE_PIXELS))
    except Exception as err:  # noqa: BLE001 - any decoder failure makes this one file bad
        return {"key": item.key, "error": _error_text(item, err)}
    levels = {}
    for spec in params.levels:
        keep, dropped = [], 0
        for x, y, w, h in tile_grid(W, H, spec.size, spec.overlap):
            frac = tmap.fraction(x, y, w, h)
            if frac >= params.min_tissue:
                keep.append([x, y, w, h, round(frac, 4)])
            else:
                dropped += 1
        levels[spec.name] = {"tiles": keep, "dropped": dropped}
    return {"key": item.key, "width": W, "height": H, "levels": levels}


def tile_file(item: SourceItem, level: str, x: int, y: int) -> str:
    """The tile's path relative to the dataset folder (unique per source, level and position)."""
    tag = hashlib.sha1(item.key.encode()).hexdigest()[:8]
    cls, stem = safe_name(item.class_name, empty="x"), safe_name(item.path.stem, empty="x")
    return f"tiles/{level}/{cls}/{stem}-{tag}_{x}_{y}.png"


def write_source(item: SourceItem, tiles: dict[str, list[list[float]]], split: str, params: _Params,
                 out: str) -> dict[str, Any]:
    """Step 3 for one source: cut, resize and save its planned tiles; returns its manifest rows."""
    rows = []
    try:
        src = _open(item, params)
        try:
            for spec in params.levels:
                for x, y, w, h, frac in tiles.get(spec.name, []):
                    x, y, w, h = int(x), int(y), int(w), int(h)
                    if isinstance(src, SlideReader):
                        s = spec.tile_size / spec.size
                        region = src.read(x, y, w, h, max(1, round(w * s)), max(1, round(h * s)))
                    else:
                        region = src.crop((x, y, x + w, y + h))
                    tile = region_to_tile(region, spec, params.small_tile, source_size=(w, h))  # type: ignore[arg-type]
                    rel = tile_file(item, spec.name, x, y)
                    try:
                        with atomic_path(Path(out) / rel) as tmp:
                            tile.save(tmp, format="PNG", **PNG_OPTIONS)
                    except OSError as err:  # the output's fault, not the source's: stop the run
                        where = err.filename or Path(out) / rel
                        return {"key": item.key, "fatal": f"cannot write tiles to {Path(out)}: "
                                                          f"{err.strerror or err} ({where})"}
                    rows.append({"path": rel, "class": item.class_name, "level": spec.name,
                                 "source": str(item.path), "patient": item.patient, "slide": item.slide,
                                 "split": split, "x": x, "y": y, "width": w, "height": h, "tissue": frac})
        finally:
            if isinstance(src, SlideReader):
                src.close()
    except Exception as err:  # noqa: BLE001
        return {"key": item.key, "error": _error_text(item, err)}
    return {"key": item.key, "rows": rows}


def _proc_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux /proc), "" when there is no /proc, None when it is gone
    or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        if not os.path.isdir("/proc/self"):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                pass
            return ""
        return None
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _watch_parent(pid: int, started: str | None, interval: float = 0.5) -> None:
    while True:
        time.sleep(interval)
        if _proc_start_time(pid) != started:  # gone, a zombie, or its pid reused
            os._exit(1)


def _worker_init(parent_pid: int, parent_started: str | None) -> None:
    """Runs in each worker: Ctrl+C is the parent's to handle (it stops the workers), and a worker exits by
    itself when the parent dies, even by SIGKILL (a forkserver worker's own parent is the forkserver, which
    lives as long as its workers, so the parent's pid is watched)."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid, parent_started), daemon=True,
                     name="pathup-parent-watch").start()


def _run(fn: Callable[..., dict], jobs: list[tuple], workers: int, desc: str, progress: bool) -> Iterator[dict]:
    """``fn(*job)`` for every job, in worker processes when ``workers > 1``; yields results as they finish.

    On any exception (Ctrl+C included) the workers are stopped at once; a worker whose parent died exits.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="src", disable=not progress or not jobs, dynamic_ncols=True)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield fn(*job)
                bar.update()
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        me = os.getpid()
        ex = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_worker_init,
                                 initargs=(me, _proc_start_time(me)))
        try:
            futures = [ex.submit(fn, *job) for job in jobs]
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    raise PathUpError(f"a worker process died while preparing ({desc}), perhaps out of memory; "
                                      f"rerun with --workers 1 to resume") from None
                yield res
                bar.update()
        except BaseException:
            _stop_workers(ex)
            raise
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def _stop_workers(ex: Any) -> None:
    """Terminate the pool's worker processes now (they would finish their current source first)."""
    for proc in list((getattr(ex, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            proc.terminate()
    for proc in list((getattr(ex, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            proc.join(5)


def remove_stale_temp_files(out: Path) -> int:
    """Remove temporary tiles (``.<name>.<random>.tmp.png``) left in ``out/tiles`` by an interrupted or killed
    run; returns how many."""
    n = 0
    tiles = out / "tiles"
    if tiles.is_dir():
        for p in tiles.rglob(".*.tmp*"):
            if p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
    return n


# ---------------------------------------------------------------------------------------------------
# The resumable state under DATASET/.prepare


class _State:
    def __init__(self, out: Path) -> None:
        self.dir = out / STATE_DIR

    def read_jsonl(self, name: str) -> dict[str, dict]:
        path = self.dir / name
        found = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interruption: that source is redone
                found[rec["key"]] = rec
        return found

    def append(self, name: str, rec: dict) -> None:
        with (self.dir / name).open("a") as f:
            f.write(json.dumps(rec) + "\n")  # a line cut short by a crash is ignored when read back


def _fingerprint(cfg: PrepareConfig, items: list[SourceItem]) -> dict[str, Any]:
    opts = {k: v for k, v in to_dict(cfg).items()
            if k not in ("out", "sources", "descriptions", "strict", "workers", "overwrite")}
    if opts.get("max_image_pixels") == DEFAULT_MAX_IMAGE_PIXELS:
        del opts["max_image_pixels"]  # datasets prepared before the option existed still resume
    listing = hashlib.sha1(json.dumps([[it.key, it.class_name, it.kind, it.patient, it.slide, it.split]
                                       for it in items]).encode()).hexdigest()
    return {"options": opts, "sources": listing, "n_sources": len(items)}


def _open_state(out: Path, fingerprint: dict, overwrite: bool) -> _State:
    state = _State(out)
    meta = state.dir / "state.json"
    ours = [out / STATE_DIR, out / "tiles", out / "manifest.csv", out / "dataset.json", out / "config.yaml"]
    if meta.is_file():
        old = json.loads(meta.read_text())
        if old != fingerprint and not overwrite:
            changed = sorted(k for k in set(old["options"]) | set(fingerprint["options"])
                             if old["options"].get(k) != fingerprint["options"].get(k))
            what = f"options {', '.join(changed)}" if changed else "sources"
            raise PathUpError(f"{out} holds a dataset prepared with other {what}; use another --out or --overwrite")
        if old != fingerprint:
            _remove(ours)
    elif (out / "manifest.csv").exists():
        if not overwrite:
            raise PathUpError(f"{out} already holds a manifest.csv not written by this version of prepare; "
                              f"use another --out or --overwrite")
        _remove(ours)
    state.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta, json.dumps(fingerprint, sort_keys=True))
    return state


def _remove(paths: Iterable[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


# ---------------------------------------------------------------------------------------------------
# Planning: the cap


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


# ---------------------------------------------------------------------------------------------------
# The stage


def level_specs(cfg: PrepareConfig) -> list[LevelSpec]:
    """The levels to cut, in ``LEVELS`` order."""
    if not cfg.levels:
        raise PathUpError(f"--levels needs at least one of {', '.join(LEVELS)}")
    unknown = [lv for lv in cfg.levels if lv not in LEVELS]
    if unknown:
        raise PathUpError(f"unknown level(s) {unknown}; allowed: {', '.join(LEVELS)}")
    sizes = {"patch": (cfg.patch_size, cfg.patch_overlap), "overview": (cfg.overview_size, cfg.overview_overlap)}
    return [LevelSpec(lv, *sizes[lv], cfg.tile_size) for lv in LEVELS if lv in cfg.levels]


def load_descriptions(path: str | None, classes: list[str]) -> dict[str, str]:
    """``--descriptions FILE``: a YAML/JSON mapping class -> text; every key must be a known class."""
    if not path:
        return {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise PathUpError(f"descriptions file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise PathUpError(f"{p}: not valid YAML or JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) and v.strip() for v in data.values()):
        raise PathUpError(f"{p}: expected a mapping of class: description (non-empty text)")
    data = {str(k): v.strip() for k, v in data.items()}
    unknown = sorted(set(data) - set(classes))
    if unknown:
        raise PathUpError(f"{p}: unknown class(es) {', '.join(unknown)}; classes: {', '.join(classes)}")
    return data


def class_order(items: list[SourceItem]) -> list[str]:
    """Classes ordered by the source's rank (BRACS ``k``) where given, then by name."""
    rank: dict[str, int] = {}
    for it in items:
        if it.class_order >= 0:
            rank[it.class_name] = min(rank.get(it.class_name, it.class_order), it.class_order)
    names = {it.class_name for it in items}
    return sorted(names, key=lambda c: (c not in rank, rank.get(c, 0), c))


def _check(cfg: PrepareConfig) -> None:
    if not 0 <= cfg.tissue_threshold <= 1:
        raise PathUpError(f"--tissue-threshold must be in [0, 1], got {cfg.tissue_threshold}")
    if not 0 <= cfg.min_tissue <= 1:
        raise PathUpError(f"--min-tissue must be in [0, 1], got {cfg.min_tissue}")
    if cfg.max_per_class < 0:
        raise PathUpError(f"--max-per-class must be >= 0 (0: no cap), got {cfg.max_per_class}")
    if cfg.workers < 0:
        raise PathUpError(f"--workers must be >= 0, got {cfg.workers}")
    if not 8 <= cfg.tile_size <= MAX_TILE_SIZE:
        raise PathUpError(f"--tile-size must be between 8 and {MAX_TILE_SIZE} pixels, got {cfg.tile_size}")
    for name in ("patch_size", "overview_size"):
        value = getattr(cfg, name)
        if not 1 <= value <= MAX_REGION_SIZE:
            raise PathUpError(f"--{name.replace('_', '-')} must be between 1 and {MAX_REGION_SIZE} source pixels, "
                              f"got {value}")
    if cfg.max_image_pixels < 1:
        raise PathUpError(f"--max-image-pixels must be a positive number of pixels, got {cfg.max_image_pixels}")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise PathUpError(f"--out {out} exists and is not a folder")
    check_writable_dir(out, "--out")


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _bad(bad: list[BadFile], path: str, reason: str, strict: bool) -> None:
    b = BadFile(path, reason)
    if strict:
        raise PathUpError(f"bad file (--strict): {reason}")
    log.warning("skipped bad file: %s", reason)
    bad.append(b)


def prepare(cfg: PrepareConfig, progress: bool = True) -> PrepareSummary:
    """Run ``pathup prepare`` (see the module docstring) and return its summary."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    t0 = time.perf_counter()
    _check(cfg)
    specs = level_specs(cfg)
    levels = [s.name for s in specs]
    params = _Params(tuple(specs), cfg.tissue_threshold, cfg.min_tissue, cfg.small_tile, cfg.max_image_pixels)
    workers = cfg.workers or _available_cpus()

    with logging_redirect_tqdm():
        items, listed_bad, _layouts = collect_sources(list(cfg.sources), cfg.layout, cfg.slide_classes)
        bad: list[BadFile] = []
        for b in listed_bad:
            _bad(bad, b.path, str(b), cfg.strict)
        classes = class_order(items)
        descriptions = load_descriptions(cfg.descriptions, classes)
        splits = assign_splits(items, cfg.split_by, cfg.val_fraction, cfg.test_fraction, cfg.seed)

        out = Path(cfg.out)
        state = _open_state(out, _fingerprint(cfg, items), cfg.overwrite)
        stale = remove_stale_temp_files(out)
        if stale:
            log.info("removed %d temporary file(s) left by an interrupted run in %s", stale, out / "tiles")
        by_key = {it.key: it for it in items}

        plan_file = state.dir / "plan.json"
        if plan_file.is_file():
            plan = json.loads(plan_file.read_text())
            for key, reason in plan.get("bad", []):
                _bad(bad, key, reason, cfg.strict)
        else:
            scans = state.read_jsonl("scan.jsonl")
            scan_bad = []
            jobs = [(it, params) for it in items if it.key not in scans]
            with contextlib.closing(_run(scan_source, jobs, workers, "scan", progress)) as results:
                for res in results:  # (closing: an error or Ctrl+C here stops the workers at once)
                    if "error" in res:
                        _bad(bad, res["key"], res["error"], cfg.strict)
                        scan_bad.append([res["key"], res["error"]])
                    else:
                        state.append("scan.jsonl", res)
                        scans[res["key"]] = res
            plan = _plan(items, splits, scans, cfg, levels)
            plan["bad"] = scan_bad
            atomic_write_text(plan_file, json.dumps(plan))

        done = state.read_jsonl("done.jsonl")
        n_resumed = sum(1 for k in plan["tiles"] if k in done)
        jobs = [(by_key[k], plan["tiles"][k], plan["splits"][k], params, str(out))
                for k in plan["tiles"] if k not in done]
        try:
            with contextlib.closing(_run(write_source, jobs, workers, "tiles", progress)) as results:
                for res in results:
                    if "fatal" in res:
                        raise PathUpError(res["fatal"])
                    if "error" in res:
                        _bad(bad, res["key"], res["error"], cfg.strict)
                    else:
                        state.append("done.jsonl", res)
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
                              f"(see the warnings; --min-tissue {cfg.min_tissue})")

        tiles = Counter((r["class"], r["level"], r["split"]) for r in rows)
        empty = [c for c in classes if not any(tiles.get((c, lv, s)) for lv in levels for s in SPLITS)]
        if empty:
            log.warning("class(es) %s have no tiles (all background or bad files; --min-tissue %s): a model "
                        "trained on this dataset cannot learn them, and 'pathup train' refuses them",
                        ", ".join(repr(c) for c in empty), cfg.min_tissue)
        no_train = [c for c in classes if c not in empty and not any(tiles.get((c, lv, "train")) for lv in levels)]
        if no_train:
            log.warning("class(es) %s have no tiles in the train split (all went to val/test); "
                        "'pathup train' refuses them", ", ".join(repr(c) for c in no_train))
        write_manifest(out, rows, extra_columns=("tissue",))
        table = PromptTable(classes=classes, levels=levels, descriptions=descriptions)
        info = {"classes": classes, "levels": levels, "descriptions": descriptions, "tile_size": cfg.tile_size,
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
