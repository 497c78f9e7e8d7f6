"""Build a blinded rater study from a folder of real and a folder of synthetic images (paper Table 5).

Both folders hold one sub-folder per class. For the synthetic side this is the layout that
``pathup generate`` writes (``DIR/<class>/<class>_s<seed>.png``, where ``<class>`` is
``class_dirname(class)``: a safe form plus a short hash for a name such as ``ductal carcinoma``, matched
to the real class by the folder's ``generate_settings.json`` or that name); only the images directly
inside a class folder are used, so the ``overview/`` sub-folders are ignored.

Every chosen image goes through the same path so that nothing but its pixels tells real from
synthetic: decoded to 8-bit RGB, centre-cropped to a square and resized to one common size,
re-encoded with the same encoder and settings (no EXIF, ICC profile or text chunks), saved under a
random file name, padded after the end-of-image marker with random bytes (decoders ignore them; unlike
zeros they do not show how long the padding is) to one common byte length, a multiple of
``SIZE_BUCKET`` above the largest encoded image, and given one common modification time. Image ids are
random too and the files are written in a random order. The database (the answer key) is created 0600.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pathup.config import option
from pathup.errors import OptionError, PathUpError
from pathup.io import IMAGE_SUFFIXES, check_apart, check_writable_dir, load_rgb
from pathup.study.db import ImageRow, StudyDB, files_dir_for, now_iso

log = logging.getLogger(__name__)

FORMATS = {"jpeg": ".jpg", "png": ".png"}
SIZE_BUCKET = 64 * 1024  # every study file is padded to the same multiple of this many bytes


@dataclass
class StudyCreateConfig:
    """Options of ``pathup study create``."""

    real: Path = option(help="folder of real images, one sub-folder per class", metavar="DIR")
    synthetic: Path = option(help="folder of synthetic images, one sub-folder per class (the layout 'pathup "
                                  "generate' writes)", metavar="DIR")
    out: Path = option(help="study database to create; images go to <name>_files/ beside it", metavar="DB")
    per_class: int = option(10, "real and synthetic images per class (paper: 10)")
    seed: int = option(0, "seed of the random choice of images")
    size: int = option(2048, "common side length in pixels of every study image")
    format: Literal["jpeg", "png"] = option("jpeg", "common file format")
    quality: int = option(95, "JPEG quality (4:4:4 chroma) when --format jpeg")
    classes: list[str] | None = option(None, "classes to include (default: every class folder found in --real)")


def class_images(folder: Path) -> list[Path]:
    """Images directly inside ``folder`` (not in sub-folders such as ``overview/``), sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _class_folders(root: Path, what: str) -> dict[str, Path]:
    if not root.is_dir():
        raise PathUpError(f"--{what}: folder not found: {root}")
    found = {p.name: p for p in sorted(root.iterdir())
             if p.is_dir() and not p.name.startswith(".") and class_images(p)}
    if not found:
        raise PathUpError(f"--{what}: {root} has no class sub-folders with images (expected {root}/<class>/*.png)")
    return found


def _synthetic_class_folders(root: Path, class_names: list[str]) -> dict[str, Path]:
    """The synthetic class folders by class: a ``pathup generate`` folder is named ``class_dirname(class)``
    (a safe form plus a short hash for a name such as ``ductal carcinoma``) and records its class in
    ``generate_settings.json``; other folders keep their own name as the class."""
    from pathup.downstream.synthetic import synthetic_folders

    found = _class_folders(root, "synthetic")
    dirs, unclaimed = synthetic_folders(root, class_names)
    out = {cls: root / name for cls, name in dirs.items() if name in found}
    out.update({name: found[name] for name in unclaimed if name in found and name not in out})
    return out


def square_resize(img: "Image.Image", size: int) -> "Image.Image":  # noqa: F821
    """Centre-crop to the largest square, then resize (Lanczos) to ``size`` x ``size``."""
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.LANCZOS)
    return img


def encode_image(img: "Image.Image", fmt: str, quality: int) -> bytes:  # noqa: F821
    """Encode an RGB image with fixed settings and no metadata (no EXIF, ICC, text, dpi)."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality, subsampling=0, optimize=False, progressive=False)
    elif fmt == "png":
        img.save(buf, format="PNG", compress_level=6, optimize=False)
    else:
        raise OptionError("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return buf.getvalue()


def create_study(real_dir: str | Path, synthetic_dir: str | Path, per_class: int, out_db: str | Path,
                 seed: int = 0, *, size: int = 2048, fmt: str = "jpeg", quality: int = 95,
                 classes: list[str] | None = None) -> StudyDB:
    """Pick ``per_class`` real and synthetic images per class, re-encode them blindly, make the study.

    Args:
        real_dir: folder with one sub-folder of real images per class.
        synthetic_dir: folder with one sub-folder of synthetic images per class (``overview/`` ignored).
        per_class: images per class and per source (the paper: 10 real and 10 synthetic).
        out_db: the SQLite file to create; the images go to ``<stem>_files/`` beside it.
        seed: seed of the random choice of images (ids, file names and orders use fresh randomness).
        size: common side length of every study image.
        fmt: ``"jpeg"`` or ``"png"``.
        quality: JPEG quality.
        classes: classes to include; default every class folder of ``real_dir``.

    Returns:
        The open ``StudyDB``. Nothing is written at ``out_db`` unless everything succeeded.
    """
    from tqdm import tqdm

    real_dir, synthetic_dir, out_db = Path(real_dir), Path(synthetic_dir), Path(out_db)
    if per_class < 1:
        raise OptionError("per_class", f"must be at least 1, got {per_class}")
    if not 64 <= size <= 8192:
        raise OptionError("size", f"must be between 64 and 8192 pixels, got {size}")
    if fmt not in FORMATS:
        raise OptionError("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not 1 <= quality <= 100:
        raise OptionError("quality", f"must be between 1 and 100, got {quality}")
    files_dir = files_dir_for(out_db)
    check_apart(real_dir, files_dir, "--real")  # (the study's images go to files_dir)
    check_apart(synthetic_dir, files_dir, "--synthetic")
    check_writable_dir(out_db.parent, "--out")  # before minutes of re-encoding
    for existing in (out_db, files_dir):
        if existing.exists():
            raise PathUpError(f"{existing} already exists; remove it or choose another --out "
                              "(a study is never overwritten, so no rating can be lost)")

    real = _class_folders(real_dir, "real")
    synth = _synthetic_class_folders(synthetic_dir, list(dict.fromkeys([*real, *(classes or [])])))
    if classes:
        missing = ([f"{c} (real)" for c in classes if c not in real]
                   + [f"{c} (synthetic)" for c in classes if c not in synth])
        if missing:
            raise OptionError("classes", f": no image folder for {', '.join(missing)}; real classes: "
                              f"{', '.join(real)}; synthetic classes: {', '.join(synth)}")
        chosen_classes = list(dict.fromkeys(classes))
    else:
        if set(real) != set(synth):
            raise PathUpError(f"real classes ({', '.join(real)}) differ from synthetic classes ({', '.join(synth)}); "
                              "pick common ones with --classes")
        chosen_classes = sorted(real)

    rng = random.Random(seed)
    picks: list[tuple[str, bool, Path]] = []
    for cls in chosen_classes:
        for is_real, folder in ((True, real[cls]), (False, synth[cls])):
            files = class_images(folder)
            if len(files) < per_class:
                raise PathUpError(f"{folder} has {len(files)} images; --per-class {per_class} needs {per_class}")
            picks += [(cls, is_real, p) for p in rng.sample(files, per_class)]

    order = list(range(len(picks)))
    random.SystemRandom().shuffle(order)  # the write order (and so the rowid order) carries no label
    suffix = FORMATS[fmt]
    out_db.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_db.name}.", suffix=".tmp", dir=out_db.parent))
    try:
        work_files = work / "files"
        work_files.mkdir()
        rows: list[ImageRow] = []
        upsampled = {True: 0, False: 0}
        used_names: set[str] = set()
        for i in tqdm(order, desc="re-encoding study images", unit="img"):
            cls, is_real, src = picks[i]
            img = load_rgb(src)
            if min(img.size) < size:
                upsampled[is_real] += 1
            data = encode_image(square_resize(img, size), fmt, quality)
            name = secrets.token_hex(16) + suffix
            while name in used_names:
                name = secrets.token_hex(16) + suffix
            used_names.add(name)
            (work_files / name).write_bytes(data)
            rows.append(ImageRow(secrets.token_hex(12), cls, is_real, name, str(src.resolve())))
        # One byte length for all: random bytes after the end-of-image marker, which decoders ignore.
        sizes = {r.file: (work_files / r.file).stat().st_size for r in rows}
        common = -(-(max(sizes.values()) + 1) // SIZE_BUCKET) * SIZE_BUCKET
        stamp = 1_000_000_000
        for r in rows:
            with open(work_files / r.file, "ab") as fh:
                fh.write(secrets.token_bytes(common - sizes[r.file]))
            os.utime(work_files / r.file, (stamp, stamp))
        for is_real, n in upsampled.items():
            if n:
                log.warning("%d %s image(s) were smaller than %d px and were upsampled; blur from upsampling "
                            "can reveal them to raters", n, "real" if is_real else "synthetic", size)

        # The answer key: readable by its owner only (SQLite gives its -wal/-shm files the same mode).
        os.close(os.open(work / "study.db", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.chmod(work / "study.db", 0o600)
        db = StudyDB(work / "study.db", create=True)
        db.add_images(rows)
        config = {"real": str(real_dir.resolve()), "synthetic": str(synthetic_dir.resolve()),
                  "per_class": per_class, "seed": seed, "size": size, "format": fmt, "quality": quality,
                  "classes": chosen_classes, "file_bytes": common}
        for key, value in (("files_dir", files_dir.name), ("created", now_iso()), ("config", json.dumps(config))):
            db.set_meta(key, value)
        db.close()  # the last connection checkpoints the WAL, so the single file holds everything
        os.replace(work_files, files_dir)
        os.replace(work / "study.db", out_db)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("study with %d images (%d classes x %d real + %d synthetic) written to %s and %s/",
             len(rows), len(chosen_classes), per_class, per_class, out_db, files_dir.name)
    return StudyDB(out_db)
