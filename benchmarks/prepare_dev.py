"""Prepare the 1,200 Kather 2016 development tiles as the benchmarks' held-out-slide dataset ("k1200").

The tissue benchmarks (``bench_classes.py``, ``bench_speed.py``, ``bench_features.py``) measure on real tiles
of a slide the model never saw. This script makes that split from the development folder (one sub-folder
per class and a ``MANIFEST.csv`` naming each tile's slide, as in ``kather2016-dev``) and prepares it with
the demo's tiling (``pathup.experiments.demo.config.SAMPLE_TILING["kather"]``: patch tiles 128 px crops,
overview tiles the whole 150 px field, both written at 128 px, 0.495 um/px, no tissue filter):

* held out (``test``): every tile of the slide ``--heldout-slide`` (CRC-Prim-HE-05), and, for a class with
  no tile on that slide (08_EMPTY comes from one slide only), every ``--every``-th tile of the class;
* ``train``: the rest.

Usage:
    python benchmarks/prepare_dev.py --root ../shared/data/kather2016-dev --out data/k1200
Writes OUT/ (a ``pathup prepare`` dataset) and OUT.csv (its source list with the split).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def split_rows(rows: list[dict], heldout_slide: str, every: int) -> list[dict]:
    """``rows`` (path, class, slide) with a ``split`` column: the held-out slide, else every ``every``-th tile
    of a class that has none on it."""
    covered = {r["class"] for r in rows if r["slide"] == heldout_slide}
    seen: dict[str, int] = {}
    out = []
    for r in rows:
        k = seen.get(r["class"], 0)
        seen[r["class"]] = k + 1
        test = r["slide"] == heldout_slide or (r["class"] not in covered and k % every == 0)
        out.append({**r, "split": "test" if test else "train"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("../shared/data/kather2016-dev"),
                    help="folder with MANIFEST.csv (path, class, slide) and the tiles")
    ap.add_argument("--out", type=Path, default=Path("data/k1200"))
    ap.add_argument("--heldout-slide", default="CRC-Prim-HE-05")
    ap.add_argument("--every", type=int, default=6, help="for a class without tiles on the held-out slide: hold "
                                                         "out every N-th tile")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    from pathup.data.prepare import PrepareConfig, prepare
    from pathup.experiments.demo.config import SAMPLE_TILING
    from pathup.io import atomic_write_text
    from pathup.sample_data import SAMPLE_MPP

    manifest = args.root / "MANIFEST.csv"
    if not manifest.is_file():
        raise SystemExit(f"error: {manifest} not found (--root must hold MANIFEST.csv with path, class, slide)")
    rows = split_rows(list(csv.DictReader(manifest.open())), args.heldout_slide, args.every)
    source = args.out.with_suffix(".csv")
    source.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(source, "path,class,slide,split\n" + "".join(
        f"{(args.root / r['path']).resolve()},{r['class']},{r['slide']},{r['split']}\n" for r in rows))
    cfg = PrepareConfig(out=str(args.out), sources=[str(source)], layout="csv", patch_overlap=0, overview_overlap=0,
                        tile_px=128, val_fraction=0.0, test_fraction=0.0, seed=0, overwrite=True,
                        mpp=SAMPLE_MPP["kather"], workers=args.workers, **SAMPLE_TILING["kather"])
    summary = prepare(cfg, progress=False)
    print(summary.table(), flush=True)


if __name__ == "__main__":
    main()
