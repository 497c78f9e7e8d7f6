"""timm networks for the downstream classifiers, from scratch or from pretrained weights."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pathup.errors import PathUpError

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt", "checkpoint.pth")


def _weights_file(path: Path, option: str) -> Path:
    if path.is_file():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise PathUpError(f"{option} {path}: a folder without weights (looked for {', '.join(WEIGHT_FILES)})")


def _timm():
    try:
        import timm
    except ImportError:
        raise PathUpError("the downstream classifiers need timm: pip install 'pathup[downstream]'") from None
    return timm


def check_model_name(name: str, option: str) -> None:
    """Raise a PathUpError naming close timm models when ``name`` is not one."""
    import difflib

    timm = _timm()

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
        raise PathUpError(f"{option}: unknown timm model {name!r}{hint}")


def check_weights(weights: str | None, option: str) -> None:
    """Raise a PathUpError when ``weights`` is neither a path that exists, 'hf-hub:...' nor 'timm'."""
    if weights is None or weights == "timm" or weights.startswith("hf-hub:"):
        return
    path = Path(weights).expanduser()
    if not path.exists():
        raise PathUpError(f"{option}: {weights!r} is not a file or folder, 'hf-hub:<repo>' or 'timm'")
    _weights_file(path, option)


def create_timm_model(name: str, weights: str | None, *, option: str, **kwargs: Any) -> "torch.nn.Module":  # noqa: F821
    """Build timm model ``name``; load ``weights`` when given.

    Args:
        name: a timm model name (``timm.list_models()``).
        weights: ``None`` (from scratch), a weights file or folder (.safetensors/.pth/.bin, loaded
            through timm so the head is dropped and position embeddings resampled as needed),
            ``'hf-hub:<repo>'`` (a timm model on the Hugging Face hub; it defines the architecture)
            or ``'timm'`` (timm's default pretrained tag of ``name``).
        option: the CLI option that named the model (for error messages).
        **kwargs: passed to ``timm.create_model`` (``num_classes``, ``img_size``...).
    """
    timm = _timm()
    check_model_name(name, option)
    try:
        if weights is None:
            return timm.create_model(name, pretrained=False, **kwargs)
        if weights.startswith("hf-hub:"):
            log.info("loading %s (the architecture comes from the hub config)", weights)
            return timm.create_model(weights, pretrained=True, **kwargs)
        if weights == "timm":
            return timm.create_model(name, pretrained=True, **kwargs)
        check_weights(weights, f"{option}-weights")
        file = _weights_file(Path(weights).expanduser(), f"{option}-weights")
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(file)}, **kwargs)
    except PathUpError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PathUpError(f"{option}: cannot build {name!r} with weights {weights!r}: {first}") from None


def input_stats(model: "torch.nn.Module") -> tuple[tuple[float, ...], tuple[float, ...], int]:  # noqa: F821
    """(mean, std, native input size) of a timm model's pretrained config."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    return mean, std, size
