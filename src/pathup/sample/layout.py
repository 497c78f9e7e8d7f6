"""Class maps ("layouts") for ``pathup compose`` (issue 14; SPEC.md section 7, composition).

A layout says which class each position of the large image shows. It is held as a small label grid
(``Layout.labels``, indices into ``Layout.classes``) at its own scale and resized to the output size by
nearest neighbour (``resize_labels``), so the label mask written beside the image is exactly the resized
layout. Three sources:

* a label image (PNG or any image PIL reads) with a legend file (YAML or JSON, ``class: value``): the
  values are colours (``"#e41a1c"``, ``[228, 26, 28]`` or ``"228,26,28"``), matched exactly against an
  RGB image, or integer ids, matched against a single-channel image (or an RGB image whose three
  channels are equal). Without a legend a single-channel image's ids are the model's class indices;
* a JSON file of regions in relative coordinates (0..1 of width and height)::

      {"background": "stroma",                       # optional: class of what no region covers
       "regions": [{"class": "tumour", "rect": [0.1, 0.1, 0.5, 0.6]},          # x0, y0, x1, y1
                   {"class": "lymphocytes", "polygon": [[0.6, 0.2], [0.9, 0.3], [0.7, 0.8]]}],
       "colours": {"tumour": "#e41a1c"}}              # optional preview colours

  later regions paint over earlier ones; a pixel belongs to a region when its centre does. It is
  rasterised at the output size (at most ``JSON_GRID`` positions on the long side, then resized like
  a label image);
* ``random_layout``: a seeded random partition into K classes of the model, ``voronoi`` cells or
  ``blob`` shapes (argmax of smoothed noise) of about ``region_size`` pixels.

``geojson_regions`` turns the resized mask into polygons along pixel edges (traced on the layout grid and
mapped to output pixels, so they are exact and cheap): a GeoJSON FeatureCollection that QuPath imports as
classified annotations.

Bad layouts (unknown colour or id, a class the model does not know, a legend that does not match the
image, an empty layout) raise a one-line ``PathUpError`` naming the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pathup.errors import PathUpError

SHAPES = ("blob", "voronoi")
JSON_GRID = 4096  # rasterisation grid of JSON layouts, long side
RANDOM_GRID = 1024  # grid of random layouts, long side
# Preview colours of classes without a legend colour (ColorBrewer Set1, then Dark2).
PALETTE = [(228, 26, 28), (55, 126, 184), (77, 175, 74), (152, 78, 163), (255, 127, 0), (255, 255, 51),
           (166, 86, 40), (247, 129, 191), (27, 158, 119), (217, 95, 2), (117, 112, 179), (231, 41, 138),
           (102, 166, 30), (230, 171, 2), (166, 118, 29), (102, 102, 102)]

Colour = tuple[int, int, int]


@dataclass
class Layout:
    """A class map: ``labels`` (h, w) int32 indices into ``classes``; ``colours`` one per class.

    ``ids`` are the values written to the label mask for each class (the model's class indices when it
    has a class table, else the order of ``classes``).
    """

    labels: np.ndarray
    classes: list[str]
    colours: list[Colour]
    ids: list[int]
    source: str

    @property
    def present(self) -> list[int]:
        """Indices (into ``classes``) of the classes that occur in the layout."""
        return [int(i) for i in np.unique(self.labels)]

    def legend(self) -> dict[str, dict[str, Any]]:
        """``{class: {"id": mask value, "colour": [r, g, b]}}`` for the sidecar."""
        return {c: {"id": int(i), "colour": list(col)} for c, i, col in zip(self.classes, self.ids, self.colours)}


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each of ``dst`` output positions for a nearest-neighbour resize (pixel centres)."""
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.int64), src - 1)


def resize_labels(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of a label grid to (height, width); the exact rule of the label mask."""
    rows = nearest_indices(labels.shape[0], height)
    cols = nearest_indices(labels.shape[1], width)
    return labels[rows[:, None], cols[None, :]]


def edge_positions(src: int, dst: int) -> np.ndarray:
    """Output pixel edge of each source cell edge under ``resize_labels``: ``src + 1`` values from 0 to ``dst``.

    Source cell ``j`` covers output pixels ``edges[j] .. edges[j + 1] - 1`` (empty when shrinking drops it).
    """
    idx = nearest_indices(src, dst)
    return np.searchsorted(idx, np.arange(src + 1), side="left")


# --------------------------------------------------------------------------------------------- parsing
def parse_colour(value: Any, where: str) -> Colour:
    """``"#rrggbb"``, ``"#rgb"``, ``"r,g,b"`` or ``[r, g, b]`` -> (r, g, b)."""
    try:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("#"):
                h = text[1:]
                if len(h) == 3:
                    h = "".join(ch * 2 for ch in h)
                if len(h) != 6:
                    raise ValueError
                rgb = tuple(int(h[i:i + 2], 16) for i in (0, 2, 4))
            else:
                rgb = tuple(int(p) for p in text.split(","))
        elif isinstance(value, (list, tuple)) and not isinstance(value, bool):
            rgb = tuple(int(v) for v in value if not isinstance(v, bool) and float(v) == int(v))
        else:
            raise ValueError
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ValueError
    except (TypeError, ValueError):
        raise PathUpError(f"{where}: {value!r} is not a colour; use '#rrggbb', 'r,g,b' or [r, g, b]") from None
    return rgb  # type: ignore[return-value]


def _read_mapping(path: Path, what: str) -> Any:
    import yaml

    if not path.is_file():
        raise PathUpError(f"{what} not found: {path}")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise PathUpError(f"{what} {path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} "
                          f"({str(err).splitlines()[0]})") from None
    return data


def read_legend(path: str | Path) -> dict[str, int | Colour]:
    """A legend file (YAML or JSON): ``class: colour`` or ``class: integer id``, one kind for all."""
    path = Path(path)
    data = _read_mapping(path, "legend")
    if not isinstance(data, dict) or not data:
        raise PathUpError(f"legend {path}: expected a non-empty mapping of class: colour (or class: id)")
    legend: dict[str, int | Colour] = {}
    for cls, value in data.items():
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise PathUpError(f"legend {path}: id of {cls!r} must be >= 0, got {value}")
            legend[str(cls)] = int(value)
        else:
            legend[str(cls)] = parse_colour(value, f"legend {path}, class {cls!r}")
    kinds = {isinstance(v, int) for v in legend.values()}
    if len(kinds) > 1:
        raise PathUpError(f"legend {path}: mixes integer ids and colours; use one kind for every class")
    values = list(legend.values())
    dup = sorted({str(v) for v in values if values.count(v) > 1})
    if dup:
        raise PathUpError(f"legend {path}: value {dup[0]} is given to more than one class")
    return legend


def _check_classes(classes: Sequence[str], model_classes: Sequence[str] | None, where: str) -> None:
    if model_classes is None:
        return
    for cls in classes:
        if cls not in model_classes:
            raise PathUpError(f"{where}: class {cls!r} is not a class of the model; allowed: {', '.join(model_classes)}")


def _finish(labels: np.ndarray, classes: list[str], colours: dict[str, Colour], source: str,
            model_classes: Sequence[str] | None) -> Layout:
    """Drop classes that do not occur, renumber labels, assign ids and preview colours."""
    present = [int(i) for i in np.unique(labels)]
    if not present:
        raise PathUpError(f"layout {source} is empty")
    remap = np.full(len(classes), -1, dtype=np.int32)
    remap[present] = np.arange(len(present), dtype=np.int32)
    labels = remap[labels]
    kept = [classes[i] for i in present]
    ids = [model_classes.index(c) for c in kept] if model_classes is not None else list(range(len(kept)))
    cols = [colours.get(c, PALETTE[i % len(PALETTE)]) for c, i in zip(kept, ids)]
    return Layout(labels=labels.astype(np.int32), classes=kept, colours=cols, ids=ids, source=source)


def read_label_image(path: str | Path, legend: str | Path | dict | None = None, *,
                     model_classes: Sequence[str] | None = None) -> Layout:
    """A label image with its legend (see the module docstring).

    Args:
        path: the image (PNG; any format PIL reads).
        legend: a legend file, an already-read legend dict, or None (ids are the model's class indices).
        model_classes: the model's classes (None: any class name is accepted, as for a model without a
            class table).

    Raises:
        PathUpError: unreadable image; unknown colour or id; a legend of the wrong kind for the image or
            matching none of its pixels; a class not in the model.
    """
    from PIL import Image, UnidentifiedImageError

    from pathup.io import image_size

    path = Path(path)
    if not path.is_file():
        raise PathUpError(f"layout not found: {path}")
    image_size(path)  # the header's size against the pixel limit, before any decoding
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("1", "L", "I", "I;16", "I;16B", "I;16L"):
                values = np.asarray(img).astype(np.int64)  # (h, w) ids
                channels = 1
            elif mode == "P" and (legend is not None and _legend_kind(legend, path) == "id"):
                values = np.asarray(img).astype(np.int64)  # palette indices as ids
                channels = 1
            else:
                rgb = np.asarray(img.convert("RGB")).astype(np.int64)  # (h, w, 3)
                if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]) and (
                        legend is None or _legend_kind(legend, path) == "id"):
                    values, channels = rgb[..., 0], 1
                else:
                    values, channels = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2], 3
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise PathUpError(f"cannot read layout {path}: {err}") from None
    if values.size == 0:
        raise PathUpError(f"layout {path} is empty")
    where = f"layout {path}"
    if legend is None:
        if channels != 1:
            raise PathUpError(f"{where} is a colour image: give a legend (--legend FILE, class: colour)")
        if model_classes is None:
            raise PathUpError(f"{where}: a model without a class table needs a legend (--legend FILE)")
        table = {i: c for i, c in enumerate(model_classes)}
        found = [int(v) for v in np.unique(values)]
        bad = [v for v in found if v not in table]
        if bad:
            raise PathUpError(f"{where}: id {bad[0]} has no class; ids are the model's class indices "
                              f"0..{len(model_classes) - 1} ({', '.join(f'{i}: {c}' for i, c in table.items())}) "
                              "unless a legend says otherwise")
        classes = list(model_classes)
        colours: dict[str, Colour] = {}
        labels = values.astype(np.int32)
        return _finish(labels, classes, colours, str(path), model_classes)
    legend_map = legend if isinstance(legend, dict) else read_legend(legend)
    legend_name = "legend" if isinstance(legend, dict) else f"legend {legend}"
    kind = _legend_kind(legend_map, path)
    if kind == "colour" and channels == 1 and not _all_grey(legend_map):
        raise PathUpError(f"{legend_name} gives colours but {where} has one channel of ids; "
                          "give ids in the legend (class: 3)")
    if kind == "id" and channels == 3:
        raise PathUpError(f"{legend_name} gives integer ids but {where} is a colour image; "
                          "give colours in the legend (class: '#rrggbb')")
    classes = list(legend_map)
    _check_classes(classes, model_classes, legend_name)
    if kind == "colour":
        keys = {((r << 16) | (g << 8) | b) if channels == 3 else r: c
                for c, (r, g, b) in legend_map.items()}  # type: ignore[misc]
    else:
        keys = {int(v): c for c, v in legend_map.items()}  # type: ignore[arg-type]
    found, inverse = np.unique(values, return_inverse=True)
    unknown = [int(v) for v in found if int(v) not in keys]
    if unknown:
        v = unknown[0]
        n = int((values == v).sum())
        shown = (f"colour #{v:06x} ({v >> 16}, {(v >> 8) & 255}, {v & 255})" if channels == 3 else f"id {v}")
        allowed = ", ".join(f"{c}: {_show(legend_map[c])}" for c in classes)
        raise PathUpError(f"{where}: {shown} ({n} px) is not in the {legend_name}; allowed: {allowed}")
    index = np.array([classes.index(keys[int(v)]) for v in found], dtype=np.int32)
    labels = index[inverse.reshape(values.shape)]
    colours = {c: v for c, v in legend_map.items() if not isinstance(v, int)}  # type: ignore[misc]
    return _finish(labels, classes, colours, str(path), model_classes)


def _show(v: Any) -> str:
    return f"#{v[0]:02x}{v[1]:02x}{v[2]:02x}" if isinstance(v, tuple) else str(v)


def _all_grey(legend: dict) -> bool:
    return all(isinstance(v, tuple) and v[0] == v[1] == v[2] for v in legend.values())


def _legend_kind(legend: Any, path: Path) -> str:
    if not isinstance(legend, dict):
        legend = read_legend(legend)
    return "id" if all(isinstance(v, int) for v in legend.values()) else "colour"


def _relative_points(points: Any, where: str) -> list[tuple[float, float]]:
    try:
        pts = [(float(p[0]), float(p[1])) for p in points]
        if any(len(p) != 2 for p in points):
            raise ValueError
    except (TypeError, ValueError, IndexError, KeyError):
        raise PathUpError(f"{where}: expected a list of [x, y] points in relative coordinates") from None
    for x, y in pts:
        if not (math.isfinite(x) and math.isfinite(y) and -1e-9 <= x <= 1 + 1e-9 and -1e-9 <= y <= 1 + 1e-9):
            raise PathUpError(f"{where}: point ({x}, {y}) is outside [0, 1] (coordinates are relative)")
    return pts


def read_region_json(path: str | Path, size: tuple[int, int], *, model_classes: Sequence[str] | None = None,
                     grid: int = JSON_GRID) -> Layout:
    """A JSON layout of rectangles and polygons in relative coordinates (see the module docstring).

    Args:
        path: the JSON file.
        size: output (width, height); the regions are rasterised on a grid of this aspect with at most
            ``grid`` positions on the long side.
        model_classes: the model's classes (None: any name).

    Raises:
        PathUpError: bad JSON, a region without class or shape, points outside [0, 1], a class not in the
            model, an uncovered area without ``background``, no region at all.
    """
    path = Path(path)
    data = _read_mapping(path, "layout")
    where = f"layout {path}"
    if isinstance(data, list):
        data = {"regions": data}
    if not isinstance(data, dict):
        raise PathUpError(f"{where}: expected an object with 'regions' (a list of rect/polygon regions)")
    extra = sorted(set(data) - {"regions", "background", "colours", "colors"})
    if extra:
        raise PathUpError(f"{where}: unknown key(s) {', '.join(extra)}; allowed: regions, background, colours")
    regions = data.get("regions") or []
    if not isinstance(regions, list) or not regions:
        raise PathUpError(f"{where} is empty: give 'regions' (rect [x0, y0, x1, y1] or polygon [[x, y], ...])")
    background = data.get("background")
    classes: list[str] = [] if background is None else [str(background)]
    shapes: list[tuple[str, list[tuple[float, float]]]] = []
    for n, region in enumerate(regions):
        rw = f"{where}, region {n}"
        if not isinstance(region, dict) or "class" not in region:
            raise PathUpError(f"{rw}: expected {{'class': ..., 'rect': [...]}} or {{'class': ..., 'polygon': [...]}}")
        cls = str(region["class"])
        if ("rect" in region) == ("polygon" in region):
            raise PathUpError(f"{rw}: give exactly one of 'rect' or 'polygon'")
        if "rect" in region:
            r = region["rect"]
            if not isinstance(r, (list, tuple)) or len(r) != 4:
                raise PathUpError(f"{rw}: rect must be [x0, y0, x1, y1] in relative coordinates")
            (x0, y0), (x1, y1) = _relative_points([r[:2], r[2:]], rw)
            if x1 <= x0 or y1 <= y0:
                raise PathUpError(f"{rw}: rect {list(r)} has no area (need x1 > x0 and y1 > y0)")
            pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        else:
            pts = _relative_points(region["polygon"], rw)
            if len(pts) < 3:
                raise PathUpError(f"{rw}: a polygon needs at least 3 points")
        if cls not in classes:
            classes.append(cls)
        shapes.append((cls, pts))
    _check_classes(classes, model_classes, where)
    colours = {str(c): parse_colour(v, f"{where}, colour of {c!r}")
               for c, v in (data.get("colours") or data.get("colors") or {}).items()}
    width, height = size
    scale = min(1.0, grid / max(width, height))
    gw, gh = max(1, round(width * scale)), max(1, round(height * scale))
    none = -1
    labels = np.full((gh, gw), none, dtype=np.int64)
    # Pixel (i, j) belongs to a region when its centre ((j + 0.5) / gw, (i + 0.5) / gh) does; later
    # regions paint over earlier ones.
    for cls, pts in shapes:
        poly = np.array([(x * gw, y * gh) for x, y in pts])  # grid coordinates
        c0, c1 = max(0, math.floor(poly[:, 0].min())), min(gw, math.ceil(poly[:, 0].max()))
        r0, r1 = max(0, math.floor(poly[:, 1].min())), min(gh, math.ceil(poly[:, 1].max()))
        if c1 <= c0 or r1 <= r0:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1]
        centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
        inside = _contains(poly, centres).reshape(r1 - r0, c1 - c0)
        labels[r0:r1, c0:c1][inside] = classes.index(cls)
    uncovered = labels == none
    if uncovered.any():
        if background is None:
            share = 100.0 * uncovered.mean()
            raise PathUpError(f"{where}: the regions leave {share:.1f}% of the image uncovered; "
                              "add \"background\": \"<class>\" or cover it")
        labels[uncovered] = 0
    return _finish(labels.astype(np.int32), classes, colours, str(path), model_classes)


def _contains(poly: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of ``points`` (N, 2) against ``poly`` (M, 2), vectorised."""
    x, y = points[:, 0], points[:, 1]
    inside = np.zeros(len(points), dtype=bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0)):
        if y0 == y1:
            continue
        crosses = (y0 > y) != (y1 > y)
        xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < xc)
    return inside


def random_layout(model_classes: Sequence[str], k: int, size: tuple[int, int], *, seed: int = 0,
                  shape: str = "voronoi", region_size: int = 1024, grid: int = RANDOM_GRID) -> Layout:
    """A seeded random partition of the image into ``k`` classes of the model.

    The ``k`` classes are drawn from the model's classes; ``voronoi`` makes cells around random centres
    (about one per ``region_size x region_size`` pixels, at least ``k``, each class given to at least one),
    ``blob`` makes rounded shapes: each pixel takes the class whose Gaussian-smoothed white noise (sigma a
    third of ``region_size``) is largest. Built on a grid of at most ``grid`` positions on the long side.

    Raises:
        PathUpError: ``k`` out of [1, number of classes], an unknown shape, a region size below 1.
    """
    if not model_classes:
        raise PathUpError("--random-layout needs a model with a class table (pathup.json)")
    n = len(model_classes)
    if not 1 <= k <= n:
        raise PathUpError(f"--random-layout must be in [1, {n}] (the model's classes), got {k}")
    if shape not in SHAPES:
        raise PathUpError(f"--layout-shape {shape!r} is unknown; allowed: {', '.join(SHAPES)}")
    if region_size < 1:
        raise PathUpError(f"--region-size must be at least 1 pixel, got {region_size}")
    rng = np.random.default_rng(int(seed))
    chosen = [model_classes[i] for i in sorted(rng.choice(n, size=k, replace=False))]
    width, height = size
    scale = min(1.0, grid / max(width, height))
    gw, gh = max(1, round(width * scale)), max(1, round(height * scale))
    cell = max(region_size * scale, 1.0)  # region size in grid positions
    if shape == "voronoi":
        count = max(k, round(gw * gh / (cell * cell)))
        centres = rng.uniform(0, 1, size=(count, 2)) * [gw, gh]  # (count, 2) x, y
        owner = np.concatenate([np.arange(k), rng.integers(0, k, size=count - k)])  # every class at least once
        rng.shuffle(owner)
        from scipy.spatial import cKDTree

        yy, xx = np.mgrid[0:gh, 0:gw]
        _, nearest = cKDTree(centres).query(np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1))
        labels = owner[nearest].reshape(gh, gw)
    else:
        from scipy.ndimage import gaussian_filter

        fields = np.stack([gaussian_filter(rng.standard_normal((gh, gw)), sigma=cell / 3, mode="wrap")
                           for _ in range(k)])  # (k, gh, gw)
        labels = fields.argmax(0)
    return _finish(labels.astype(np.int32), chosen, {}, f"random:{shape}:k={k}:seed={seed}", model_classes)


def load_layout(layout: str | Path, size: tuple[int, int], *, legend: str | Path | None = None,
                model_classes: Sequence[str] | None = None) -> Layout:
    """A layout file: ``.json`` regions, or a label image with an optional legend."""
    path = Path(layout)
    if path.suffix.lower() == ".json":
        if legend is not None:
            raise PathUpError(f"--legend is for label images; layout {path} is a JSON of regions "
                              "(give colours in its 'colours')")
        return read_region_json(path, size, model_classes=model_classes)
    return read_label_image(path, legend, model_classes=model_classes)


# --------------------------------------------------------------------------------------------- outputs
def colour_mask(mask: np.ndarray, layout: Layout) -> np.ndarray:
    """An RGB preview of a mask of layout indices: (H, W) -> (H, W, 3) uint8."""
    lut = np.array(layout.colours, dtype=np.uint8).reshape(-1, 3)
    return lut[mask]


def overlay(image: np.ndarray, mask: np.ndarray, layout: Layout, alpha: float = 0.35) -> np.ndarray:
    """The image with the class colours blended in at ``alpha`` and region borders drawn solid."""
    col = colour_mask(mask, layout).astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * col
    border = np.zeros(mask.shape, dtype=bool)
    border[:-1] |= mask[:-1] != mask[1:]
    border[1:] |= mask[:-1] != mask[1:]
    border[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    border[:, 1:] |= mask[:, :-1] != mask[:, 1:]
    out[border] = col[border]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _trace_rings(region: np.ndarray) -> list[list[tuple[int, int]]]:
    """Closed rings along the pixel edges of a boolean grid's region boundary, (x, y) cell corners.

    Each boundary edge is directed with the region on its right in image coordinates (y down): outer
    rings run clockwise on screen (positive ``_ring_area``), holes anticlockwise. At a corner touched by
    two diagonal cells the ring turns right, so the cells stay separate rings.
    """
    h, w = region.shape
    pad = np.zeros((h + 2, w + 2), dtype=bool)
    pad[1:-1, 1:-1] = region
    inside = pad[1:-1, 1:-1]
    nxt: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(xs: np.ndarray, ys: np.ndarray, dx: int, dy: int) -> None:
        for x, y in zip(xs.tolist(), ys.tolist()):
            nxt.setdefault((x, y), []).append((x + dx, y + dy))

    ys, xs = np.nonzero(inside & ~pad[:-2, 1:-1])  # top edge free: edge (x, y) -> (x + 1, y)
    add(xs, ys, 1, 0)
    ys, xs = np.nonzero(inside & ~pad[1:-1, 2:])  # right edge free: (x + 1, y) -> (x + 1, y + 1)
    add(xs + 1, ys, 0, 1)
    ys, xs = np.nonzero(inside & ~pad[2:, 1:-1])  # bottom edge free: (x + 1, y + 1) -> (x, y + 1)
    add(xs + 1, ys + 1, -1, 0)
    ys, xs = np.nonzero(inside & ~pad[1:-1, :-2])  # left edge free: (x, y + 1) -> (x, y)
    add(xs, ys + 1, 0, -1)
    rings = []
    while nxt:
        start = next(iter(nxt))
        ring = [start]
        cur, prev_dir = start, None
        while True:
            outs = nxt[cur]
            if len(outs) == 1:
                nb = outs.pop()
            else:  # a pinch point: turn right (keeps diagonal cells apart)
                d_in = prev_dir
                nb = min(outs, key=lambda p: _turn_rank(d_in, (p[0] - cur[0], p[1] - cur[1])))
                outs.remove(nb)
            if not outs:
                del nxt[cur]
            prev_dir = (nb[0] - cur[0], nb[1] - cur[1])
            cur = nb
            if cur == start:
                break
            ring.append(cur)
        rings.append(_simplify(ring))
    return rings


def _turn_rank(d_in: tuple[int, int] | None, d_out: tuple[int, int]) -> int:
    if d_in is None:
        return 0
    cross = d_in[0] * d_out[1] - d_in[1] * d_out[0]  # > 0: a right turn in y-down coordinates
    return 0 if cross > 0 else (1 if cross == 0 else 2)


def _simplify(ring: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Drop vertices in the middle of straight runs."""
    out = []
    n = len(ring)
    for i in range(n):
        a, b, c = ring[i - 1], ring[i], ring[(i + 1) % n]
        if (b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0]) != 0:
            out.append(b)
    return out or ring


def _ring_area(ring: Sequence[tuple[float, float]]) -> float:
    """Signed area (shoelace); positive for rings clockwise on screen (y down)."""
    a = 0.0
    for (x0, y0), (x1, y1) in zip(ring, list(ring[1:]) + [ring[0]]):
        a += x0 * y1 - x1 * y0
    return a / 2.0


def _inside(pt: tuple[float, float], ring: Sequence[tuple[float, float]]) -> bool:
    x, y = pt
    hit = False
    n = len(ring)
    for i in range(n):
        (x0, y0), (x1, y1) = ring[i], ring[(i + 1) % n]
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            hit = not hit
    return hit


def region_polygons(region: np.ndarray, xedges: np.ndarray, yedges: np.ndarray) -> list[list[list[list[int]]]]:
    """Polygons (outer ring then holes, each closed, [x, y] pixel corners) of a boolean layout region.

    ``xedges``/``yedges`` map layout cell corners to output pixel corners (``edge_positions``), so the
    polygons bound exactly the output pixels of the nearest-resized region.
    """
    rings = [[(int(xedges[x]), int(yedges[y])) for x, y in ring] for ring in _trace_rings(region)]
    rings = [_simplify(r) for r in rings if len(r) >= 3 and _ring_area(r) != 0]
    outers = sorted((r for r in rings if _ring_area(r) > 0), key=_ring_area)  # smallest first
    polys: list[list[list[tuple[int, int]]]] = [[r] for r in outers]
    for hole in (r for r in rings if _ring_area(r) < 0):
        # The middle of the hole's first edge lies on no other ring: the smallest outer ring around it holds it.
        (x0, y0), (x1, y1) = hole[0], hole[1]
        probe = ((x0 + x1) / 2, (y0 + y1) / 2)
        for poly in polys:
            if _inside_or_on(probe, poly[0]):
                poly.append(hole)
                break
    return [[[list(p) for p in ring + ring[:1]] for ring in poly] for poly in polys]


def _inside_or_on(pt: tuple[float, float], ring: Sequence[tuple[float, float]]) -> bool:
    x, y = pt
    n = len(ring)
    for i in range(n):
        (x0, y0), (x1, y1) = ring[i], ring[(i + 1) % n]
        if min(x0, x1) <= x <= max(x0, x1) and min(y0, y1) <= y <= max(y0, y1) and (
                (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)) == 0:
            return True
    return _inside(pt, ring)


def geojson_regions(layout: Layout, width: int, height: int) -> dict[str, Any]:
    """The layout's regions at the output size as a GeoJSON FeatureCollection that QuPath imports.

    One ``Polygon`` feature per connected region (outer ring then holes, pixel corner coordinates of the
    full-resolution image, y down), with properties ``{"objectType": "annotation", "classification":
    {"name": class, "color": [r, g, b]}}``. Traced on the layout grid and mapped through the
    nearest-neighbour resize, so the polygons bound exactly the pixels of the label mask.
    """
    gh, gw = layout.labels.shape
    # Along an axis the output shrinks, trace on the output's own rows/columns (identity edges).
    rows = nearest_indices(gh, height) if height < gh else np.arange(gh)
    cols = nearest_indices(gw, width) if width < gw else np.arange(gw)
    yedges = np.arange(height + 1) if height < gh else edge_positions(gh, height)
    xedges = np.arange(width + 1) if width < gw else edge_positions(gw, width)
    labels = layout.labels[rows[:, None], cols[None, :]]
    features = []
    for index, cls in enumerate(layout.classes):
        region = labels == index
        for poly in region_polygons(region, xedges, yedges):
            features.append({
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": poly},
                "properties": {"objectType": "annotation", "name": cls,
                               "classification": {"name": cls, "color": list(layout.colours[index])},
                               "pathup_id": int(layout.ids[index])},
            })
    return {"type": "FeatureCollection", "features": features}
