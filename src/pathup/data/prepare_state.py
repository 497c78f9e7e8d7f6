"""The resumable state of ``pathup prepare`` under ``DATASET/.prepare/`` (``pathup.stages``).

* ``state.json``: the fingerprint of the options and the source listing (``pathup.stages.check_settings``:
  same settings resume; other settings stop, or start over with ``overwrite``);
* ``scan.jsonl`` / ``done.jsonl``: one line per scanned / finished source (``pathup.stages.JsonlLog``);
* ``plan.json``: the split and the chosen tiles, written once after the scan.

State written by earlier versions (options named ``patch_size``, ``overview_size``, ``tile_size``) still
resumes: those names are read as ``patch_px``, ``overview_px``, ``tile_px``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from pathup.config import to_dict
from pathup.data.prepare_config import PrepareConfig
from pathup.data.sources import SourceItem
from pathup.errors import PathUpError
from pathup.io import DEFAULT_MAX_IMAGE_PIXELS, atomic_write_text
from pathup.stages import JsonlLog, check_settings

STATE_DIR = ".prepare"
_RENAMED = {"patch_size": "patch_px", "overview_size": "overview_px", "tile_size": "tile_px"}
# Options that do not change the tiles, and options whose default leaves earlier datasets resumable.
_NOT_FINGERPRINTED = ("out", "sources", "descriptions", "strict", "workers", "overwrite")
_OMITTED_AT_DEFAULT = {"max_image_pixels": DEFAULT_MAX_IMAGE_PIXELS, "target_mpp": None, "mpp": None}


class PrepareState:
    """The files under ``DATASET/.prepare``."""

    def __init__(self, out: Path) -> None:
        self.dir = Path(out) / STATE_DIR
        self.scan = JsonlLog(self.dir / "scan.jsonl")
        self.done = JsonlLog(self.dir / "done.jsonl")
        self.plan_file = self.dir / "plan.json"

    def read_plan(self) -> dict[str, Any] | None:
        return json.loads(self.plan_file.read_text()) if self.plan_file.is_file() else None

    def write_plan(self, plan: dict[str, Any]) -> None:
        atomic_write_text(self.plan_file, json.dumps(plan))


def fingerprint_settings(cfg: PrepareConfig, items: list[SourceItem]) -> dict[str, Any]:
    """What decides the tiles: the options (not ``_NOT_FINGERPRINTED``) and the listing of the sources."""
    opts = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_FINGERPRINTED}
    for key, default in _OMITTED_AT_DEFAULT.items():
        if opts.get(key) == default:
            del opts[key]  # datasets prepared before the option existed still resume
    listing = hashlib.sha1(json.dumps([[it.key, it.class_name, it.kind, it.patient, it.slide, it.split]
                                       for it in items]).encode()).hexdigest()
    return {"options": opts, "sources": listing, "n_sources": len(items)}


def _migrate(meta: Path) -> None:
    """Rename the options of a state.json written before the ``*_px`` names (in place)."""
    try:
        old = json.loads(meta.read_text())
    except (OSError, ValueError):
        return
    opts = old.get("options") if isinstance(old, dict) else None
    if isinstance(opts, dict) and any(k in opts for k in _RENAMED):
        old["options"] = {_RENAMED.get(k, k): v for k, v in opts.items()}
        atomic_write_text(meta, json.dumps(old, sort_keys=True))


def open_state(out: Path, settings: dict[str, Any], overwrite: bool) -> PrepareState:
    """The state of ``out`` for ``settings``: resumed when they match, started afresh when ``out`` is new or
    ``overwrite`` is set; PathUpError when ``out`` holds a dataset made with other settings."""
    state = PrepareState(out)
    meta = state.dir / "state.json"
    outputs = [out / "tiles", out / "manifest.csv", out / "dataset.json", out / "config.yaml"]
    existed = meta.is_file()
    if existed:
        _migrate(meta)
    elif (out / "manifest.csv").exists():
        if not overwrite:
            raise PathUpError(f"{out} already holds a manifest.csv not written by this version of prepare; "
                              f"use another out folder or overwrite (--overwrite)")
        _remove([state.dir, *outputs])
    same = check_settings(meta, settings, overwrite=overwrite, folder=out, option="overwrite (--overwrite)")
    if existed and not same:  # overwrite: the earlier dataset goes, the new settings stay in state.json
        _remove([p for p in state.dir.iterdir() if p != meta] + outputs)
    return state


def _remove(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def remove_stale_temp_files(out: Path) -> int:
    """Remove temporary tiles (``.<name>.<random>.tmp.png``) left in ``out/tiles`` by an interrupted or killed
    run; returns how many."""
    n = 0
    tiles = out / "tiles"
    if tiles.is_dir():
        for p in tiles.rglob(".*.tmp*"):
            if p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
    return n
