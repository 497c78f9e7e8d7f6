"""The layout of a folder written by ``pathup generate`` / ``upscale``, and reading it back.

Writers (``pathup.sample.generate``) and readers (``pathup.metrics``, ``pathup.downstream``) share this
module, so the readers need nothing from the sampling layer. The layout::

    OUT/<class>/<class>_s<seed>.png          (or .tiff) + <class>_s<seed>.json sidecar ("level": "upscaled")
    OUT/<class>/overview/<class>_s<seed>.png (+ .json with "level": "overview")
    OUT/<class>/generate_config.yaml         the resolved options of the last run
    OUT/<class>/generate_settings.json       the class, model and image-changing options of the folder

``<class>`` is ``class_dirname(class)`` (``pathup.io.unique_name``). Readers map folders back to classes
from the sidecars (``read_generated``), never from the folder name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pathup.io import read_json, unique_name  # noqa: F401 - read_json: readers of this layout use it

GENERATE_CONFIG = "generate_config.yaml"
GENERATE_SETTINGS = "generate_settings.json"
UPSCALE_CONFIG = "upscale_config.yaml"
LEVELS = ("upscaled", "overview")  # the "level" of a generated image's sidecar

class_dirname = unique_name  # a class's folder (and file-name) form: injective over class names


@dataclass(frozen=True)
class GeneratedImage:
    """One image of a ``generate`` (or ``upscale``) folder: its class and level, None where unknown."""

    path: Path
    class_name: str | None
    level: str | None  # "upscaled" (the final large image), "overview", or None (not a generated image)
    seed: int | None = None  # the seed it was drawn from (``image_seed``), None where unknown


def read_generated(root: str | Path) -> list[GeneratedImage]:
    """Every image under ``root`` with the class, level and seed it was generated for.

    The class and level come from the image's sidecar (``"class"``, ``"level"``); without one, the layout
    above decides: ``<class>/overview/*`` beside a ``generate_config.yaml`` / ``generate_settings.json``
    is an overview, the images directly in such a class folder are the final images, and the class comes
    from ``generate_settings.json``. Other images get None.
    """
    from pathup.io import list_images

    root = Path(root)
    folder_class: dict[Path, str | None] = {}
    folder_marked: dict[Path, bool] = {}

    def marked(folder: Path) -> bool:  # looked up once per folder, not per image
        if folder not in folder_marked:
            folder_marked[folder] = (folder / GENERATE_CONFIG).is_file() or (folder / GENERATE_SETTINGS).is_file()
        return folder_marked[folder]

    def class_of(folder: Path) -> str | None:
        if folder not in folder_class:
            data = read_json(folder / GENERATE_SETTINGS)
            folder_class[folder] = data.get("class") if data else None
        return folder_class[folder]

    out = []
    for p in list_images(root):
        meta = read_json(p.with_suffix(".json"))
        level = meta.get("level") if meta else None
        level = level if level in LEVELS else None
        cls = meta.get("class") if meta else None
        home = p.parent.parent if p.parent.name == "overview" and marked(p.parent.parent) else p.parent
        if level is None and marked(home):
            level = "overview" if home != p.parent else "upscaled"
        if cls is None and marked(home):
            cls = class_of(home)
        out.append(GeneratedImage(p, cls if isinstance(cls, str) else None, level, _seed(meta, p)))
    return out


_SEED_STEM = re.compile(r"(?:^|_)s(\d+)$")  # <class>_s<seed> (generate) or s<seed> (benchmarks)


def image_seed(path: str | Path) -> int | None:
    """The seed a generated image was drawn from: its sidecar's ``"seed"``, else the ``_s<seed>`` (or
    ``s<seed>``) at the end of its file name; None when neither says."""
    path = Path(path)
    return _seed(read_json(path.with_suffix(".json")), path)


def _seed(meta: dict | None, path: Path) -> int | None:
    """``image_seed`` from a sidecar already read (``meta``, None without one)."""
    seed = meta.get("seed") if meta else None
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed
    m = _SEED_STEM.search(path.stem)
    return int(m.group(1)) if m else None
