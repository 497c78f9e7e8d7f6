"""Resuming a ``pathup generate`` / ``upscale`` output: what must match for a rerun to continue.

A class folder (or an upscale target) stores the class, the model and every image-changing option
(``generate_settings.json``, or the sidecars of a folder written before it); a rerun resumes only when they
match, else it stops with a one-line error naming the folder and the first differing setting, and
``overwrite`` replaces the images instead. ``seed`` / ``num`` only add images and ``device`` / ``dtype`` /
``patch_batch`` are not compared. The stored form is the one of older folders (``size`` as ``WxH``; the
options ``patch_size`` / ``overlap`` under those names), so folders written before resume unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from pathup.data.generated import GENERATE_SETTINGS, class_dirname, read_json as _read_json
from pathup.errors import PathUpError, OptionError
from pathup.sample.config import STORED_NAMES, SampleConfig, Size, parse_size, stored_options

# options that never change an existing image: a rerun may differ in them and still resume
NEUTRAL_OPTIONS = ("seed", "num", "device", "dtype", "patch_batch", "step_mode", "overwrite")
CURRENT_NAMES = {stored: name for name, stored in STORED_NAMES.items()}  # for messages


def class_folder(out: Path, class_name: str) -> Path:
    """``OUT/<class>``, the folder of one class's images (``class_dirname``)."""
    return Path(out) / class_dirname(class_name)


def is_done(path: Path) -> bool:
    """An image counts as written when it and its JSON sidecar both exist."""
    from pathup.sample.writers import sidecar_path

    return Path(path).is_file() and sidecar_path(path).is_file()


# ------------------------------------------------------------------------------ settings of a folder
def model_key(model: str | Path | None) -> str | None:
    """How a model is compared between runs: the absolute path of a local folder, else the name given."""
    if model is None:
        return None
    p = Path(str(model)).expanduser()
    return str(p.resolve()) if p.exists() else str(model)


def image_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options (as stored) that change an image: ``NEUTRAL_OPTIONS`` left out, ``size`` as ``WxH`` (stored
    text parsed; a config's parsed ``Size`` taken as it is).

    The one rule for comparing runs: generate's folders and upscale targets here, compose's images
    (``pathup.sample.compose_folder``).
    """
    options = {k: v for k, v in options.items() if k not in NEUTRAL_OPTIONS}
    if isinstance(options.get("size"), Size):  # a config's own size, parsed already
        options["size"] = options["size"].wxh()
    elif "size" in options:  # stored text: "96" and "96x96" are one size
        try:
            options["size"] = parse_size(options["size"]).wxh()
        except OptionError:
            pass
    return options


def settings_fingerprint(class_name: str, cfg: SampleConfig, model: str | Path | None) -> dict[str, Any]:
    """What must match for a rerun to resume: class, model and every option that changes an image."""
    options = image_options(stored_options(cfg, size=cfg.size))
    return {"class": class_name, "model": model_key(model), "options": options}


def _fingerprint_of_sidecar(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The fingerprint recorded by an image's sidecar (folders written before generate_settings.json)."""
    options = meta.get("options")
    if not isinstance(options, dict):
        return None
    return {"class": meta.get("class"), "model": model_key(meta.get("model")), "options": image_options(options)}


def stored_fingerprint(folder: Path) -> dict[str, Any] | None:
    """The fingerprint of a class folder: its ``generate_settings.json``, else its first readable sidecar;
    None for a folder without either (a new or empty folder)."""
    folder = Path(folder)
    settings = folder / GENERATE_SETTINGS
    if settings.is_file():
        data = _read_json(settings)
        if data is None:
            raise PathUpError(f"{settings}: not valid JSON; remove it or use --overwrite")
        return data
    if not folder.is_dir():
        return None
    for side in sorted(folder.glob("*.json")):
        meta = _read_json(side)
        fp = _fingerprint_of_sidecar(meta) if meta else None
        if fp is not None:
            return fp
    return None


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


def settings_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """How two fingerprints differ, as text (None when they match): the class, else the model, else every
    differing option (``--steps 50 there, 10 now, --scheduler "ddim" there, "unipc" now``), so one rerun
    can match them all.

    A model of None on either side (unknown) is not compared; options missing on either side neither.
    """
    if old.get("class") is not None and old.get("class") != new.get("class"):
        return f"it holds class {_show(old.get('class'))}, not {_show(new.get('class'))}"
    if None not in (old.get("model"), new.get("model")) and old["model"] != new["model"]:
        return f"model {old['model']} there, {new['model']} now"
    a, b = old.get("options") or {}, new.get("options") or {}
    diffs = [f"--{CURRENT_NAMES.get(key, key).replace('_', '-')} {_show(a[key])} there, {_show(b[key])} now"
             for key in b if key in a and a[key] != b[key]]
    return ", ".join(diffs) or None


def check_class_folder(out: Path, class_name: str, cfg: SampleConfig, model: str | Path | None = None) -> bool:
    """Whether ``OUT/<class>`` may be resumed with these settings.

    Returns:
        False: the folder is new or matches (resume); True: it differs and ``cfg.overwrite`` asks to
        replace it (call ``clear_class_folder`` first).

    Raises:
        PathUpError: the folder differs and ``cfg.overwrite`` is off (one line naming the folder and the
            differing setting).
    """
    folder = class_folder(out, class_name)
    old = stored_fingerprint(folder)
    if old is None:
        return False
    diff = settings_difference(old, settings_fingerprint(class_name, cfg, model))
    if diff is None:
        return False
    if cfg.overwrite:
        return True
    raise OptionError("out", f"{folder} was made with other settings ({diff}); a rerun resumes only with the "
                      "same settings: use another --out, or --overwrite to replace its images")


def clear_class_folder(out: Path, class_name: str) -> None:
    """Remove what ``generate`` wrote in ``OUT/<class>`` for ``--overwrite``: each image of the class with
    its sidecar and the overview (and its sidecar) that the sidecar names, leftover overviews of the class,
    ``generate_settings.json`` and ``generate_config.yaml``. Anything else there (a user's notes, an image
    without a sidecar of this class, a sub-folder) stays."""
    from pathup.data.generated import GENERATE_CONFIG

    folder = class_folder(out, class_name)
    if not folder.is_dir():
        return
    overviews = folder / "overview"
    for side in [*sorted(folder.glob("*.json")), *sorted(overviews.glob("*.json"))]:
        meta = _read_json(side)
        if not meta or meta.get("class") != class_name or meta.get("level") not in ("upscaled", "overview"):
            continue  # not a sidecar that generate wrote for this class
        named = Path(str(meta.get("overview", "")))
        for p in [side, *(side.with_suffix(s) for s in (".png", ".tif", ".tiff"))] + (
                [named, named.with_suffix(".json")] if named.parent.resolve() == overviews.resolve() else []):
            p.unlink(missing_ok=True)
    for name in (GENERATE_SETTINGS, GENERATE_CONFIG):
        (folder / name).unlink(missing_ok=True)
    if overviews.is_dir() and not any(overviews.iterdir()):
        overviews.rmdir()


def settle_class_folder(out: Path, class_name: str, cfg: SampleConfig, model: str | Path | None = None, *,
                        process_index: int = 0, barrier: Callable[[], None] | None = None) -> None:
    """Refuse ``OUT/<class>`` made with other settings, or with ``cfg.overwrite`` clear it once.

    Every process looks first; then process 0 clears the folder while the others wait. Under several
    processes every one of them must call this with a ``barrier`` (``PartialState().wait_for_everyone``).
    """
    stale = check_class_folder(out, class_name, cfg, model)
    if cfg.overwrite and barrier is not None:
        barrier()  # every process has looked before process 0 clears
    if stale and process_index == 0:
        clear_class_folder(out, class_name)
    if cfg.overwrite and barrier is not None:
        barrier()


def upscale_fingerprint(image_path: str | Path, class_name: str, cfg: SampleConfig,
                        model: str | Path | None) -> dict[str, Any]:
    """``settings_fingerprint`` plus the resolved overview file (the output name holds only its stem)."""
    fp = settings_fingerprint(class_name, cfg, model)
    fp["source"] = str(Path(image_path).resolve())
    return fp


def check_upscale_target(target: Path, image_path: str | Path, class_name: str, cfg: SampleConfig,
                         model: str | Path | None = None) -> bool:
    """Whether an existing upscale ``target`` (image and sidecar) is done for these settings.

    Returns:
        True: done with the same settings (skip it); False: not done, or made with other settings and
        ``cfg.overwrite`` asks to replace it.

    Raises:
        PathUpError: made from another image, model or settings, without ``cfg.overwrite``.
    """
    from pathup.sample.writers import sidecar_path

    if not is_done(target):
        return False
    meta = _read_json(sidecar_path(target))
    old = _fingerprint_of_sidecar(meta) if meta else None
    new = upscale_fingerprint(image_path, class_name, cfg, model)
    diff = None
    if old is None:
        diff = "its sidecar is unreadable"
    else:
        src = meta.get("overview_source")
        if isinstance(src, str) and src != new["source"]:
            diff = f"made from {src}, not {new['source']}"
        diff = diff or settings_difference(old, new)
    if diff is None:
        return True
    if cfg.overwrite:
        return False
    raise OptionError("out", f"{target} exists with other settings ({diff}); use another --out, or --overwrite "
                      "to replace it")


