"""Benchmark of the GeoJSON regions of ``pathup compose`` (issue 20 item 15): time against layout size.

Builds noise layouts (each pixel a random one of ``--classes`` classes: the most regions and holes a
layout of that size can have) and a blob layout (``pathup.sample.layout.random_layout``) at each
``--sizes`` side length, traces their GeoJSON (``pathup.sample.geojson.geojson_regions``) at the layout's
own size, and reports in the same run the seconds, the number of features, and the ratio of time to the
ratio of pixels between consecutive sizes (1.0 = linear in pixels; the tracing before issue 20 gave 7.3
and 11 for the noise layout at 128 -> 256 -> 512).

Usage::

    python benchmarks/bench_geojson.py
    python benchmarks/bench_geojson.py --sizes 256 512 1024 --repeats 3

Prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def noise_layout(size: int, k: int, seed: int):
    from pathup.sample.layout import PALETTE, Layout

    labels = np.random.default_rng(seed).integers(0, k, size=(size, size)).astype(np.int32)
    return Layout(labels=labels, classes=[f"c{i}" for i in range(k)], colours=list(PALETTE[:k]),
                  ids=list(range(k)), source=f"noise:{size}")


def blob_layout(size: int, k: int, seed: int):
    from pathup.sample.layout import random_layout

    return random_layout([f"c{i}" for i in range(k)], k, (size, size), seed=seed, shape="blob",
                         region_size=max(8, size // 16), grid=size)


def measure(layout, repeats: int) -> dict:
    from pathup.sample.geojson import geojson_regions

    h, w = layout.labels.shape
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fc = geojson_regions(layout, w, h)
        times.append(time.perf_counter() - t0)
    return {"seconds": round(min(times), 4), "features": len(fc["features"]), "pixels": h * w}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="the fastest of this many runs is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import pathup.sample.layout  # noqa: F401 - (loads the sample package in its import order)

    report = {}
    for name, make in (("noise", noise_layout), ("blob", blob_layout)):
        rows = [{"size": s, **measure(make(s, args.classes, args.seed), args.repeats)} for s in args.sizes]
        for prev, row in zip(rows, rows[1:]):
            row["time_ratio_per_pixel_ratio"] = round(
                (row["seconds"] / max(prev["seconds"], 1e-9)) / (row["pixels"] / prev["pixels"]), 2)
        report[name] = rows
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
