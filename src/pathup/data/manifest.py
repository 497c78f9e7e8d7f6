"""The prepared dataset's files: ``DATASET/manifest.csv`` and ``DATASET/dataset.json``.

``manifest.csv`` has one row per tile, with at least the columns of ``MANIFEST_COLUMNS``:

* ``path``: the tile file, relative to the dataset folder;
* ``class``, ``level`` (``patch`` or ``overview``), ``prompt``;
* ``source`` (the image or slide the tile was cut from), ``patient``, ``slide`` (may be empty);
* ``split`` (``train``, ``val`` or ``test``);
* ``x``, ``y``, ``width``, ``height``: the tile's region in the source, in source pixels;
* ``mpp`` (written by ``pathup prepare``): microns per pixel of the tile (region microns / tile pixels),
  empty when the source's scale is unknown.

``dataset.json`` holds ``classes`` (ordered; class ids index this list), ``levels``,
``descriptions`` (optional free text per class), ``tile_size``, ``mpp`` (``{"patch": float | null,
"overview": float | null}``: microns per pixel of each level's tiles, null when unknown or when the
sources differ, which ``mpp_note`` then says) and the options used. Files written before these fields
existed are still read (``dataset_mpp`` gives null scales for them).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from pathup.errors import PathUpError

MANIFEST_COLUMNS = ("path", "class", "level", "prompt", "source", "patient", "slide", "split",
                    "x", "y", "width", "height")
SPLITS = ("train", "val", "test")


def read_manifest(root: str | Path) -> list[dict[str, str]]:
    """Rows of ``root/manifest.csv`` (``root`` may also be the CSV itself)."""
    path = Path(root)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise PathUpError(f"manifest not found: {path} (run 'pathup prepare' first)")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("path", "class", "level", "prompt", "split") if c not in (reader.fieldnames or [])]
            if missing:
                raise PathUpError(f"{path}: missing column(s) {', '.join(missing)}")
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise PathUpError(f"{path}: not a readable manifest ({err}); run 'pathup prepare' again") from None


def read_dataset_info(root: str | Path) -> dict[str, Any]:
    """``dataset.json`` of a prepared dataset; falls back to the manifest's classes if absent.

    A file that is not JSON, not UTF-8, or whose ``classes`` / ``levels`` / ``descriptions`` have the
    wrong type is a one-line PathUpError naming it.
    """
    from pathup.io import read_text

    root = Path(root)
    info_file = root / "dataset.json"
    if info_file.is_file():
        try:
            info = json.loads(read_text(info_file, "dataset file"))
        except ValueError as err:
            if isinstance(err, PathUpError):
                raise
            raise PathUpError(f"{info_file}: not valid JSON ({err}); run 'pathup prepare' again") from None
        return _check_info(info, info_file)
    rows = read_manifest(root)
    return {"classes": sorted({r["class"] for r in rows}),
            "levels": sorted({r["level"] for r in rows}, key=lambda v: (v != "patch", v)),
            "descriptions": {}}


def _check_info(info: Any, path: Path) -> dict[str, Any]:
    def strings(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    descriptions = info.get("descriptions") or {} if isinstance(info, dict) else {}
    problem = ("the top level must be an object" if not isinstance(info, dict) else
               "'classes' must be a non-empty list of names" if not strings(info.get("classes")) or not info["classes"]
               else "'levels' must be a list of level names" if "levels" in info and not strings(info["levels"])
               else "'descriptions' must map class names to text" if not isinstance(descriptions, dict)
               or not all(isinstance(v, str) for v in descriptions.values()) else None)
    if problem:
        raise PathUpError(f"{path}: {problem}; run 'pathup prepare' again")
    return info


def write_manifest(root: str | Path, rows: list[dict[str, Any]], extra_columns: tuple[str, ...] = ()) -> Path:
    """Write ``root/manifest.csv`` atomically: ``MANIFEST_COLUMNS`` then ``extra_columns``."""
    import io

    from pathup.io import atomic_write_text

    columns = list(MANIFEST_COLUMNS) + [c for c in extra_columns if c not in MANIFEST_COLUMNS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(root) / "manifest.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def write_dataset_info(root: str | Path, info: dict[str, Any]) -> Path:
    """Write ``root/dataset.json`` atomically (needs ``classes``, ``levels``, ``descriptions``, ``tile_size``)."""
    from pathup.io import atomic_write_text

    missing = [k for k in ("classes", "levels", "descriptions", "tile_size") if k not in info]
    if missing:
        raise ValueError(f"dataset.json needs {missing}")
    path = Path(root) / "dataset.json"
    atomic_write_text(path, json.dumps(info, indent=2))
    return path


def dataset_mpp(info: Mapping[str, Any], where: str = "dataset.json",
                levels: Iterable[str] | None = None) -> dict[str, float | None]:
    """``{"patch": mpp, "overview": mpp}`` of a dataset.json for ``levels`` (default: the dataset's; None
    where unknown, or in older files); PathUpError naming ``where`` for a value that is not a positive
    number or null."""
    raw = info.get("mpp") if isinstance(info.get("mpp"), Mapping) else {}
    out: dict[str, float | None] = {}
    for level in list(levels or info.get("levels") or ("patch", "overview")):
        value = raw.get(level)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise PathUpError(f"{where}: mpp of level {level!r} must be a positive number or null, got {value!r}")
        out[level] = float(value) if value is not None else None
    return out


def level_mpp(rows: Iterable[Mapping[str, Any]], levels: Iterable[str], nominal: Mapping[str, float] | None = None,
              tolerance: float = 0.01) -> tuple[dict[str, float | None], str]:
    """The microns per pixel of each level's tiles from manifest rows, and a note when one is unknown.

    A level's value is ``nominal[level]`` when given (prepare's ``target_mpp``), else the rows' common
    ``mpp``; it is None when a row's scale is unknown or when the rows differ by more than ``tolerance``
    (relative), and the note says which and why.
    """
    values: dict[str, list[float | None]] = {lv: [] for lv in levels}
    for r in rows:
        if r["level"] in values:
            v = r.get("mpp")
            values[r["level"]].append(None if v in (None, "") else float(v))
    out: dict[str, float | None] = {}
    notes = []
    for lv, vs in values.items():
        known = [v for v in vs if v is not None]
        if not vs:
            out[lv] = None
        elif len(known) < len(vs):
            out[lv] = None
            notes.append(f"{lv}: the scale of {len(vs) - len(known)} of {len(vs)} tiles is unknown (sources "
                         f"without microns per pixel; give mpp)")
        elif max(known) > min(known) * (1 + tolerance):
            out[lv] = None
            notes.append(f"{lv}: the sources differ in scale ({min(known):.4g} to {max(known):.4g} um/px per tile "
                         f"pixel; use target_mpp to cut them at one scale)")
        else:
            out[lv] = round(float(nominal[lv]) if nominal and lv in nominal else sum(known) / len(known), 6)
    return out, "; ".join(notes)
