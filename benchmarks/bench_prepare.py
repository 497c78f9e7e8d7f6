"""Benchmark ``pathup prepare`` on a folder of RoIs (issue 2).

Default: all 293 BreakHis images of ``../shared/data/breakhis-dev`` (700 x 460 JPEGs) at both levels with
``--patch-size 256 --patch-overlap 32 --overview-size 460 --overview-overlap 0 --tile-size 256``.
Target: under 60 s on 2 CPU cores. Prints the wall time, tiles written and rates.

    python benchmarks/bench_prepare.py [DATA] [--workers N] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "breakhis-dev"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help=f"image folder (default: {DEFAULT_DATA})")
    ap.add_argument("--workers", type=int, default=0, help="worker processes (0: one per available CPU)")
    ap.add_argument("--out", help="dataset folder (default: a temporary folder, removed afterwards)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    from pathup.data.prepare import PrepareConfig, prepare
    from pathup.io import list_images

    data = Path(args.data)
    if not data.is_dir():
        print(f"bench_prepare: data folder not found: {data}", file=sys.stderr)
        return 2
    n_images = len(list_images(data))
    tmp = None if args.out else tempfile.mkdtemp(prefix="bench_prepare.")
    out = Path(args.out or tmp) / "dataset"
    cfg = PrepareConfig(out=str(out), sources=[str(data)], patch_px=256, patch_overlap=32, overview_px=460,
                        overview_overlap=0, tile_px=256, workers=args.workers, overwrite=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        summary = prepare(cfg, progress=sys.stderr.isatty())
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(summary.table())
        print()
        print(f"images: {n_images}   tiles written: {summary.n_tiles}   "
              f"background dropped: {sum(summary.dropped_background.values())}   bad files: {len(summary.bad_files)}")
        print(f"wall time: {seconds:.2f} s   ({n_images / seconds:.1f} images/s, "
              f"{summary.n_tiles / seconds:.1f} tiles/s)   workers: {args.workers or cpus}   CPUs available: {cpus}")
        print(f"CPU time of this process: {cpu:.2f} s (all of the work only with --workers 1; "
              f"load-independent, unlike the wall time on a shared machine)")
        print(f"target < 60 s: {'met' if seconds < 60 else 'MISSED'} (ratio {seconds / 60:.2f})")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
