"""The synthetic images of the downstream task (PathUp paper section 4.7, Table 6): reading a
``pathup generate`` folder, choosing how many images each class gets, and turning them into ViT items
or ABMIL bags cut like the real patch tiles.

Synthetic data come from ``pathup generate``: ``DIR/<class>/<class>_s<seed>.png`` large images (overviews
in ``DIR/<class>/overview/`` are ignored unless asked for).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Sequence

from pathup.downstream.data import Bag, Box, Item, Tile
from pathup.errors import OptionError, PathUpError
from pathup.io import IMAGE_SUFFIXES, image_size, safe_name

log = logging.getLogger(__name__)


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _folder_class(folder: Path) -> str | None:
    """The class a ``pathup generate`` class folder was made for (its ``generate_settings.json``), or None."""
    from pathup.data.generated import GENERATE_SETTINGS, read_json

    cls = (read_json(folder / GENERATE_SETTINGS) or {}).get("class")
    return cls if isinstance(cls, str) else None


def synthetic_folders(folder: Path, classes: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Which sub-folder of ``folder`` holds each class: ({class: folder name}, unclaimed folder names).

    A folder whose ``generate_settings.json`` names a class belongs to it; otherwise a class's folder is
    ``class_dirname(class)`` (what ``pathup generate`` writes: the name itself when it is a safe file
    name, else a safe form plus a short hash), the exact class name, or, for folders made before
    ``class_dirname``, ``safe_name(class)`` when no other class claims that name.
    """
    from pathup.data.generated import class_dirname

    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    marked = {name: _folder_class(folder / name) for name in found}
    dirs: dict[str, str] = {}
    for cls in classes:
        named = [name for name in found if marked[name] == cls]
        if len(named) > 1:
            raise OptionError("synthetic", f"{folder}: folders {', '.join(named)} were all generated for class {cls!r}")
        if named:
            dirs[cls] = named[0]
    taken = set(dirs.values())
    for cls in classes:
        if cls in dirs:
            continue
        for name in (class_dirname(cls), cls):
            if name in found and name not in taken and marked[name] in (None, cls):
                dirs[cls] = name
                taken.add(name)
                break
    for cls in classes:  # older folders: safe_name, where no class claims the name in its own right
        name = safe_name(cls)
        if cls not in dirs and name in found and name not in taken and marked[name] in (None, cls):
            dirs[cls] = name
            taken.add(name)
    return dirs, [name for name in found if name not in taken]


def scan_synthetic(folder: str | Path, classes: Sequence[str], *, overviews: bool = False) -> dict[str, list[Path]]:
    """Synthetic images per class from a ``pathup generate`` folder.

    Large images are the files directly inside each class's folder (``synthetic_folders``: as
    ``pathup generate`` names it, ``class_dirname``); with ``overviews`` the files of its ``overview/``
    are added. The class folders must match ``classes`` exactly; a sidecar ``.json`` whose ``class``
    differs from its folder's class is an error.
    """
    from pathup.data.generated import class_dirname

    folder = Path(folder)
    if not folder.is_dir():
        raise OptionError("synthetic", f": folder not found: {folder}")
    dirs, extra = synthetic_folders(folder, classes)
    missing = [c if class_dirname(c) == c else f"{c} (folder {class_dirname(c)})" for c in classes if c not in dirs]
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"extra: {', '.join(extra)}")
        if missing:
            parts.append(f"missing: {', '.join(missing)}")
        raise OptionError("synthetic", f"{folder}: class folders do not match the dataset's classes "
                          f"({', '.join(classes)}); {'; '.join(parts)}")
    out: dict[str, list[Path]] = {}
    for cls in classes:
        images = _images_in(folder / dirs[cls])
        if overviews:
            images += _images_in(folder / dirs[cls] / "overview")
        for img in images:
            sidecar = img.with_suffix(".json")
            if sidecar.is_file():
                try:
                    meta = json.loads(sidecar.read_text())
                except json.JSONDecodeError as err:
                    raise PathUpError(f"{sidecar}: not valid JSON ({err})") from None
                if isinstance(meta, dict) and "class" in meta and meta["class"] != cls:
                    raise PathUpError(f"{img}: its sidecar says class {meta['class']!r} but it is in folder {cls!r}")
        if not images:
            log.warning("synthetic folder %s has no images", folder / dirs[cls])
        out[cls] = images
    if not any(out.values()):
        raise OptionError("synthetic", f"{folder}: no images in any class folder")
    return out


def allocate_synthetic(n_real: Sequence[int], available: Sequence[int], budget: int | None,
                       policy: str = "rare") -> list[int]:
    """How many synthetic images each class gets.

    ``budget`` images in total (``None``: all available) are handed out one at a time by
    water-filling: each goes to the class with the lowest level that still has images, where the
    level is real + synthetic count (``policy='rare'``, so rare classes are filled first) or the
    synthetic count alone (``'uniform'``). Ties go to the earlier class.
    """
    if policy not in ("rare", "uniform"):
        raise PathUpError(f"unknown synthetic policy {policy!r}; allowed: rare, uniform")
    if len(n_real) != len(available):
        raise ValueError("n_real and available must have one entry per class")
    total = sum(available)
    budget = total if budget is None else min(int(budget), total)
    if budget < 0:
        raise PathUpError(f"synthetic budget must be >= 0, got {budget}")
    take = [0] * len(available)
    base = list(n_real) if policy == "rare" else [0] * len(available)
    for _ in range(budget):
        open_ = [c for c in range(len(available)) if take[c] < available[c]]
        c = min(open_, key=lambda k: (base[k] + take[k], k))
        take[c] += 1
    return take


def select_synthetic(images: dict[str, list[Path]], classes: Sequence[str], n_real: Sequence[int],
                     per_class: int | None, policy: str, seed: int) -> dict[str, list[Path]]:
    """The synthetic images used for training: ``allocate_synthetic`` counts, drawn with ``seed``."""
    if per_class is not None and per_class < 0:
        raise OptionError("synthetic_per_class", f"must be >= 0, got {per_class}")
    budget = None if per_class is None else per_class * len(classes)
    counts = allocate_synthetic(n_real, [len(images[c]) for c in classes], budget, policy)
    rng = random.Random(seed)
    chosen = {}
    for cls, n in zip(classes, counts):
        pool = list(images[cls])
        rng.shuffle(pool)
        chosen[cls] = sorted(pool[:n])
    return chosen


def synthetic_items(chosen: dict[str, list[Path]], classes: Sequence[str]) -> list[Item]:
    """ViT items of the chosen synthetic images (each image is its own group)."""
    return [Item(Tile(p), classes.index(cls), f"synthetic:{p}", f"synthetic:{p}", "synthetic")
            for cls in classes for p in chosen.get(cls, [])]


def grid_boxes(width: int, height: int, size: int, overlap: int) -> list[Box]:
    """Boxes of ``size`` x ``size`` with ``overlap`` covering a ``width`` x ``height`` image.

    The last row and column are aligned to the border; an image smaller than ``size`` along an
    axis is taken whole along that axis (one box).
    """
    if size <= 0 or not 0 <= overlap < size:
        raise PathUpError(f"patch size must be > 0 and overlap in [0, size), got size={size}, overlap={overlap}")
    from pathup.data.tiling import tile_grid

    return tile_grid(width, height, size, overlap)  # the grid prepare cuts real images with


def synthetic_bags(chosen: dict[str, list[Path]], classes: Sequence[str], size: int, overlap: int) -> list[Bag]:
    """ABMIL bags of the chosen synthetic large images, each cut into a grid of patches."""
    bags = []
    for cls in classes:
        for p in chosen.get(cls, []):
            w, h = image_size(p)
            tiles = [Tile(p, box) for box in grid_boxes(w, h, size, overlap)]
            bags.append(Bag(f"synthetic:{p}", classes.index(cls), f"synthetic:{p}", tiles, "synthetic"))
    return bags

