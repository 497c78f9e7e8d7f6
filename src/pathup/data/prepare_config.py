"""Options of ``pathup prepare`` (PathUp paper 3.1 and 4.1) and the checks that involve several of them.

Regions are given in pixels: ``patch_px`` / ``overview_px`` (and their overlaps) are source level-0
pixels, or, with ``target_mpp`` set, pixels at ``target_mpp`` microns per pixel, so that every source is
cut at the same physical scale (a region of ``patch_px`` px at M um/px is ``patch_px * M / source_mpp``
level-0 pixels). ``tile_px`` is the size of the written tiles. The older names ``patch_size``,
``overview_size`` and ``tile_size`` are accepted as aliases (YAML, keyword options, hidden CLI flags).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from pathup.config import accepts_aliases, option, validate
from pathup.data.tiling import LevelSpec
from pathup.errors import OptionError, PathUpError
from pathup.io import DEFAULT_MAX_IMAGE_PIXELS, check_apart, check_writable_dir, read_text
from pathup.prompts import LEVELS

MAX_TILE_PX = 4096  # tile_px bound (a 4096 px RGB tile is 48 MB in memory)
MAX_REGION_PX = 65536  # patch_px / overview_px bound


@accepts_aliases
@dataclass
class PrepareConfig:
    """Options of ``pathup prepare`` (the paper's defaults, PathUp paper 3.1 and 4.1)."""

    out: str = option(dataclasses.MISSING, "the dataset folder to write", metavar="DATASET")
    sources: list[str] = option(help="image folders, BRACS roots, CSV manifests or slides",
                                default_factory=list, cli=False)
    layout: Literal["auto", "folders", "bracs", "csv", "wsi"] = option("auto", "how the sources are organised")
    slide_classes: Optional[str] = option(
        None, "CSV with columns slide (file name, stem or path), class [, patient, split] for whole-slide images",
        metavar="CSV")
    levels: list[Literal["patch", "overview"]] = option(help="spatial levels to cut",
                                                        default_factory=lambda: list(LEVELS))
    patch_px: int = option(512, "patch tile region in pixels: source level-0 pixels, or pixels at --target-mpp "
                                "when given (at most 65536)", min=1, max=MAX_REGION_PX, aliases=("patch_size",))
    patch_overlap: int = option(64, "overlap of neighbouring patch tiles, in the pixels of --patch-px", min=0)
    overview_px: int = option(2048, "overview tile region in pixels, like --patch-px (at most 65536)",
                              min=1, max=MAX_REGION_PX, aliases=("overview_size",))
    overview_overlap: int = option(256, "overlap of neighbouring overview tiles, in the pixels of --overview-px",
                                   min=0)
    tile_px: int = option(512, "size of the written tiles, both levels (8 to 4096 pixels)", min=8,
                          max=MAX_TILE_PX, aliases=("tile_size",))
    target_mpp: Optional[float] = option(
        None, "cut every source at this physical scale: --patch-px and --overview-px count pixels at this many "
              "microns per pixel (e.g. 0.5 for 20x); needs each source's own scale: a slide's metadata or --mpp "
              "(default: regions in level-0 pixels, as before)", min=0, min_exclusive=True, metavar="UM_PER_PX")
    mpp: Optional[float] = option(
        None, "microns per pixel of the sources' level 0 (image folders and CSV sources have none of their own; "
              "for slides it replaces the slide's own)", min=0, min_exclusive=True, metavar="UM_PER_PX")
    small_tile: Literal["resize", "pad"] = option(
        "resize", "an image smaller than a tile along an axis is used whole along it, then resized to a square "
                  "tile or padded with white")
    tissue_threshold: float = option(0.08, "HSV saturation from which a pixel counts as tissue", min=0, max=1)
    min_tissue: float = option(0.25, "tiles with a smaller tissue fraction are dropped as background (0 keeps all)",
                               min=0, max=1)
    max_per_class: int = option(6000, "at most this many tiles per class, level and split, seeded sample "
                                      "(0: no cap)", min=0)
    split_by: Literal["patient", "slide", "none"] = option(
        "patient", "group that stays on one side of a split; a split given by the source is kept")
    val_fraction: float = option(0.1, "share of images (by group) for validation", min=0, max=1, max_exclusive=True)
    test_fraction: float = option(0.1, "share of images (by group) for test", min=0, max=1, max_exclusive=True)
    seed: int = option(0, "seed of the split and of the per-class cap", min=0)
    descriptions: Optional[str] = option(
        None, "YAML or JSON file mapping class -> free-text description used in prompts", metavar="FILE")
    strict: bool = option(False, "stop at the first bad file instead of skipping it")
    workers: int = option(0, "worker processes (0: one per available CPU)", min=0)
    overwrite: bool = option(False, "replace a dataset prepared with other options or sources in --out")
    max_image_pixels: int = option(
        DEFAULT_MAX_IMAGE_PIXELS, "images (not whole-slide files) with more pixels (width x height) are skipped "
                                  "as bad files before decoding (decompression bombs); raise it for genuinely "
                                  "large RoIs", min=1)


def level_specs(cfg: PrepareConfig) -> list[LevelSpec]:
    """The levels to cut, in ``LEVELS`` order, in the units of ``patch_px`` (see the module docstring)."""
    if not cfg.levels:
        raise PathUpError(f"levels needs at least one of {', '.join(LEVELS)}")
    unknown = [lv for lv in cfg.levels if lv not in LEVELS]
    if unknown:
        raise PathUpError(f"levels: unknown level(s) {unknown}; allowed: {', '.join(LEVELS)}")
    sizes = {"patch": (cfg.patch_px, cfg.patch_overlap), "overview": (cfg.overview_px, cfg.overview_overlap)}
    return [LevelSpec(lv, *sizes[lv], cfg.tile_px) for lv in LEVELS if lv in cfg.levels]


def check_config(cfg: PrepareConfig) -> None:
    """Every option's range (``pathup.config.validate``) and the output folder; raises PathUpError."""
    if cfg.max_image_pixels < 1:  # named with its flag too: the limit's other messages name it
        raise OptionError("max_image_pixels", f"must be a positive number of pixels (--max-image-pixels), "
                                              f"got {cfg.max_image_pixels}")
    validate(cfg)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise PathUpError(f"out: {out} exists and is not a folder")
    for source in cfg.sources:
        check_apart(source, out, "source")
    check_writable_dir(out, "--out")


def load_descriptions(path: str | None, classes: list[str]) -> dict[str, str]:
    """``descriptions``: a YAML/JSON file mapping class -> text; every key must be a known class."""
    if not path:
        return {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise PathUpError(f"descriptions file not found: {p}")
    try:
        data = yaml.safe_load(read_text(p, "descriptions file"))
    except yaml.YAMLError as err:
        raise PathUpError(f"{p}: not valid YAML or JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) and v.strip() for v in data.values()):
        raise PathUpError(f"{p}: expected a mapping of class: description (non-empty text)")
    data = {str(k): v.strip() for k, v in data.items()}
    unknown = sorted(set(data) - set(classes))
    if unknown:
        raise PathUpError(f"{p}: unknown class(es) {', '.join(unknown)}; classes: {', '.join(classes)}")
    return data
