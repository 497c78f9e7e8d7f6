"""Small file helpers shared by every stage: atomic writes and image loading."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from pathup.errors import PathUpError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    On error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def to_rgb8(img: "Image.Image") -> "Image.Image":  # noqa: F821
    """Convert any PIL image (RGBA, LA, P, L, I;16, I, F, CMYK...) to 8-bit RGB.

    Alpha is composited on white; 16-bit and float images are scaled from their value range.
    """
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            arr = arr / 65535.0
        else:
            hi = float(arr.max()) if arr.size else 1.0
            arr = arr / (65535.0 if hi > 255 else 255.0) if hi > 1.0 else arr
        arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | Path) -> "Image.Image":  # noqa: F821
    """Open an image file fully as 8-bit RGB; a missing, corrupt or truncated file raises PathUpError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise PathUpError(f"image not found: {path}")
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            arr = tifffile.imread(str(path))
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file
            raise PathUpError(f"cannot read image {path}: {err}") from None
        return to_rgb8(_array_to_pil(arr, path))
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb8(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise PathUpError(f"cannot read image {path}: {err}") from None


def _array_to_pil(arr: np.ndarray, path: Path) -> "Image.Image":  # noqa: F821
    from PIL import Image

    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint16 or arr.dtype.kind == "f" or arr.dtype.itemsize > 1:
        a = arr.astype(np.float64)
        if arr.dtype == np.uint16:
            a = a / 65535.0
        elif arr.dtype.kind == "f":
            a = a if a.max() <= 1.0 else a / max(a.max(), 1.0)
        else:
            a = a / float(np.iinfo(arr.dtype).max)
        arr = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr, "L")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return Image.fromarray(arr, "RGBA" if arr.shape[-1] == 4 else "RGB")
    raise PathUpError(f"cannot read image {path}: unsupported array shape {arr.shape}")


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def safe_name(name: str) -> str:
    """A class name usable as a folder and file name (unsafe characters become ``_``).

    ``pathup generate`` writes a class's images to ``OUT/<safe_name(class)>/``; readers use the same rule.
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "class"


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file without decoding it (TIFF through tifffile, level 0)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                shape = tif.pages[0].shape
                axes = tif.pages[0].axes
            return int(shape[axes.index("X")]), int(shape[axes.index("Y")])
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file
        raise PathUpError(f"cannot read image {path}: {err}") from None
