"""Real sample images shipped with PathUp (see README.md in this folder for licences)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent

SAMPLES = ("kather", "breakhis")

# Microns per pixel of each sample's images (None: not known). Kather 2016: 150 px = 74 um tiles at 20x,
# 0.495 um/px (Kather et al. 2016, and this folder's README); BreakHis publishes magnifications, not a
# pixel size, so its scale stays unknown rather than guessed.
SAMPLE_MPP: dict[str, float | None] = {"kather": 0.495, "breakhis": None}


def breakhis_dir() -> Path:
    """Folder with one sub-folder per class and ``MANIFEST.csv`` (path, class, patient, slide)."""
    return ROOT / "breakhis"


def breakhis_manifest() -> Path:
    return ROOT / "breakhis" / "MANIFEST.csv"


def kather_dir() -> Path:
    """336 Kather 2016 colorectal tiles (8 classes, 150 px, 20x); ``MANIFEST.csv``: path, class, slide, split."""
    return ROOT / "kather"


def kather_manifest() -> Path:
    return ROOT / "kather" / "MANIFEST.csv"


def sample_manifest(name: str) -> Path:
    """The ``MANIFEST.csv`` of a shipped sample by name (``kather`` or ``breakhis``)."""
    from pathup.errors import PathUpError

    if name not in SAMPLES:
        raise PathUpError(f"unknown sample {name!r}; allowed: {', '.join(SAMPLES)}")
    return ROOT / name / "MANIFEST.csv"


def wsi_path() -> Path:
    """A small Aperio SVS whole-slide image (CMU-1-Small-Region, CC0)."""
    return ROOT / "wsi" / "cmu-1-small-region.svs"
