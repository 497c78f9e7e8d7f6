"""Where the input images come from: class folders, the BRACS layout, CSV manifests and whole-slide images.

Each reader turns a SOURCE path into ``SourceItem`` records (one image or one slide, with its class,
patient, slide and given split). Layouts (``--layout``):

* ``folders``: ``ROOT/<class>/**/*.{png,jpg,tif,...}``, one folder per class. Files named like BreakHis
  (``SOB_B_F-14-21998AB-100-001.png``) give patient ``21998`` and slide ``14-21998AB``; for other names
  the patient and slide are unknown (each image is then its own group when splitting).
* ``bracs``: ``ROOT/{train,val,test}/<k>_<CLASS>/*.png`` (BRACS, Brancati et al. 2022); the split is kept
  and ``k`` orders the classes. File names ``BRACS_<n>_<CLASS>_<i>.png`` give slide ``BRACS_<n>``.
* ``csv``: a CSV file with columns ``path`` (or ``file``/``image``), ``class`` (or ``label``) and optional
  ``patient``, ``slide``, ``split``; relative paths are relative to the CSV's folder. Rows may name
  images or whole-slide files.
* ``wsi``: whole-slide files (``.svs, .tif, .tiff, .ndpi, .mrxs, .scn, .bif``) or folders of them; the
  class of each slide comes from ``--slide-classes CSV`` (columns ``slide`` = file name, stem or path,
  ``class``, optional ``patient``, ``split``).
* ``auto``: a ``.csv`` file is ``csv``; a slide file is ``wsi``; a folder with ``train/``, ``val/`` or
  ``test/`` holding ``<k>_<CLASS>`` folders is ``bracs``; a folder holding slide files is ``wsi``; a
  folder with class sub-folders is ``folders``.

Listing only: the files are opened by the readers of ``pathup.data.slides`` (images and slides behind
one interface).
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pathup.errors import PathUpError
from pathup.io import IMAGE_SUFFIXES, list_images

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "folders", "bracs", "csv", "wsi")
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".svslide", ".vms")
# Slide formats recognised as slides in a folder under ``--layout auto`` (.tif is ambiguous with RoIs).
_AUTO_SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".svslide", ".vms")
BRACS_SPLITS = ("train", "val", "test")
_BREAKHIS = re.compile(r"^SOB_[BM]_[A-Z]+-(\d+)-(\d+)([A-Za-z]*)-\d+-\d+$")
_BRACS_NAME = re.compile(r"^(BRACS_\d+)_")
_BRACS_CLASS_DIR = re.compile(r"^(\d+)_(.+)$")
_PATH_COLUMNS = ("path", "file", "image", "filename")
_CLASS_COLUMNS = ("class", "label")


@dataclass(frozen=True)
class SourceItem:
    """One input image or slide.

    Attributes:
        path: the image or slide file.
        class_name: its class.
        kind: ``"image"`` (a region of interest read whole) or ``"slide"`` (a whole-slide image).
        patient, slide: identifiers used to split ("" when unknown).
        split: the split given by the source (``train``/``val``/``test``) or "" to be assigned.
        layout: the layout it was read with.
        class_order: the class's rank given by the source (BRACS ``k``), or -1.
    """

    path: Path
    class_name: str
    kind: str = "image"
    patient: str = ""
    slide: str = ""
    split: str = ""
    layout: str = "folders"
    class_order: int = -1

    @property
    def key(self) -> str:
        """A stable unique id: the resolved file path."""
        return str(self.path)


@dataclass
class BadFile:
    """A single input file that was skipped (or is fatal with ``--strict``)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return self.reason if self.path in self.reason else f"{self.path}: {self.reason}"


def breakhis_ids(name: str) -> tuple[str, str] | None:
    """``(patient, slide)`` from a BreakHis file name, or None.

    ``SOB_B_F-14-21998AB-100-001.png`` -> ``("21998", "14-21998AB")``.
    """
    m = _BREAKHIS.match(Path(name).stem)
    if not m:
        return None
    year, patient, letters = m.groups()
    return patient, f"{year}-{patient}{letters}"


def detect_layout(path: str | Path) -> str:
    """The layout of one SOURCE path under ``--layout auto`` (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise PathUpError(f"source not found: {path}")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return "csv"
        if suffix in SLIDE_SUFFIXES:
            return "wsi"
        raise PathUpError(f"cannot tell the layout of {path}: a single file must be a .csv manifest or a slide "
                          f"({', '.join(SLIDE_SUFFIXES)}); give a folder with one sub-folder per class, or --layout")
    if _bracs_split_dirs(path):
        return "bracs"
    if any(p.is_file() and p.suffix.lower() in _AUTO_SLIDE_SUFFIXES for p in path.iterdir()):
        return "wsi"
    if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        return "folders"
    raise PathUpError(f"cannot tell the layout of {path}: no class sub-folders, BRACS train/val/test folders "
                      f"or slide files; use --layout {{folders,bracs,csv,wsi}}")


def _bracs_split_dirs(root: Path) -> list[Path]:
    dirs = [root / s for s in BRACS_SPLITS if (root / s).is_dir()]
    if dirs and all(any(c.is_dir() and _BRACS_CLASS_DIR.match(c.name) for c in d.iterdir()) for d in dirs):
        return dirs
    return []


def is_prepared_dataset(folder: Path) -> bool:
    """A folder written by ``pathup prepare`` (skipped when it sits inside a source folder)."""
    return (folder / ".prepare").is_dir() or (
        (folder / "dataset.json").is_file() and (folder / "manifest.csv").is_file())


def read_folders(root: Path) -> list[SourceItem]:
    """``ROOT/<class>/**/image``; an empty class folder is an error."""
    if not root.is_dir():
        raise PathUpError(f"folders layout needs a folder, got {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and not is_prepared_dataset(p))
    if not class_dirs:
        raise PathUpError(f"{root}: no class sub-folders (expected {root}/<class>/<images>)")
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        log.warning("%s: ignored %d image(s) outside the class folders", root, len(loose))
    items = []
    for d in class_dirs:
        images = list_images(d)
        if not images:
            raise PathUpError(f"class folder {d} has no images ({', '.join(IMAGE_SUFFIXES)})")
        for p in images:
            ids = breakhis_ids(p.name) or ("", "")
            items.append(SourceItem(path=p.resolve(), class_name=d.name, patient=ids[0], slide=ids[1],
                                    layout="folders"))
    return items


def read_bracs(root: Path) -> list[SourceItem]:
    """``ROOT/{train,val,test}/<k>_<CLASS>/*.png`` keeping the split; ``k`` orders the classes."""
    split_dirs = _bracs_split_dirs(root) if root.is_dir() else []
    if not split_dirs:
        raise PathUpError(f"{root} is not in the BRACS layout: expected {root}/{{train,val,test}}/<k>_<CLASS>/ folders")
    items = []
    for sd in split_dirs:
        for d in sorted(c for c in sd.iterdir() if c.is_dir() and not c.name.startswith(".")):
            m = _BRACS_CLASS_DIR.match(d.name)
            if not m:
                raise PathUpError(f"{d}: BRACS class folders are named <k>_<CLASS> (e.g. 0_N, 5_DCIS)")
            order, name = int(m.group(1)), m.group(2)
            images = list_images(d)
            if not images:
                raise PathUpError(f"class folder {d} has no images ({', '.join(IMAGE_SUFFIXES)})")
            for p in images:
                sm = _BRACS_NAME.match(p.name)
                items.append(SourceItem(path=p.resolve(), class_name=name, slide=sm.group(1) if sm else "",
                                        split=sd.name, layout="bracs", class_order=order))
    return items


def _read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip().lower() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items() if k is not None}
                    for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise PathUpError(f"cannot read CSV {path}: {err}") from None
    return fields, rows


def _pick(fields: list[str], names: tuple[str, ...], path: Path, what: str) -> str:
    for n in names:
        if n in fields:
            return n
    raise PathUpError(f"{path}: no {what} column (one of {', '.join(names)}); columns: {', '.join(fields) or 'none'}")


def _check_split(value: str, where: str) -> str:
    if value and value not in BRACS_SPLITS:
        raise PathUpError(f"{where}: unknown split {value!r}; allowed: {', '.join(BRACS_SPLITS)} or empty")
    return value


def read_csv(path: Path, bad: list[BadFile]) -> list[SourceItem]:
    """Rows of a CSV manifest. Missing files are appended to ``bad``; a class left with no file is an error."""
    if not path.is_file():
        raise PathUpError(f"CSV manifest not found: {path}")
    fields, rows = _read_csv_rows(path)
    if not rows:
        raise PathUpError(f"{path}: the CSV has no rows")
    pcol = _pick(fields, _PATH_COLUMNS, path, "image path")
    ccol = _pick(fields, _CLASS_COLUMNS, path, "class")
    items, per_class = [], {}
    for line, row in enumerate(rows, start=2):
        rel, cls = row.get(pcol, ""), row.get(ccol, "")
        if not rel or not cls:
            raise PathUpError(f"{path}, line {line}: empty {'path' if not rel else 'class'}")
        per_class.setdefault(cls, 0)
        file = Path(rel) if Path(rel).is_absolute() else path.parent / rel
        if not file.is_file():
            bad.append(BadFile(str(file), f"file not found (listed in {path}, line {line})"))
            continue
        per_class[cls] += 1
        kind = "slide" if file.suffix.lower() in _AUTO_SLIDE_SUFFIXES else "image"
        items.append(SourceItem(path=file.resolve(), class_name=cls, kind=kind, patient=row.get("patient", ""),
                                slide=row.get("slide", "") or (file.stem if kind == "slide" else ""), layout="csv",
                                split=_check_split(row.get("split", ""), f"{path}, line {line}")))
    empty = sorted(c for c, n in per_class.items() if n == 0)
    if empty:
        raise PathUpError(f"{path}: class(es) {', '.join(repr(c) for c in empty)} have no images "
                          f"(every listed file is missing)")
    return items


def read_slide_classes(path: str | Path) -> dict[str, dict[str, str]]:
    """``--slide-classes CSV``: slide (file name, stem or path) -> {class, patient, split}."""
    path = Path(path)
    if not path.is_file():
        raise PathUpError(f"slide classes CSV not found: {path}")
    fields, rows = _read_csv_rows(path)
    scol = _pick(fields, ("slide", "path", "file", "filename"), path, "slide")
    ccol = _pick(fields, _CLASS_COLUMNS, path, "class")
    table = {}
    for line, row in enumerate(rows, start=2):
        if not row.get(scol) or not row.get(ccol):
            raise PathUpError(f"{path}, line {line}: empty slide or class")
        table[row[scol]] = {"class": row[ccol], "patient": row.get("patient", ""),
                            "split": _check_split(row.get("split", ""), f"{path}, line {line}")}
    return table


def read_wsi(path: Path, slide_classes: dict[str, dict[str, str]] | None, classes_file: str | None) -> list[SourceItem]:
    """Slide files (a file or a folder of them) with their class from the slide-classes table."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
        if not files:
            raise PathUpError(f"{path}: no slide files ({', '.join(SLIDE_SUFFIXES)})")
    elif path.is_file():
        files = [path]
    else:
        raise PathUpError(f"slide not found: {path}")
    if slide_classes is None:
        raise PathUpError(f"whole-slide images ({path}) need --slide-classes CSV (columns slide, class)")
    items = []
    for f in files:
        entry = None
        for k in (str(f), f.name, f.stem, str(f.resolve())):
            if k in slide_classes:
                entry = slide_classes[k]
                break
        if entry is None:
            raise PathUpError(f"slide {f} has no row in {classes_file} (match by file name, stem or path)")
        items.append(SourceItem(path=f.resolve(), class_name=entry["class"], kind="slide",
                                patient=entry["patient"], slide=f.stem, split=entry["split"], layout="wsi"))
    return items


def collect_sources(paths: list[str], layout: str = "auto", slide_classes: str | None = None
                    ) -> tuple[list[SourceItem], list[BadFile], dict[str, str]]:
    """All items of all SOURCE paths, the files skipped while listing, and the layout of each path.

    A path listed twice (the same file from two sources) is kept once, from its first source.
    """
    if layout not in LAYOUTS:
        raise PathUpError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    if not paths:
        raise PathUpError("no SOURCE given: name image folders, a BRACS root, CSV manifests or slides")
    table = read_slide_classes(slide_classes) if slide_classes else None
    items: list[SourceItem] = []
    bad: list[BadFile] = []
    layouts: dict[str, str] = {}
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise PathUpError(f"source not found: {p}")
        lay = detect_layout(p) if layout == "auto" else layout
        layouts[str(p)] = lay
        if lay == "folders":
            items += read_folders(p)
        elif lay == "bracs":
            items += read_bracs(p)
        elif lay == "csv":
            if not p.is_file():
                raise PathUpError(f"csv layout needs a .csv file, got folder {p}")
            items += read_csv(p, bad)
        else:
            items += read_wsi(p, table, slide_classes)
    seen: dict[str, SourceItem] = {}
    unique = []
    for it in items:
        first = seen.get(it.key)
        if first is not None:
            if first.class_name != it.class_name:
                log.warning("%s is listed under two classes, %r and %r; kept the first (%r)", it.path,
                            first.class_name, it.class_name, first.class_name)
            else:
                log.warning("%s is listed twice; kept its first entry", it.path)
            continue
        seen[it.key] = it
        unique.append(it)
    if not unique:
        raise PathUpError(f"no images found in {', '.join(paths)}")
    return unique, bad, layouts
