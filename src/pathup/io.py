"""Small file helpers shared by every stage: atomic writes and image loading."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from pathup.errors import PathUpError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

# The largest image (width x height) that is decoded: 16384 x 16384 (about 0.8 GB as 8-bit RGB). The size
# is read from the file's header before anything is decoded, so a tiny file claiming a huge size (a
# decompression bomb) is refused at once. ``PATHUP_MAX_IMAGE_PIXELS`` raises it for every command;
# ``pathup prepare --max-image-pixels`` for one run. Whole-slide files go through the slide reader instead.
DEFAULT_MAX_IMAGE_PIXELS = 16384 * 16384
MAX_PIXELS_ENV = "PATHUP_MAX_IMAGE_PIXELS"
_PIL_LIMIT_LOCK = threading.RLock()


def umask() -> int:
    """The process' file mode creation mask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # no /proc: set and restore (not thread-safe, but only a fallback)
    os.umask(old)
    return old


def _honour_umask(path: Path, base: int) -> None:
    """mkstemp / mkdtemp create 0600 / 0700 whatever the umask; give ``path`` the mode a plain open or
    mkdir would have given it (``base & ~umask``)."""
    os.chmod(path, base & ~umask())


def honour_umask_tree(folder: Path) -> None:
    """Give every file and folder under ``folder`` the mode a plain open / mkdir would have given it.

    Libraries (safetensors, torch.save through mkstemp) may write 0600 files whatever the umask.
    """
    for sub in Path(folder).rglob("*"):
        if not sub.is_symlink():
            _honour_umask(sub, 0o777 if sub.is_dir() else 0o666)


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
        if tmp_path.exists():
            _honour_umask(tmp_path, 0o666)
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
        _honour_umask(tmp, 0o777)
        yield tmp
        honour_umask_tree(tmp)
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


def check_writable_dir(folder: str | Path, option: str) -> None:
    """Create ``folder`` when needed and make sure a file can be written in it; else a one-line PathUpError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PathUpError(f"{option} {folder}: cannot write there ({err.strerror or err}"
                          f"{': ' + str(err.filename) if err.filename and str(err.filename) != str(folder) else ''})"
                          ) from None


def check_apart(source: str | Path | None, out: str | Path | None, source_option: str,
                out_option: str = "--out") -> None:
    """Refuse an output folder that is the source folder, inside it, or around it (one line naming both).

    A command that reads a folder and writes one would otherwise read its own outputs on a rerun (``prepare
    SRC --out SRC`` took its old tiles for a class) or, with ``--overwrite``, delete its input. A source that
    is a file (a CSV, a slide) or does not exist is not checked.
    """
    if source is None or out is None or not Path(source).is_dir():
        return
    src, dst = Path(source).resolve(), Path(out).resolve()
    how = ("is the same folder as" if src == dst else "is inside" if dst.is_relative_to(src)
           else "holds" if src.is_relative_to(dst) else None)
    if how:
        raise PathUpError(f"{out_option} {out} {how} {source_option} {source}: the outputs would mix with what "
                          f"is read (a rerun would read them back, --overwrite would delete input); choose an "
                          f"{out_option} outside it")


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


def max_image_pixels(value: int | None = None) -> int:
    """The pixel limit in force: ``value`` when given, else ``$PATHUP_MAX_IMAGE_PIXELS``, else the default."""
    if value is not None:
        if isinstance(value, bool) or int(value) < 1:
            raise PathUpError(f"the image pixel limit must be a positive whole number, got {value!r}")
        return int(value)
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        limit = int(raw.replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise PathUpError(f"{MAX_PIXELS_ENV} must be a positive whole number of pixels, got {raw!r}")
    return limit


def check_pixels(path: str | Path, width: int, height: int, max_pixels: int | None = None,
                 option: str | None = None) -> None:
    """Raise a one-line PathUpError when a ``width x height`` image exceeds the pixel limit."""
    limit = max_image_pixels(max_pixels)
    if int(width) * int(height) > limit:
        how = f"{option} N or " if option else ""
        slide = (" (a whole-slide .tif? prepare reads slides with --layout wsi)"
                 if Path(path).suffix.lower() in (".tif", ".tiff") else "")
        raise PathUpError(f"image {path} is {width}x{height} = {int(width) * int(height):,} pixels, over the limit "
                          f"of {limit:,} (a decompression bomb?); if the file is genuine raise the limit with "
                          f"{how}{MAX_PIXELS_ENV}=N{slide}")


@contextlib.contextmanager
def _pil_limit(limit: int) -> Iterator[None]:
    """PIL's own decompression-bomb check stays on, at least as high as ``limit`` (its warning is silenced:
    the size was checked before)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if Image.MAX_IMAGE_PIXELS is not None and limit <= Image.MAX_IMAGE_PIXELS:
            yield
            return
        with _PIL_LIMIT_LOCK:  # raised for this call only, and never switched off
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = limit
            try:
                yield
            finally:
                Image.MAX_IMAGE_PIXELS = old


def _bomb_error(path: Path, err: Exception, limit: int, option: str | None) -> PathUpError:
    m = re.search(r"\((\d+) pixels\)", str(err))
    size = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
    how = f"{option} N or " if option else ""
    return PathUpError(f"image {path} has {size}, over the limit of {limit:,} (a decompression bomb?); if the file "
                       f"is genuine raise the limit with {how}{MAX_PIXELS_ENV}=N")


def _tiff_size(path: Path) -> tuple[int, int]:
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        page = tif.pages[0]
        shape, axes = page.shape, page.axes
    return int(shape[axes.index("X")]), int(shape[axes.index("Y")])


def open_image(path: str | Path, max_pixels: int | None = None, *, option: str | None = None
               ) -> "Image.Image":  # noqa: F821
    """Open an image file from user input fully as 8-bit RGB, refusing decompression bombs.

    The size is read from the header and checked against the pixel limit (``max_pixels``, else
    ``$PATHUP_MAX_IMAGE_PIXELS``, else ``DEFAULT_MAX_IMAGE_PIXELS``) before any pixel is decoded; ``option``
    names the command's option that raises the limit, for the message. A missing, corrupt, truncated
    or too large file raises a one-line PathUpError naming it.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    limit = max_image_pixels(max_pixels)
    if not path.is_file():
        raise PathUpError(f"image not found: {path}")
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            w, h = _tiff_size(path)
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file
            raise PathUpError(f"cannot read image {path}: {err}") from None
        check_pixels(path, w, h, limit, option)
        try:
            import tifffile

            arr = tifffile.imread(str(path))
        except Exception as err:  # noqa: BLE001
            raise PathUpError(f"cannot read image {path}: {err}") from None
        return to_rgb8(_array_to_pil(arr, path))
    try:
        with _pil_limit(limit), Image.open(path) as img:
            check_pixels(path, *img.size, limit, option)  # from the header: nothing decoded yet
            img.load()
            return to_rgb8(img)
    except Image.DecompressionBombError as err:
        raise _bomb_error(path, err, limit, option) from None
    except PathUpError:  # check_pixels' own message (a PathUpError is a ValueError: not wrapped again)
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise PathUpError(f"cannot read image {path}: {err}") from None


def load_rgb(path: str | Path, max_pixels: int | None = None) -> "Image.Image":  # noqa: F821
    """Open an image file fully as 8-bit RGB (``open_image``): a missing, corrupt, truncated or too large
    file raises PathUpError."""
    return open_image(path, max_pixels)


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


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of a user's file; a file in another encoding is a one-line PathUpError naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PathUpError(f"{what} {path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                          f"{err.start}); save it as UTF-8") from None


def unpickling_refused(err: BaseException) -> str | None:
    """What ``torch.load(weights_only=True)`` refused to call, from its error (``builtins.open``...): the
    file is a pickle that would have run code. None for any other failure (a corrupt or foreign file)."""
    m = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    return m.group(1) if m else None


def read_json(path: str | Path) -> dict | None:
    """A JSON object from ``path``; None when it is missing, unreadable, cut short or not an object."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def safe_name(name: str, *, empty: str = "class") -> str:
    """``name`` usable as a folder or file name: runs of characters outside ``[A-Za-z0-9_.-]`` become
    ``_``, leading/trailing ``.``/``_`` go, and ``empty`` stands for a name with nothing left.

    Not injective (``a b`` and ``a_b`` give the same name): ``unique_name`` is, for class folders.
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or empty


def unique_name(name: str) -> str:
    """The folder (and file-name) form of a class name, injective over names.

    The name itself when it is already a safe file name (``[A-Za-z0-9_.-]``, not starting with ``.``);
    otherwise ``safe_name(name)`` plus ``-`` and the first 8 hex digits of the SHA-256 of the exact name,
    so that ``a b`` and ``a_b``, or ``腫瘍`` and ``良性``, get different folders.
    """
    safe = safe_name(name)
    if safe == name:
        return safe
    return f"{safe}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file without decoding it (TIFF through tifffile, level 0)."""
    from PIL import Image

    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _tiff_size(path)
        with _pil_limit(max_image_pixels()), Image.open(path) as im:
            return im.size
    except Image.DecompressionBombError as err:
        raise _bomb_error(path, err, max_image_pixels(), None) from None
    except PathUpError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file
        raise PathUpError(f"cannot read image {path}: {err}") from None


def write_failure(err: BaseException, target: Path, root: Path, what: str) -> PathUpError:
    """A one-line error for a library's non-OSError write failure of ``target`` (a full disk, most often)."""
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    free = None
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        pass
    if "No space left" in msg or "unexpected pos" in msg or (free is not None and free < 2 ** 20):
        tail = f"; {free / 2**20:.0f} MiB free" if free is not None else ""
        return PathUpError(f"disk full while writing {what} {target}{tail}; free space and rerun (with --resume "
                           "for training)")
    return PathUpError(f"cannot write {what} {target}: {type(err).__name__}: {msg}")


class FolderLock:
    """An exclusive lock on an output folder, held by one process: ``folder/.pathup.lock``.

    The file holds the owner's PID, host and command. The lock itself is ``fcntl.flock`` on that file,
    which the kernel drops when the owner exits or is killed, so a lock file left by a dead process is
    stale by construction and the next run takes it over (it says so). Where ``flock`` is not available
    (some network file systems) the PID in the file decides: a live process on this host holds it.
    ``acquire`` raises a one-line PathUpError naming the folder and the owner's PID.
    """

    NAME = ".pathup.lock"

    def __init__(self, folder: str | Path, command: str) -> None:
        self.path = Path(folder) / self.NAME
        self.command = command
        self._fd: int | None = None

    def _owner(self) -> dict:
        return read_json(self.path) or {}

    def _refuse(self, owner: dict) -> PathUpError:
        return PathUpError(f"{self.path.parent} is in use by another '{owner.get('command', 'pathup')}' (PID "
                           f"{owner.get('pid', '?')} on {owner.get('host', '?')}, lock file {self.path}); wait "
                           "for it to finish or choose another --out")

    def acquire(self) -> "FolderLock":
        import json
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            import fcntl

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._refuse(self._owner()) from None
            except OSError:  # no flock here: fall back to the PID in the file
                self._check_pid(self._owner())
        except ImportError:  # pragma: no cover - not POSIX
            self._check_pid(self._owner())
        except BaseException:
            os.close(fd)
            raise
        old = self._owner()
        if old.get("pid") and old.get("pid") != os.getpid():
            import logging

            logging.getLogger(__name__).info("%s: took over a stale lock of PID %s (no longer running)",
                                             self.path.parent, old.get("pid"))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def _check_pid(self, owner: dict) -> None:
        import socket

        pid = owner.get("pid")
        if not isinstance(pid, int) or pid == os.getpid() or owner.get("host") != socket.gethostname():
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # stale: that process is gone
        except PermissionError:
            pass  # alive, another user's
        raise self._refuse(owner)

    def release(self) -> None:
        """Drop the lock (the file stays: removing it could let two later runs lock two different files)."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None


# ---------------------------------------------------------------------------------------------- text
# Strings from users (class, condition and rater names, file names) reach terminals and Markdown reports.
# ANSI escape sequences (CSI ... final byte, OSC ... BEL/ST, two-byte ESC x) and any other control character.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]|\x9b[0-?]*[ -/]*[@-~]")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def plain_text(value: object, *, keep_newlines: bool = False) -> str:
    """``value`` safe to print on a terminal: ANSI escapes removed, other control characters (tabs, and
    newlines unless ``keep_newlines``) shown as a space."""
    text = _ANSI.sub("", str(value))
    return (_CONTROL_BUT_NEWLINE if keep_newlines else CONTROL_CHARS).sub(" ", text)


def show_controls(text: object) -> str:
    """``text`` with every control character written out as ``\\xNN`` (one-line error messages: the user
    sees what their input held, and the terminal runs none of it)."""
    return CONTROL_CHARS.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def markdown_text(value: object) -> str:
    """Text for a Markdown report (a table cell, a heading): terminal-safe, HTML escaped (``<script>`` and
    ``<img onerror=...>`` in a class name show as text where the Markdown is rendered), ``\\`` and ``|``
    escaped so that a table row keeps its columns."""
    import html

    return html.escape(plain_text(value).replace("\\", "\\\\"), quote=False).replace("|", "\\|")
