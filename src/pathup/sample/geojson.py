"""A layout's regions as GeoJSON polygons that QuPath imports as classified annotations.

Traced along pixel edges on the layout grid and mapped through the nearest-neighbour resize, so the
polygons bound exactly the pixels of the label mask written beside the image.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pathup.sample.layout import Layout, edge_positions, nearest_indices


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
    from pathup.sample.layout_files import _contains  # the even-odd test the region files use

    return bool(_contains(np.asarray(ring, float), np.asarray([pt], float))[0])


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
