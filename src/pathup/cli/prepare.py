"""``pathup prepare SOURCE... --out DATASET``: cut RoIs or whole-slide images into prompted, split tiles."""

from __future__ import annotations

import argparse

from pathup.config import add_config_args, config_from_args

EPILOG = """\
layouts (--layout auto detects them):
  folders  ROOT/<class>/*.png|jpg|tif     one folder per class (BreakHis names give patient and slide)
  bracs    ROOT/{train,val,test}/<k>_<CLASS>/*.png   split kept, classes ordered by k
  csv      FILE.csv with path, class [, patient, slide, split]; paths relative to the CSV
  wsi      slide files or folders of them (.svs .tif .ndpi .mrxs ...) with --slide-classes CSV

tiles: each level cuts --X-size regions with --X-overlap px overlap, covering the whole image (the last
row and column align to the border), and writes them at --tile-size. An image smaller than a region
along an axis is used whole along it; the region is then stretched to a square tile (--small-tile
resize) or kept at the level's scale and padded with white at the bottom/right (--small-tile pad).
Tiles whose tissue fraction is below --min-tissue are dropped as background.

writes DATASET/tiles/<level>/<class>/*.png, DATASET/manifest.csv, DATASET/dataset.json and
DATASET/config.yaml; rerunning the same command resumes (finished sources are skipped).

example:
  pathup prepare data/bracs --out runs/bracs-tiles
  pathup prepare slides/ --layout wsi --slide-classes slides.csv --out runs/wsi-tiles \\
      --patch-size 256 --patch-overlap 32 --overview-size 1024 --overview-overlap 128 --tile-size 256
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from pathup.data.prepare import PrepareConfig  # light: no torch

    p = subparsers.add_parser(
        "prepare", help="tile RoIs or whole-slide images into a training dataset",
        description="Cut every image into patch and overview tiles (background dropped by a tissue mask), "
                    "split by patient or slide, cap tiles per class and level, and write tiles, "
                    "manifest.csv and dataset.json.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source_paths", nargs="*", metavar="SOURCE",
                   help="image folders, BRACS roots, CSV manifests or slides (or 'sources:' in --config)")
    add_config_args(p, PrepareConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathup.data.prepare import PrepareConfig, prepare

    fixed = {"sources": list(args.source_paths)} if args.source_paths else {}
    cfg = config_from_args(PrepareConfig, args, **fixed)
    summary = prepare(cfg)
    print(summary.table())
    return 0
