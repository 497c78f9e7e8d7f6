"""Per-source work of ``pathup prepare``: scan a source for tissue tiles, then cut and save them
(PathUp paper 3.1). Plain functions of picklable arguments: they run in worker processes.

Physical scale: with ``target_mpp`` set, a level of ``size`` px (and ``overlap``) at ``target_mpp`` um/px is
``size * target_mpp / source_mpp`` level-0 pixels of a source with ``source_mpp`` um/px
(``source_levels``); the region is read from the best pyramid level and resized to ``tile_size``. Every
tile records its own scale, ``mpp`` = region microns / tile pixels (None when the source's scale is
unknown).
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathup.data.slides import SourceReader, open_reader
from pathup.data.sources import SourceItem
from pathup.data.tiling import LevelSpec, region_to_tile, tile_grid
from pathup.data.tissue import TissueMap, tissue_mask
from pathup.errors import PathUpError
from pathup.io import DEFAULT_MAX_IMAGE_PIXELS, atomic_path, safe_name

# Fast lossless PNG: zlib level 1 with Huffman-only coding (pathology tiles barely compress better at
# higher levels; Huffman-only is about 20% faster than level 1 at the same size on BreakHis tiles).
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_HUFFMAN_ONLY}
MASK_TILE_PIXELS = 32  # the tissue mask resolves the smallest tile into about 32 x 32 cells
MAX_MASK_SIDE = 4096  # a slide's mask is at most this many pixels on its long side
MIN_IMAGE_SIDE = 16  # a smaller image (or slide) cannot make a meaningful tile: skipped as a bad file


@dataclass(frozen=True)
class CutParams:
    """What every source is cut with (``levels`` in the units of ``patch_px``: see ``source_levels``)."""

    levels: tuple[LevelSpec, ...]
    tissue_threshold: float
    min_tissue: float
    small_tile: str
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    target_mpp: float | None = None
    mpp: float | None = None  # the sources' um/px when given (replaces a slide's own)


class MissingScale(PathUpError):
    """``target_mpp`` is set but a source's microns per pixel are unknown (stops the run)."""


def missing_scale(path: Path | str) -> MissingScale:
    return MissingScale(f"{path}: its microns per pixel are unknown, so it cannot be cut at target_mpp; give the "
                        f"sources' level-0 scale with mpp (--mpp)")


def source_levels(levels: tuple[LevelSpec, ...], source_mpp: float | None,
                  target_mpp: float | None) -> tuple[LevelSpec, ...]:
    """The levels in the source's level-0 pixels: unchanged without ``target_mpp``, else scaled by
    ``target_mpp / source_mpp`` (rounded to whole pixels; the overlap stays below the region)."""
    if target_mpp is None:
        return levels
    if source_mpp is None:
        raise PathUpError("source_levels: target_mpp needs the source's mpp")
    f = target_mpp / source_mpp
    out = []
    for spec in levels:
        size = max(1, round(spec.size * f))
        out.append(dataclasses.replace(spec, size=size, overlap=min(round(spec.overlap * f), size - 1)))
    return tuple(out)


def tile_mpp(spec: LevelSpec, source_mpp: float | None) -> float | None:
    """Microns per pixel of a level's tiles: region microns (``size * source_mpp``) / ``tile_size``."""
    return None if source_mpp is None else spec.size * source_mpp / spec.tile_size


def _open(item: SourceItem, params: CutParams) -> tuple[SourceReader, tuple[LevelSpec, ...], float | None]:
    """The source's reader, its levels in level-0 pixels, and its um/px (MissingScale when needed and unknown)."""
    src = open_reader(item.path, item.kind, params.max_pixels, mpp=params.mpp)
    if params.target_mpp is not None and src.mpp is None:
        src.close()
        raise missing_scale(item.path)
    return src, source_levels(params.levels, src.mpp, params.target_mpp), src.mpp


def _error_text(item: SourceItem, err: BaseException) -> str:
    text = str(err) if isinstance(err, PathUpError) else f"cannot read {item.path}: {type(err).__name__}: {err}"
    return " ".join(text.split())


def _check_side(item: SourceItem, width: int, height: int) -> None:
    if min(width, height) < MIN_IMAGE_SIDE:
        raise PathUpError(f"{item.kind} {item.path} is {width}x{height} px: too small to cut a meaningful tile "
                          f"(each side needs at least {MIN_IMAGE_SIDE} px)")


def scan_source(item: SourceItem, params: CutParams) -> dict[str, Any]:
    """Step 1 for one source: its size, um/px and, per level, the tissue tiles ``[x, y, w, h, fraction]`` (in
    level-0 pixels) and the number of background tiles dropped. Errors come back as ``{"error": ...}``, an
    unknown scale under ``target_mpp`` as ``{"fatal": ...}``."""
    try:
        src, levels, mpp = _open(item, params)
        min_size = min(s.size for s in levels)
        with src:
            W, H = src.dimensions
            _check_side(item, W, H)
            if src.kind == "slide":
                ov = src.thumbnail(max(1.0, min_size / MASK_TILE_PIXELS, max(W, H) / MAX_MASK_SIDE))
                tmap = TissueMap(tissue_mask(np.asarray(ov), params.tissue_threshold), W / ov.size[0],
                                 H / ov.size[1])
            else:
                tmap = TissueMap.from_image(src.image, params.tissue_threshold,  # type: ignore[attr-defined]
                                            max(1, min_size // MASK_TILE_PIXELS))
    except MissingScale as err:
        return {"key": item.key, "fatal": str(err)}
    except Exception as err:  # noqa: BLE001 - any decoder failure makes this one file bad
        return {"key": item.key, "error": _error_text(item, err)}
    out: dict[str, Any] = {}
    for spec in levels:
        keep, dropped = [], 0
        for x, y, w, h in tile_grid(W, H, spec.size, spec.overlap):
            frac = tmap.fraction(x, y, w, h)
            if frac >= params.min_tissue:
                keep.append([x, y, w, h, round(frac, 4)])
            else:
                dropped += 1
        out[spec.name] = {"tiles": keep, "dropped": dropped}
    return {"key": item.key, "width": W, "height": H, "mpp": mpp, "levels": out}


def tile_file(item: SourceItem, level: str, x: int, y: int) -> str:
    """The tile's path relative to the dataset folder (unique per source, level and position)."""
    tag = hashlib.sha1(item.key.encode()).hexdigest()[:8]
    cls, stem = safe_name(item.class_name, empty="x"), safe_name(item.path.stem, empty="x")
    return f"tiles/{level}/{cls}/{stem}-{tag}_{x}_{y}.png"


def write_source(item: SourceItem, tiles: dict[str, list[list[float]]], split: str, params: CutParams,
                 out: str) -> dict[str, Any]:
    """Step 3 for one source: cut, resize and save its planned tiles; returns its manifest rows."""
    rows = []
    try:
        src, levels, mpp = _open(item, params)
        with src:
            for spec in levels:
                scale = tile_mpp(spec, mpp)
                for x, y, w, h, frac in tiles.get(spec.name, []):
                    x, y, w, h = int(x), int(y), int(w), int(h)
                    if src.kind == "slide":  # read at about the tile's scale from the pyramid
                        s = spec.tile_size / spec.size
                        region = src.read(x, y, w, h, max(1, round(w * s)), max(1, round(h * s)))
                    else:
                        region = src.read(x, y, w, h)
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
                                 "split": split, "x": x, "y": y, "width": w, "height": h, "tissue": frac,
                                 "mpp": "" if scale is None else round(scale, 6)})
    except MissingScale as err:
        return {"key": item.key, "fatal": str(err)}
    except Exception as err:  # noqa: BLE001
        return {"key": item.key, "error": _error_text(item, err)}
    return {"key": item.key, "rows": rows}
