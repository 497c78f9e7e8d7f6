"""Write generated images with their settings (SPEC.md section 5; issue 4 item 5).

* PNG: the settings (prompt, seed, model, every option) as JSON in a ``pathup`` text chunk, plus the
  same JSON in a sidecar file ``<image>.json``.
* TIFF: a tiled pyramidal TIFF (deflate-compressed tiles, each level half the size of the one above,
  stored as successive image directories with ``NewSubfileType`` = reduced image). That is the generic
  tiled TIFF layout that OpenSlide, tiffslide and QuPath open; tifffile lists the levels as one series.
  The settings go to the ``ImageDescription`` tag and the sidecar.

All writes are atomic (temporary file, then rename): an interrupted run never leaves a half image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pathup.errors import PathUpError
from pathup.io import atomic_path, atomic_write_text

FORMATS = ("png", "tiff")
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

        from pathup.io import _pil_limit, image_size, max_image_pixels

        image_size(path)  # header only: an unreadable file or a bomb PIL would refuse is a PathUpError
        try:
            with _pil_limit(max_image_pixels()), Image.open(path) as img:
                text = img.info.get(SETTINGS_KEY)  # chunks before the pixel data; ``img.text`` would decode
        except (OSError, SyntaxError, ValueError) as err:
            raise PathUpError(f"cannot read image {path}: {err}") from None
        if isinstance(text, str) and text:
            return _loads(text, path)
    raise PathUpError(f"no settings found for {path} (no {side.name} and no PNG text chunk)")


def _as_array(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise PathUpError(f"expected an 8-bit RGB image (H, W, 3), got {arr.dtype} {arr.shape}")
    return arr


def save_png(image: Any, path: str | Path, settings: dict[str, Any] | None = None) -> Path:
    """Save an RGB image (PIL or uint8 (H, W, 3)) as PNG with settings in its text chunk and a sidecar."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    pil = image if isinstance(image, Image.Image) else Image.fromarray(_as_array(image), "RGB")
    info = PngInfo()
    if settings is not None:
        info.add_text(SETTINGS_KEY, settings_json(settings), zip=True)
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG", pnginfo=info, compress_level=4)
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
              compression: str = "zlib") -> Path:
    """Save an RGB image as a tiled pyramidal TIFF (several levels) plus a settings sidecar.

    Args:
        image: PIL image or uint8 (H, W, 3).
        path: output path (``.tif``/``.tiff``).
        settings: stored as JSON in ``ImageDescription`` of level 0 and in the sidecar.
        tile: tile size in pixels (a multiple of 16, as TIFF requires).
        compression: tifffile compression name (``zlib`` is deflate, readable everywhere).
    """
    import tifffile

    if tile % 16:
        raise PathUpError(f"TIFF tile size must be a multiple of 16, got {tile}")
    path = Path(path)
    levels = pyramid_levels(_as_array(image), tile)
    description = settings_json(settings) if settings is not None else None
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=levels[0].nbytes > 2**31) as tw:
            for i, level in enumerate(levels):
                tw.write(level, tile=(tile, tile), photometric="rgb", compression=compression,
                         subfiletype=0 if i == 0 else 1, description=description if i == 0 else None,
                         metadata=None, software="pathup")
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


def save_image(image: Any, path: str | Path, settings: dict[str, Any] | None = None) -> Path:
    """Save by the path's suffix: ``.png`` or ``.tif``/``.tiff``."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        return save_png(image, path, settings)
    if path.suffix.lower() in (".tif", ".tiff"):
        return save_tiff(image, path, settings)
    raise PathUpError(f"cannot save {path}: use a .png or .tiff file name")
