"""The downstream task's real data (PathUp paper section 4.7): patient splits, ViT items, ABMIL bags.

Real data come from a prepared dataset (``pathup.data.manifest``): the ViT uses one tile per item
(overview tiles by default), ABMIL one bag per source image made of its patch tiles. Splits are by
patient, never by tile. The synthetic images are read by ``pathup.downstream.synthetic``.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pathup.data.manifest import SPLITS, read_dataset_info, read_manifest
from pathup.errors import OptionError, PathUpError

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # x, y, width, height in source pixels


@dataclass(frozen=True)
class Tile:
    """One image region: ``path`` (whole file when ``box`` is None, else the crop ``box``)."""

    path: Path
    box: Box | None = None

    def key(self) -> str:
        """A cache key that changes when the file changes."""
        st = self.path.stat()
        box = "" if self.box is None else ",".join(map(str, self.box))
        return f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{box}"


@dataclass
class Item:
    """One ViT training/evaluation image with its label and evaluation unit (``group``)."""

    tile: Tile
    label: int
    group: str
    patient: str
    origin: str = "real"  # "real" or "synthetic"


@dataclass
class Bag:
    """One ABMIL bag: the patch tiles of one source image, labelled with its class."""

    key: str
    label: int
    patient: str
    tiles: list[Tile] = field(default_factory=list)
    origin: str = "real"


@dataclass
class RealData:
    """The prepared dataset, split by patient: manifest rows per split plus the class list."""

    root: Path
    classes: list[str]
    rows: dict[str, list[dict[str, str]]]  # split -> rows
    info: dict = field(default_factory=dict)  # dataset.json

    def patients(self, split: str) -> set[str]:
        return {patient_of(r) for r in self.rows[split]}


def patient_of(row: dict[str, str]) -> str:
    """The patient of a manifest row; falls back to the slide, then the source, then the tile."""
    for key in ("patient", "slide", "source", "path"):
        value = (row.get(key) or "").strip()
        if value:
            return f"{key}:{value}" if key != "patient" else value
    raise PathUpError("manifest row without path")  # pragma: no cover - read_manifest requires path


def source_of(row: dict[str, str]) -> str:
    return (row.get("source") or "").strip() or row["path"]


def _check_no_leak(rows: dict[str, list[dict[str, str]]], where: str) -> None:
    """Raise if one patient has tiles in two splits."""
    owners: dict[str, set[str]] = defaultdict(set)
    for split, split_rows in rows.items():
        for r in split_rows:
            owners[patient_of(r)].add(split)
    leaked = sorted(p for p, s in owners.items() if len(s) > 1)
    if leaked:
        more = f" and {len(leaked) - 5} more" if len(leaked) > 5 else ""
        raise PathUpError(f"{where}: patient(s) {', '.join(leaked[:5])}{more} appear in more than one split; "
                          "the downstream test must be split by patient (re-run 'pathup prepare' or use --resplit)")


def assign_patient_splits(rows: Sequence[dict[str, str]], fractions: dict[str, float], seed: int,
                          rest: str = "train") -> dict[str, list[dict[str, str]]]:
    """Split ``rows`` by patient, stratified by each patient's majority class.

    For each class, its patients are shuffled (seeded) and ``round(fraction * n)`` of them go to
    each split of ``fractions`` (at least one when the class has two patients or more), the rest
    to ``rest``; a class always keeps at least one patient in ``rest``.
    """
    by_patient: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_patient[patient_of(r)].append(r)
    per_class: dict[str, list[str]] = defaultdict(list)
    for p, prow in sorted(by_patient.items()):
        majority = Counter(r["class"] for r in prow).most_common(1)[0][0]
        per_class[majority].append(p)
    rng = random.Random(seed)
    out: dict[str, list[dict[str, str]]] = {rest: [], **{s: [] for s in fractions}}
    for cls in sorted(per_class):
        patients = per_class[cls]
        rng.shuffle(patients)
        start = 0
        for split, frac in fractions.items():
            n = round(frac * len(patients))
            if frac > 0 and len(patients) >= 2:
                n = max(n, 1)
            n = min(n, len(patients) - start - 1)  # keep one for `rest`
            for p in patients[start:start + max(n, 0)]:
                out[split].extend(by_patient[p])
            start += max(n, 0)
        for p in patients[start:]:
            out[rest].extend(by_patient[p])
    return out


def load_real(root: str | Path, *, resplit: bool = False, val_fraction: float = 0.15,
              test_fraction: float = 0.2, seed: int = 0) -> RealData:
    """Read a prepared dataset and return its rows per split (by patient, checked for leaks).

    Args:
        root: the dataset folder (``manifest.csv`` + ``dataset.json``).
        resplit: ignore the manifest's ``split`` column and split by patient here.
        val_fraction: share of training patients moved to ``val`` when there is no ``val`` split.
        test_fraction: share of patients in ``test`` (``resplit`` only).
        seed: seed of the patient shuffles.
    """
    root = Path(root)
    if not root.is_dir():
        raise OptionError("data", f": dataset folder not found: {root}")
    info = read_dataset_info(root)
    classes = list(info.get("classes") or [])
    if len(classes) < 2:
        raise PathUpError(f"{root / 'dataset.json'}: the downstream task needs at least 2 classes, got {classes}")
    all_rows = read_manifest(root)
    unknown = sorted({r["class"] for r in all_rows} - set(classes))
    if unknown:
        raise PathUpError(f"{root / 'manifest.csv'}: classes {unknown} are not in dataset.json ({classes})")
    for frac, name in ((val_fraction, "--val-fraction"), (test_fraction, "--test-fraction")):
        if not 0.0 <= frac < 1.0:
            raise PathUpError(f"{name} must be in [0, 1), got {frac}")
    if resplit:
        rows = assign_patient_splits(all_rows, {"test": test_fraction, "val": val_fraction}, seed)
    else:
        bad = sorted({r["split"] for r in all_rows} - set(SPLITS))
        if bad:
            raise PathUpError(f"{root / 'manifest.csv'}: unknown split value(s) {bad}; allowed: "
                              f"{', '.join(SPLITS)} (or use --resplit)")
        rows = {s: [r for r in all_rows if r["split"] == s] for s in SPLITS}
        _check_no_leak(rows, str(root / "manifest.csv"))
        if not rows["val"]:
            carved = assign_patient_splits(rows["train"], {"val": val_fraction}, seed)
            rows["train"], rows["val"] = carved["train"], carved["val"]
            log.info("no 'val' split in %s: %d training patient(s) held out for early stopping",
                     root, len({patient_of(r) for r in rows["val"]}))
    _check_no_leak(rows, str(root / "manifest.csv"))
    for split in ("train", "test"):
        if not rows[split]:
            raise PathUpError(f"{root / 'manifest.csv'}: no '{split}' rows; the downstream task needs train and test")
    if not rows["val"]:
        raise PathUpError(f"{root / 'manifest.csv'}: no validation patients for early stopping "
                          f"(no 'val' split and too few training patients); raise --val-fraction or add a val split")
    return RealData(root=root, classes=classes, rows=rows, info=info)


def _level_rows(data: RealData, split: str, level: str, option: str) -> list[dict[str, str]]:
    rows = [r for r in data.rows[split] if r["level"] == level]
    if not rows:
        levels = sorted({r["level"] for s in SPLITS for r in data.rows[s]})
        raise PathUpError(f"{data.root / 'manifest.csv'}: no '{level}' tiles in the {split} split; "
                          f"{option} allows the levels present: {', '.join(levels)}")
    return rows


def vit_items(data: RealData, split: str, level: str) -> list[Item]:
    """Real ViT items of one split: one per tile of ``level``, grouped by source image."""
    return [Item(Tile(data.root / r["path"]), data.classes.index(r["class"]), source_of(r), patient_of(r))
            for r in _level_rows(data, split, level, "--vit-level")]


def abmil_bags(data: RealData, split: str, level: str) -> list[Bag]:
    """Real ABMIL bags of one split: the ``level`` tiles of each source image (label: its class)."""
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in _level_rows(data, split, level, "--abmil-level"):
        groups[source_of(r)].append(r)
    bags = []
    for key in sorted(groups):
        rows = groups[key]
        labels = {r["class"] for r in rows}
        if len(labels) > 1:
            raise PathUpError(f"{data.root / 'manifest.csv'}: source {key!r} has tiles of several classes "
                              f"{sorted(labels)}; a bag needs one label")
        rows = sorted(rows, key=lambda r: (int(float(r.get("y") or 0)), int(float(r.get("x") or 0)), r["path"]))
        bags.append(Bag(key, data.classes.index(rows[0]["class"]), patient_of(rows[0]),
                        [Tile(data.root / r["path"]) for r in rows]))
    return bags


def patch_geometry(data: RealData, level: str = "patch") -> tuple[int, int]:
    """The real ``level`` tiles' region size and overlap in source pixels.

    From ``dataset.json``'s ``level_regions`` when ``pathup prepare`` wrote it; else from the
    manifest: the size is the most common tile width, the overlap is size minus the most common
    horizontal step between neighbouring tiles of one source (0 when no source has two in a row).
    """
    region = (data.info.get("level_regions") or {}).get(level) or {}
    if "size" in region:
        return int(region["size"]), int(region.get("overlap", 0))
    rows = [r for s in SPLITS for r in data.rows[s] if r["level"] == level]
    widths = [int(float(r["width"])) for r in rows if (r.get("width") or "").strip()]
    if not widths:
        raise PathUpError(f"{data.root / 'manifest.csv'}: no width for '{level}' tiles; "
                          "give --synthetic-patch-size and --synthetic-patch-overlap")
    size = Counter(widths).most_common(1)[0][0]
    steps: Counter[int] = Counter()
    rows_by_line: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in rows:
        if (r.get("x") or "").strip() and (r.get("y") or "").strip():
            rows_by_line[(source_of(r), r["y"])].append(int(float(r["x"])))
    for xs in rows_by_line.values():
        xs = sorted(set(xs))
        steps.update(b - a for a, b in zip(xs, xs[1:]) if 0 < b - a <= size)
    overlap = size - steps.most_common(1)[0][0] if steps else 0
    return size, overlap
