"""Prompts from class and spatial level (PathUp paper section 3.1, patho-align).

Every training tile gets the prompt ``"<class description>, <level>"``, e.g.
``"ductal carcinoma in situ, overview"``. With patho-align off (the paper's ablation) the prompt is
the class description alone. A ``PromptTable`` numbers the prompts (classes x levels): these ids
index the feature entropy loss's memory bank.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pathup.errors import PathUpError

LEVELS = ("patch", "overview")

# BRACS class codes (Brancati et al. 2022) and their names.
BRACS_CLASSES = {
    "N": "normal breast tissue",
    "PB": "pathological benign",
    "UDH": "usual ductal hyperplasia",
    "FEA": "flat epithelial atypia",
    "ADH": "atypical ductal hyperplasia",
    "DCIS": "ductal carcinoma in situ",
    "IC": "invasive carcinoma",
}


def class_text(name: str, descriptions: dict[str, str] | None = None) -> str:
    """Readable text for a class: a user description, a BRACS name, or the name with ``_`` as spaces."""
    if descriptions and name in descriptions:
        return descriptions[name].strip()
    if name in BRACS_CLASSES:
        return BRACS_CLASSES[name]
    return name.replace("_", " ").replace("-", " ").strip()


def build_prompt(name: str, level: str | None, descriptions: dict[str, str] | None = None) -> str:
    """``"<class text>, <level>"``; ``level=None`` gives the class text alone (patho-align off)."""
    if level is not None and level not in LEVELS:
        raise PathUpError(f"unknown level {level!r}; allowed: {', '.join(LEVELS)}")
    text = class_text(name, descriptions)
    return text if level is None else f"{text}, {level}"


@dataclass
class PromptTable:
    """The prompts a model was trained on, numbered class-major: id = class_index * n_levels + level_index.

    ``levels`` is ``("patch", "overview")`` with patho-align, or ``()`` without it (one prompt per class).
    """

    classes: list[str]
    levels: list[str] = field(default_factory=lambda: list(LEVELS))
    descriptions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.classes:
            raise PathUpError("a prompt table needs at least one class")
        if len(set(self.classes)) != len(self.classes):
            raise PathUpError(f"duplicate class names: {self.classes}")
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad:
            raise PathUpError(f"unknown level(s) {bad}; allowed: {', '.join(LEVELS)}")

    @property
    def n_levels(self) -> int:
        return max(1, len(self.levels))

    def __len__(self) -> int:
        return len(self.classes) * self.n_levels

    def class_index(self, name: str) -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            raise PathUpError(f"unknown class {name!r}; this model knows: {', '.join(self.classes)}") from None

    def prompt_id(self, name: str, level: str | None) -> int:
        c = self.class_index(name)
        if not self.levels:
            return c
        if level not in self.levels:
            raise PathUpError(f"unknown level {level!r}; allowed: {', '.join(self.levels)}")
        return c * self.n_levels + self.levels.index(level)

    def prompt(self, name: str, level: str | None) -> str:
        self.class_index(name)
        return build_prompt(name, level if self.levels else None, self.descriptions)

    def prompts(self) -> list[str]:
        """All prompt strings in id order."""
        if not self.levels:
            return [build_prompt(c, None, self.descriptions) for c in self.classes]
        return [build_prompt(c, lv, self.descriptions) for c in self.classes for lv in self.levels]

    def to_dict(self) -> dict:
        return {"classes": list(self.classes), "levels": list(self.levels),
                "descriptions": dict(self.descriptions), "prompts": self.prompts()}

    @classmethod
    def from_dict(cls, d: dict) -> "PromptTable":
        return cls(classes=list(d["classes"]), levels=list(d.get("levels", LEVELS)),
                   descriptions=dict(d.get("descriptions") or {}))

    def save(self, path: str | Path) -> None:
        from pathup.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "PromptTable":
        path = Path(path)
        if not path.is_file():
            raise PathUpError(f"prompt table not found: {path}")
        return cls.from_dict(json.loads(path.read_text()))
