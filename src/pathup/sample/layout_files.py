"""Layout files for ``pathup compose``: a label image with its legend, or a JSON of regions (``load_layout``
reads either).

The formats are described in ``pathup.sample.layout``; bad files raise a one-line ``PathUpError`` naming
the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pathup.errors import OptionError, PathUpError
from pathup.sample.layout import JSON_GRID, Colour, Layout, _check_classes, _finish, parse_colour


def load_layout(layout: str | Path, size: tuple[int, int], *, legend: str | Path | None = None,
                model_classes: Sequence[str] | None = None) -> Layout:
    """A layout file: ``.json`` regions, or a label image with an optional legend."""
    path = Path(layout)
    if path.suffix.lower() == ".json":
        if legend is not None:
            raise OptionError("legend", f"is for label images; layout {path} is a JSON of regions "
                              "(give colours in its 'colours')")
        return read_region_json(path, size, model_classes=model_classes)
    return read_label_image(path, legend, model_classes=model_classes)


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
            legend_map = None if legend is None else legend if isinstance(legend, dict) else read_legend(legend)
            if mode in ("1", "L", "I", "I;16", "I;16B", "I;16L"):
                values = np.asarray(img).astype(np.int64)  # (h, w) ids
                channels = 1
            elif mode == "P" and (legend_map is not None and _legend_kind(legend_map) == "id"):
                values = np.asarray(img).astype(np.int64)  # palette indices as ids
                channels = 1
            else:
                rgb = np.asarray(img.convert("RGB")).astype(np.int64)  # (h, w, 3)
                if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]) and (
                        legend_map is None or _legend_kind(legend_map) == "id"):
                    values, channels = rgb[..., 0], 1
                else:
                    values, channels = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2], 3
    except PathUpError:  # the legend's own message (a PathUpError is a ValueError: not wrapped again)
        raise
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
    legend_name = "legend" if isinstance(legend, dict) else f"legend {legend}"
    kind = _legend_kind(legend_map)
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


def _legend_kind(legend: dict) -> str:
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


