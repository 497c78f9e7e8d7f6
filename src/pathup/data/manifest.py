"""The prepared dataset's files: ``DATASET/manifest.csv`` and ``DATASET/dataset.json``.

``manifest.csv`` has one row per tile, with at least the columns of ``MANIFEST_COLUMNS``:

* ``path``: the tile file, relative to the dataset folder;
* ``class``, ``level`` (``patch`` or ``overview``), ``prompt``;
* ``source`` (the image or slide the tile was cut from), ``patient``, ``slide`` (may be empty);
* ``split`` (``train``, ``val`` or ``test``);
* ``x``, ``y``, ``width``, ``height``: the tile's region in the source, in source pixels.

``dataset.json`` holds ``classes`` (ordered; class ids index this list), ``levels``,
``descriptions`` (optional free text per class), ``tile_size`` and the options used.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

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
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("path", "class", "level", "prompt", "split") if c not in (reader.fieldnames or [])]
        if missing:
            raise PathUpError(f"{path}: missing column(s) {', '.join(missing)}")
        return list(reader)


def read_dataset_info(root: str | Path) -> dict[str, Any]:
    """``dataset.json`` of a prepared dataset; falls back to the manifest's classes if absent."""
    root = Path(root)
    info_file = root / "dataset.json"
    if info_file.is_file():
        return json.loads(info_file.read_text())
    rows = read_manifest(root)
    return {"classes": sorted({r["class"] for r in rows}),
            "levels": sorted({r["level"] for r in rows}, key=lambda v: (v != "patch", v)),
            "descriptions": {}}


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
