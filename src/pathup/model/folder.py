"""``check_model_folder``: a local model folder is checked before anything in it is loaded.

A model folder is a diffusers Stable Diffusion folder (``model_index.json``; ``vae/``, ``unet/``,
``text_encoder/`` each with ``config.json`` and safetensors weights; ``tokenizer/``; ``scheduler/``) plus
PathUp's ``pathup.json`` and ``fel_bank.safetensors``. PathUp loads weights from safetensors files only:
a ``pytorch_model.bin`` / ``diffusion_pytorch_model.bin`` is a pickle, and a folder that has only those is
refused. Every JSON file must parse, every safetensors header must read, and ``pathup.json`` must have
the types PathUp writes; otherwise a one-line PathUpError names the file and what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pathup.errors import PathUpError
from pathup.io import read_text

WEIGHTED = ("vae", "unet", "text_encoder")
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))  # either (fast or slow CLIP tokenizer)


def _json(path: Path) -> Any:
    try:
        return json.loads(read_text(path, "model file"))
    except ValueError as err:
        if isinstance(err, PathUpError):
            raise
        raise PathUpError(f"{path}: not valid JSON ({err})") from None


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: a corrupt or truncated file
        raise PathUpError(f"{path}: not a readable safetensors file ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None


def _check_meta(meta: Any, path: Path) -> dict[str, Any]:
    def strings(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    if not isinstance(meta, dict):
        raise PathUpError(f"{path}: the top level must be an object")
    prompts = meta.get("prompts")
    problem = None
    if prompts is not None:
        if not isinstance(prompts, dict):
            problem = f"'prompts' must be an object (classes, levels, descriptions), got {type(prompts).__name__}"
        elif not strings(prompts.get("classes")) or not prompts["classes"]:
            problem = "'prompts.classes' must be a non-empty list of class names"
        elif "levels" in prompts and not strings(prompts["levels"]):
            problem = "'prompts.levels' must be a list of level names"
        elif not isinstance(prompts.get("descriptions") or {}, dict) or not all(
                isinstance(v, str) for v in (prompts.get("descriptions") or {}).values()):
            problem = "'prompts.descriptions' must map class names to text"
    if problem is None and meta.get("size") is not None and not isinstance(meta["size"], str):
        problem = "'size' must be a model size name or null"
    if problem is None and meta.get("mpp") is not None and not isinstance(meta["mpp"], dict):
        problem = "'mpp' must be an object of level: microns per pixel, or null"
    if problem:
        raise PathUpError(f"{path}: {problem}")
    return meta


def check_model_folder(path: str | Path) -> dict[str, Any] | None:
    """Check a local model folder (see the module docstring); returns ``pathup.json``'s content (None when
    the folder has none, e.g. a plain Stable Diffusion checkpoint)."""
    path = Path(path)
    if (path / "model_index.json").is_file() and not isinstance(_json(path / "model_index.json"), dict):
        raise PathUpError(f"{path / 'model_index.json'}: the top level must be an object")
    for sub in WEIGHTED:
        folder = path / sub
        if not (folder / "config.json").is_file():
            raise PathUpError(f"{folder}: missing (needs config.json and .safetensors weights)")
        _json(folder / "config.json")
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            pickles = sorted(p.name for p in folder.glob("*.bin"))
            why = (f"holds {', '.join(pickles)} (pickled weights, which can run code) but no .safetensors" if pickles
                   else "has no .safetensors weights")
            raise PathUpError(f"{folder} {why}: pathup loads weights from safetensors files only; convert them "
                              "where you trust the file (save_pretrained(safe_serialization=True))")
        for w in weights:
            _check_safetensors(w)
    found = next((names for names in TOKENIZER_FILES if all((path / "tokenizer" / n).is_file() for n in names)), None)
    if found is None:
        raise PathUpError(f"{path / 'tokenizer'}: missing (a CLIP tokenizer folder: tokenizer.json, or vocab.json "
                          "and merges.txt)")
    _json(path / "tokenizer" / found[0])
    if (path / "scheduler" / "scheduler_config.json").is_file():
        _json(path / "scheduler" / "scheduler_config.json")
    if (path / "fel_bank.safetensors").is_file():
        _check_safetensors(path / "fel_bank.safetensors")
    meta_file = path / "pathup.json"
    return _check_meta(_json(meta_file), meta_file) if meta_file.is_file() else None
