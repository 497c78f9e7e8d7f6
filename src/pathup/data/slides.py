"""Source readers: plain images and whole-slide images behind one interface (PathUp paper 3.1).

``open_reader(path, kind)`` returns a ``SourceReader`` that is used as a context manager::

    with open_reader(path, "slide", mpp=None) as src:
        W, H = src.dimensions              # level 0, pixels
        src.level_dimensions, src.level_downsamples
        src.mpp                            # microns per level-0 pixel, or None when unknown
        tile = src.read(x, y, w, h, 512, 512)   # the level-0 region (x, y, w, h) at 512 x 512 px
        thumb = src.thumbnail(32.0)        # the whole source at about 1/32 of its size

* ``ImageReader``: a region of interest (PNG, JPEG, TIFF...) decoded whole after its header's size was
  checked against the pixel limit; one level; ``mpp`` only when given (image files rarely carry a
  trustworthy physical size).
* ``SlideReader``: a whole-slide image opened with tiffslide, or OpenSlide (``pip install
  'pathup[openslide]'``) for formats tiffslide cannot read (``.mrxs``, ``.ndpi`` variants). Regions are
  read from the finest pyramid level that is at least as coarse as needed, then area-resized. ``mpp`` is
  the slide's own (``tiffslide.mpp-x`` / ``openslide.mpp-x``) unless given.

Every failure to open or read becomes a one-line PathUpError naming the file.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

from pathup.errors import PathUpError
from pathup.data.tiling import resize_image
from pathup.io import max_image_pixels, open_image, to_rgb8

KINDS = ("image", "slide")


def check_mpp(value: Any, where: str) -> float | None:
    """A positive finite microns-per-pixel value, or None when ``value`` is None/empty."""
    if value is None or value == "":
        return None
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        raise PathUpError(f"{where}: microns per pixel must be a number, got {value!r}") from None
    if not (math.isfinite(mpp) and mpp > 0):
        raise PathUpError(f"{where}: microns per pixel must be a positive number, got {value!r}")
    return mpp


class SourceReader:
    """The interface of every source: level-0 size, pyramid levels, regions, a thumbnail, microns per pixel."""

    kind = "image"
    path: Path
    dimensions: tuple[int, int]
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: float | None

    def read(self, x: int, y: int, w: int, h: int, out_w: int | None = None,
             out_h: int | None = None) -> "Image.Image":  # noqa: F821
        """The level-0 region ``(x, y, w, h)`` as an RGB image of ``out_w x out_h`` (default ``w x h``)."""
        raise NotImplementedError

    def thumbnail(self, downsample: float) -> "Image.Image":  # noqa: F821
        """The whole source at about ``1 / downsample`` of its level-0 size (at least 1 x 1)."""
        W, H = self.dimensions
        return self.read(0, 0, W, H, max(1, math.ceil(W / downsample)), max(1, math.ceil(H / downsample)))

    def close(self) -> None:
        """Release the file (a no-op for decoded images)."""

    def __enter__(self) -> "SourceReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageReader(SourceReader):
    """A region-of-interest image, decoded whole (``pathup.io.open_image``: bombs and bad files refused)."""

    kind = "image"

    def __init__(self, path: str | Path, max_pixels: int | None = None, *, mpp: float | None = None,
                 option: str | None = "--max-image-pixels") -> None:
        self.path = Path(path)
        self.image = open_image(self.path, max_pixels, option=option)
        self.dimensions = tuple(self.image.size)  # type: ignore[assignment]
        self.level_dimensions = [self.dimensions]
        self.level_downsamples = [1.0]
        self.mpp = check_mpp(mpp, str(self.path))

    def read(self, x: int, y: int, w: int, h: int, out_w: int | None = None,
             out_h: int | None = None) -> "Image.Image":  # noqa: F821
        region = self.image.crop((x, y, x + w, y + h))
        return resize_image(region, out_w or w, out_h or h)


class SlideReader(SourceReader):
    """A whole-slide image opened with tiffslide (or OpenSlide when tiffslide cannot read it)."""

    kind = "slide"

    def __init__(self, path: str | Path, max_pixels: int | None = None, *, mpp: float | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise PathUpError(f"slide not found: {self.path}")
        self.max_pixels = max_image_pixels(max_pixels)
        errors = []
        self._slide: Any = None
        for backend in ("tiffslide", "openslide"):
            try:
                if backend == "tiffslide":
                    import tiffslide

                    slide = tiffslide.TiffSlide(str(self.path))
                else:
                    import openslide

                    slide = openslide.OpenSlide(str(self.path))
            except ImportError:
                errors.append(f"{backend} not installed (pip install 'pathup[openslide]')")
                continue
            except Exception as err:  # noqa: BLE001 - any reader failure means "try the next reader"
                errors.append(f"{backend}: {type(err).__name__}: {err}")
                continue
            try:  # the metadata is read lazily: a damaged file fails here (e.g. IndexError: no pages)
                dims = tuple(int(v) for v in slide.dimensions)
                downsamples = [float(d) for d in slide.level_downsamples]
                level_dims = [tuple(int(v) for v in d) for d in slide.level_dimensions]
                if not level_dims or min(dims) < 1:
                    raise ValueError("no image levels")
            except Exception as err:  # noqa: BLE001
                errors.append(f"{backend}: {type(err).__name__}: {err}")
                with contextlib.suppress(Exception):
                    slide.close()
                continue
            self._slide, self.backend = slide, backend
            break
        if self._slide is None:
            why = _tiff_damage(self.path)
            if why is None and any("out of range(0)" in e for e in errors):
                why = "the file holds no image pages (damaged, or not a slide)"
            detail = "; ".join(" ".join(e.split()) for e in errors)
            if why:
                raise PathUpError(f"unreadable slide {self.path}: {why} ({detail})")
            raise PathUpError(f"cannot read slide {self.path}: {detail}")
        self.dimensions = dims  # type: ignore[assignment]
        self.level_downsamples = downsamples
        self.level_dimensions = level_dims  # type: ignore[assignment]
        self.mpp = check_mpp(mpp, str(self.path)) if mpp is not None else self._own_mpp()

    def _own_mpp(self) -> float | None:
        """The slide's microns per pixel from its metadata (x axis), or None when it has none."""
        props = getattr(self._slide, "properties", {}) or {}
        for key in (f"{self.backend}.mpp-x", "tiffslide.mpp-x", "openslide.mpp-x"):
            try:
                value = check_mpp(props.get(key), str(self.path))
            except PathUpError:
                value = None  # a zero or garbage value in the file: as if unknown
            if value is not None:
                return value
        return None

    def close(self) -> None:
        self._slide.close()

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (so no detail is lost)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample + 1e-6:
                best = i
        return best

    def read(self, x: int, y: int, w: int, h: int, out_w: int | None = None,
             out_h: int | None = None) -> "Image.Image":  # noqa: F821
        """The level-0 region ``(x, y, w, h)`` as an ``out_w x out_h`` RGB image, read from the finest level
        that is at least as coarse as needed (then area-resized)."""
        out_w, out_h = out_w or w, out_h or h
        lvl = self.best_level(min(w / out_w, h / out_h))
        d = self.level_downsamples[lvl]
        lw, lh = self.level_dimensions[lvl]
        rw = max(1, min(math.ceil(w / d), lw))
        rh = max(1, min(math.ceil(h / d), lh))
        if rw * rh > self.max_pixels:
            raise PathUpError(f"slide {self.path}: reading ({x}, {y}, {w}x{h}) needs a {rw}x{rh} region at level {lvl}, "
                              f"over the pixel limit of {self.max_pixels:,} (the slide has no coarser level); "
                              f"raise it with --max-image-pixels or use smaller tiles")
        try:
            region = to_rgb8(self._slide.read_region((int(x), int(y)), lvl, (rw, rh)))
        except Exception as err:  # noqa: BLE001
            raise PathUpError(f"cannot read slide {self.path} at ({x}, {y}): {err}") from None
        return resize_image(region, out_w, out_h)


def open_reader(path: str | Path, kind: str, max_pixels: int | None = None, *,
                mpp: float | None = None) -> SourceReader:
    """A ``SlideReader`` for ``kind="slide"``, an ``ImageReader`` for ``kind="image"``."""
    if kind == "slide":
        return SlideReader(path, max_pixels, mpp=mpp)
    if kind == "image":
        return ImageReader(path, max_pixels, mpp=mpp)
    raise PathUpError(f"unknown source kind {kind!r}; allowed: {', '.join(KINDS)}")


def _tiff_damage(path: Path) -> str | None:
    """Why a TIFF-based slide file cannot hold an image (truncated, empty, not a TIFF), or None when its
    header looks sound (the reader's own error is then the best explanation)."""
    import struct

    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as err:
        return f"cannot open the file ({err.strerror})"
    if size == 0:
        return "the file is empty (0 bytes)"
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None or len(head) < 8:
        return None  # not a TIFF (e.g. .mrxs): nothing more to say
    version = struct.unpack(order + "H", head[2:4])[0]
    if version == 42:
        first = struct.unpack(order + "I", head[4:8])[0]
    elif version == 43 and len(head) >= 16:
        first = struct.unpack(order + "Q", head[8:16])[0]
    else:
        return "the file has a TIFF signature but a damaged header"
    if first >= size:
        return (f"the file is truncated or incomplete: its first image directory is at byte {first:,} "
                f"but the file has {size:,} bytes (copy it again)")
    return None
