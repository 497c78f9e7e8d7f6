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

tiles: each level cuts --X-px regions with --X-overlap px overlap (X: patch, overview), covering the
whole image (the last row and column align to the border), and writes them at --tile-px. An image smaller
than a region along an axis is used whole along it; the region is then stretched to a square tile (--small-tile
resize) or kept at the level's scale and padded with white at the bottom/right (--small-tile pad).
Tiles whose tissue fraction is below --min-tissue are dropped as background.

physical scale: by default regions count level-0 pixels of each source, so a 40x slide and a 20x slide
give different fields of view. --target-mpp M counts them in pixels at M microns per pixel instead: a
--patch-px P region is P * M / source_mpp level-0 pixels, read from the best pyramid level and resized to
--tile-px. Slides carry their own scale (their MPP metadata); image folders and CSV sources need --mpp
(their level-0 microns per pixel, which for slides replaces the slide's own). manifest.csv records each
tile's microns per pixel (column mpp) and dataset.json the scale of each level ("mpp").
(--patch-size, --overview-size and --tile-size are older names of --patch-px, --overview-px, --tile-px.)

writes DATASET/tiles/<level>/<class>/*.png, DATASET/manifest.csv, DATASET/dataset.json and
DATASET/config.yaml; rerunning the same command resumes (finished sources are skipped).

example:
  pathup prepare data/bracs --out runs/bracs-tiles
  pathup prepare slides/ --layout wsi --slide-classes slides.csv --out runs/wsi-tiles \\
      --patch-px 256 --patch-overlap 32 --overview-px 1024 --overview-overlap 128 --tile-px 256
  pathup prepare slides/ --layout wsi --slide-classes slides.csv --out runs/wsi-20x --target-mpp 0.5
  pathup prepare rois/ --out runs/rois-20x --mpp 0.25 --target-mpp 0.5
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from pathup.data.prepare_config import PrepareConfig  # light: not the tiling pipeline

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
