"""Class maps ("layouts") for ``pathup compose`` (beyond the paper: regional conditioning, MultiDiffusion-style).

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

``pathup.sample.layout_files`` reads the two files (``load_layout``); ``pathup.sample.geojson``'s
``geojson_regions`` turns the resized mask into polygons along pixel edges (traced on the layout grid and
mapped to output pixels, so they are exact and cheap): a GeoJSON FeatureCollection that QuPath imports as
classified annotations.

Bad layouts (unknown colour or id, a class the model does not know, a legend that does not match the
image, an empty layout) raise a one-line ``PathUpError`` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pathup.errors import OptionError, PathUpError

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
        raise OptionError("random_layout", "needs a model with a class table (pathup.json)")
    n = len(model_classes)
    if not 1 <= k <= n:
        raise OptionError("random_layout", f"must be in [1, {n}] (the model's classes), got {k}")
    if shape not in SHAPES:
        raise OptionError("layout_shape", f"{shape!r} is unknown; allowed: {', '.join(SHAPES)}")
    if region_size < 1:
        raise OptionError("region_size", f"must be at least 1 pixel, got {region_size}")
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

