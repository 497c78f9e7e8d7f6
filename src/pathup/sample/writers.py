"""Write generated images with their settings and physical scale (PathUp paper 3.3).

* PNG: the settings (prompt, seed, model, every option) as JSON in a ``pathup`` text chunk, plus the
  same JSON in a sidecar file ``<image>.json``. With ``mpp`` (microns per pixel) the ``pHYs`` chunk holds
  the resolution in pixels per metre (``1e6 / mpp``) and a ``mpp`` text chunk the value itself.
* TIFF: a tiled pyramidal TIFF (deflate-compressed tiles, each level half the size of the one above).
  Without ``mpp``: successive image directories with ``NewSubfileType`` = reduced image, the generic
  tiled TIFF layout that OpenSlide, tiffslide and QuPath open, the settings in ``ImageDescription``.
  With ``mpp``: an OME-TIFF (the layout Bio-Formats, and so QuPath, reads with its scale bar): OME-XML
  in ``ImageDescription`` with ``PhysicalSizeX/Y`` in um (the settings in its ``Description``), the
  reduced levels in SubIFDs of level 0, and on every level the TIFF resolution tags in pixels per
  centimetre (``1e4 / (mpp x the level's downsample)``, ``ResolutionUnit`` = CENTIMETER), from which
  tiffslide and OpenSlide read the MPP. tifffile lists the levels as one series either way.

All writes are atomic (temporary file, then rename): an interrupted run never leaves a half image.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pathup.errors import PathUpError
from pathup.io import atomic_path, atomic_write_text

FORMATS = ("png", "tiff")
MPP_KEY = "mpp"  # PNG text chunk with the microns per pixel
TIFF_FROM_PX = 8192  # images with a side this large or larger are written as pyramidal TIFF
SETTINGS_KEY = "pathup"


def sidecar_path(image_path: str | Path) -> Path:
    """``DIR/name.png`` -> ``DIR/name.json``."""
    return Path(image_path).with_suffix(".json")


def settings_json(settings: dict[str, Any]) -> str:
    return json.dumps(settings, indent=2, sort_keys=True, default=str)


def write_sidecar(image_path: str | Path, settings: dict[str, Any]) -> Path:
    path = sidecar_path(image_path)
    atomic_write_text(path, settings_json(settings) + "\n")
    return path


def _loads(text: str, where: Path) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PathUpError(f"{where}: the settings are not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise PathUpError(f"{where}: the settings are not a JSON object")
    return data


def read_settings(image_path: str | Path) -> dict[str, Any]:
    """The settings saved beside an image (sidecar JSON, else the PNG text chunk).

    The text chunk is read from the PNG's header (``save_png`` writes it before the pixel data); no pixel
    is decoded, and the header's size goes through ``pathup.io.image_size``, so a corrupt file or a
    decompression bomb is a one-line PathUpError.
    """
    path = Path(image_path)
    side = sidecar_path(path)
    if side.is_file():
        return _loads(side.read_text(), side)
    if path.suffix.lower() == ".png" and path.is_file():
        from PIL import Image

        from pathup.io import _bomb_error, _pil_limit, max_image_pixels

        limit = max_image_pixels()
        try:  # the header only: an unreadable file or a bomb PIL refuses is a PathUpError (as in image_size)
            with _pil_limit(limit), Image.open(path) as img:
                text = img.info.get(SETTINGS_KEY)  # chunks before the pixel data; ``img.text`` would decode
        except Image.DecompressionBombError as err:
            raise _bomb_error(path, err, limit, None) from None
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file
            raise PathUpError(f"cannot read image {path}: {err}") from None
        if isinstance(text, str) and text:
            return _loads(text, path)
    raise PathUpError(f"no settings found for {path} (no {side.name} and no PNG text chunk)")


def _as_array(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise PathUpError(f"expected an 8-bit RGB image (H, W, 3), got {arr.dtype} {arr.shape}")
    return arr


def _check_mpp(mpp: float | None) -> float | None:
    if mpp is None:
        return None
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not math.isfinite(mpp) or mpp <= 0:
        raise PathUpError(f"mpp must be a positive number of microns per pixel, got {mpp!r}")
    return float(mpp)


def save_png(image: Any, path: str | Path, settings: dict[str, Any] | None = None, *,
             mpp: float | None = None) -> Path:
    """Save an RGB image (PIL or uint8 (H, W, 3)) as PNG with settings in its text chunk and a sidecar.

    ``mpp``: microns per pixel of the image, written to the ``pHYs`` chunk (pixels per metre; PIL reads it
    back as ``info["dpi"]`` = ``25400 / mpp``) and to a ``mpp`` text chunk.
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    mpp = _check_mpp(mpp)
    pil = image if isinstance(image, Image.Image) else Image.fromarray(_as_array(image), "RGB")
    info = PngInfo()
    if settings is not None:
        info.add_text(SETTINGS_KEY, settings_json(settings), zip=True)
    extra: dict[str, Any] = {}
    if mpp is not None:
        info.add_text(MPP_KEY, repr(mpp))
        extra["dpi"] = (25400.0 / mpp, 25400.0 / mpp)  # PIL writes pHYs as round(dpi / 0.0254) px per metre
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG", pnginfo=info, compress_level=4, **extra)
    if settings is not None:
        write_sidecar(path, settings)
    return path


def pyramid_levels(image: np.ndarray, tile: int = 256) -> list[np.ndarray]:
    """Level 0 and its 2x box-downsampled reductions until the image fits in one tile."""
    from PIL import Image

    levels = [image]
    pil = Image.fromarray(image, "RGB")
    while max(pil.size) > tile and min(pil.size) >= 2:
        pil = pil.reduce(2)
        levels.append(np.asarray(pil))
    return levels


def save_tiff(image: Any, path: str | Path, settings: dict[str, Any] | None = None, *, tile: int = 256,
              compression: str = "zlib", mpp: float | None = None) -> Path:
    """Save an RGB image as a tiled pyramidal TIFF (several levels) plus a settings sidecar.

    Args:
        image: PIL image or uint8 (H, W, 3).
        path: output path (``.tif``/``.tiff``).
        settings: stored as JSON in ``ImageDescription`` of level 0 (in the OME-XML's ``Description``
            when ``mpp`` is given) and in the sidecar.
        tile: tile size in pixels (a multiple of 16, as TIFF requires).
        compression: tifffile compression name (``zlib`` is deflate, readable everywhere).
        mpp: microns per pixel of level 0: resolution tags on every level and OME-XML physical size
            (see the module docstring).
    """
    import tifffile

    if tile % 16:
        raise PathUpError(f"TIFF tile size must be a multiple of 16, got {tile}")
    path = Path(path)
    mpp = _check_mpp(mpp)
    levels = pyramid_levels(_as_array(image), tile)
    description = settings_json(settings) if settings is not None else None
    h0, w0 = levels[0].shape[:2]
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=levels[0].nbytes > 2**31, ome=mpp is not None) as tw:
            for i, level in enumerate(levels):
                kw: dict[str, Any] = {"description": description if i == 0 else None, "metadata": None}
                if mpp is not None:
                    h, w = level.shape[:2]  # pixels per cm at this level: 1e4 / (mpp x its downsample)
                    kw = {"resolution": (1e4 * w / (mpp * w0), 1e4 * h / (mpp * h0)),
                          "resolutionunit": "CENTIMETER"}
                    if i == 0:
                        kw["subifds"] = len(levels) - 1
                        kw["metadata"] = {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm",
                                          "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm",
                                          **({"Description": description} if description else {})}
                tw.write(level, tile=(tile, tile), photometric="rgb", compression=compression,
                         subfiletype=0 if i == 0 else 1, software="pathup", **kw)
    if settings is not None:
        write_sidecar(path, settings)
    return path


def choose_format(fmt: str, size: tuple[int, int]) -> str:
    """``png`` unless ``fmt`` is ``tiff`` or a side reaches ``TIFF_FROM_PX`` pixels."""
    if fmt not in FORMATS:
        raise PathUpError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    return "tiff" if fmt == "tiff" or max(size) >= TIFF_FROM_PX else "png"


def suffix(fmt: str) -> str:
    return {"png": ".png", "tiff": ".tiff"}[fmt]


def save_image(image: Any, path: str | Path, settings: dict[str, Any] | None = None, *,
               mpp: float | None = None) -> Path:
    """Save by the path's suffix: ``.png`` or ``.tif``/``.tiff`` (``mpp``: microns per pixel, see above)."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        return save_png(image, path, settings, mpp=mpp)
    if path.suffix.lower() in (".tif", ".tiff"):
        return save_tiff(image, path, settings, mpp=mpp)
    raise PathUpError(f"cannot save {path}: use a .png or .tiff file name")
