"""Real sample images shipped with PathUp (see README.md in this folder for licences)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def breakhis_dir() -> Path:
    """Folder with one sub-folder per class and ``MANIFEST.csv`` (path, class, patient, slide)."""
    return ROOT / "breakhis"


def breakhis_manifest() -> Path:
    return ROOT / "breakhis" / "MANIFEST.csv"


def wsi_path() -> Path:
    """A small Aperio SVS whole-slide image (CMU-1-Small-Region, CC0)."""
    return ROOT / "wsi" / "cmu-1-small-region.svs"
