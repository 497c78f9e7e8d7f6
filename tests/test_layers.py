"""The package's layers: a module imports only from its own package or from lower layers (issue 13).

Every import counts, also one inside a function (a lazy import is still an arrow). Lower layers never
reach up: metrics/ knows nothing of train/, sample/, model/ or experiments/, and only cli/ sees everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pathup

ROOT = Path(pathup.__file__).parent

# rank: a package may import packages of a lower rank (and itself)
RANK = {
    "errors": 0,
    "io": 1,
    "config": 2, "progress": 2, "device": 2, "prompts": 2, "stages": 2, "sample_data": 2,
    "data": 3,
    "model": 4, "losses": 4, "metrics": 4,
    "train": 5, "sample": 5, "downstream": 5,
    "study": 6,
    "experiments": 7,
    "cli": 8, "__main__": 9, "__init__": 9,
}


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:len(parts) - node.level]
                names = [".".join(base + ((node.module,) if node.module else ()))]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            bits = name.split(".")
            if bits[0] == "pathup" and len(bits) > 1:
                found.add(bits[1])
    return found


def import_arrows() -> dict[str, set[str]]:
    arrows: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        src = _package_of(path)
        arrows.setdefault(src, set()).update(d for d in _imports(path) if d != src)
    return arrows


def test_every_package_has_a_layer():
    assert set(import_arrows()) <= set(RANK), sorted(set(import_arrows()) - set(RANK))


def test_no_import_reaches_up_a_layer():
    upward = sorted(f"{src} -> {dst}" for src, dsts in import_arrows().items() for dst in dsts
                    if RANK[dst] >= RANK[src])
    assert upward == []


def test_metrics_imports_nothing_that_trains_or_samples():
    assert not import_arrows()["metrics"] & {"train", "sample", "model", "experiments", "cli"}
