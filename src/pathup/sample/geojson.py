"""A layout's regions as GeoJSON polygons that QuPath imports as classified annotations.

Traced along pixel edges on the layout grid and mapped through the nearest-neighbour resize, so the
polygons bound exactly the pixels of the label mask written beside the image. The work is linear in the
number of pixels: each boundary edge is visited once, and a hole goes to the polygon of the connected
region on its inner side (``scipy.ndimage.label``), not by a point-in-polygon search over all polygons
(which took 32 s for a 512 px noise layout; ``benchmarks/bench_geojson.py`` measures the scaling).
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any, Iterator, Sequence

import numpy as np

from pathup.sample.layout import Layout, edge_positions, nearest_indices


# The cell on the right of a boundary edge leaving corner (x, y) in direction (dx, dy), as an offset.
_RIGHT_CELL = {(1, 0): (0, 0), (0, 1): (-1, 0), (-1, 0): (-1, -1), (0, -1): (0, -1)}


def _trace_rings(region: np.ndarray) -> list[tuple[list[tuple[int, int]], tuple[int, int]]]:
    """Closed rings along the pixel edges of a boolean grid's region boundary, (x, y) cell corners, each
    with the (x, y) cell of the region on the right of its first edge.

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
    order = list(nxt)  # a ring starts at the first corner (in this order) with an edge left
    first = 0
    while nxt:
        while order[first] not in nxt:
            first += 1
        start = order[first]
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
            if cur == start and len(ring) == 1:
                dx, dy = _RIGHT_CELL[prev_dir]
                cell = (start[0] + dx, start[1] + dy)
            cur = nb
            if cur == start:
                break
            ring.append(cur)
        rings.append((_simplify(ring), cell))
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


def region_polygons(region: np.ndarray, xedges: np.ndarray, yedges: np.ndarray) -> list[list[list[list[int]]]]:
    """Polygons (outer ring then holes, each closed, [x, y] pixel corners) of a boolean layout region.

    ``xedges``/``yedges`` map layout cell corners to output pixel corners (``edge_positions``), so the
    polygons bound exactly the output pixels of the nearest-resized region. Polygons come smallest first;
    each 4-connected part of the region has one outer ring (a ring keeps edge-adjacent cells), and a hole
    belongs to the part on its inner side: the part of the cell on the right of its first edge.
    """
    from scipy import ndimage

    parts, _ = ndimage.label(region)  # 4-connected parts, 1..n
    xs, ys = [int(v) for v in xedges], [int(v) for v in yedges]
    rings = []
    for ring, (cx, cy) in _trace_rings(region):
        mapped = _simplify([(xs[x], ys[y]) for x, y in ring])
        area = _ring_area(mapped) if len(mapped) >= 3 else 0.0
        if area != 0:
            rings.append((mapped, area, int(parts[cy, cx])))
    polys: dict[int, list[list[tuple[int, int]]]] = {}
    for mapped, _area, part in sorted((r for r in rings if r[1] > 0), key=lambda r: r[1]):  # smallest first
        polys[part] = [mapped]
    for mapped, area, part in rings:
        if area < 0 and part in polys:
            polys[part].append(mapped)
    return [[[list(p) for p in ring + ring[:1]] for ring in poly] for poly in polys.values()]


def geojson_regions(layout: Layout, width: int, height: int) -> dict[str, Any]:
    """The layout's regions at the output size as a GeoJSON FeatureCollection that QuPath imports.

    One ``Polygon`` feature per connected region (outer ring then holes, pixel corner coordinates of the
    full-resolution image, y down), with properties ``{"objectType": "annotation", "classification":
    {"name": class, "color": [r, g, b]}}``. Traced on the layout grid and mapped through the
    nearest-neighbour resize, so the polygons bound exactly the pixels of the label mask.
    """
    with _gc_paused():
        return _geojson_regions(layout, width, height)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while the many small lists of a FeatureCollection are built:
    they hold no cycles, and its full passes over them made the work grow faster than the pixels."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _geojson_regions(layout: Layout, width: int, height: int) -> dict[str, Any]:
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
