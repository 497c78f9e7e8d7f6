"""``compose_to_folder``: composed images with their masks, previews, GeoJSON and sidecars in a folder.

The layout of the folder is in ``pathup.sample.compose``'s docstring; ``pathup compose`` wraps this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pathup.errors import PathUpError
from pathup.io import safe_name
from pathup.sample.config import ComposeConfig, stored_options, validate
from pathup.sample.layout import resize_labels
from pathup.sample.regional import ComposeImage, compose_image, make_layout
from pathup.sample.resume import image_options

if TYPE_CHECKING:
    from pathup.sample.layout import Layout
    from pathup.sample.pipeline import PathUpPipeline

COMPOSE_CONFIG = "compose_config.yaml"


@dataclass
class ComposeResult:
    """What a call wrote (image paths) and what it found already done."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    unet: list[dict[str, Any]] = field(default_factory=list)


def layout_name(layout: Any, cfg: ComposeConfig) -> str:
    """``NAME`` of the output files: the layout file's stem, or ``random``."""
    if layout is None:
        return "random"
    source = getattr(layout, "source", layout)
    return safe_name(Path(str(source)).stem) if not str(source).startswith("random:") else "random"


def output_paths(out: Path, name: str, seed: int, fmt: str) -> dict[str, Path]:
    """Every file of one composed image (see the module docstring)."""
    from pathup.sample.writers import suffix

    base = Path(out) / f"{name}_s{seed}"
    return {"image": base.with_name(base.name + suffix(fmt)), "mask": base.with_name(base.name + "_mask.png"),
            "mask_colour": base.with_name(base.name + "_mask_colour.png"),
            "overlay": base.with_name(base.name + "_overlay.png"),
            "geojson": base.with_name(base.name + ".geojson"),
            "overview": Path(out) / "overview" / f"{name}_s{seed}.png"}


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """Model, layout and the image-changing options (``pathup.sample.resume.image_options``, generate's rule)."""
    return {"model": settings.get("model"), "layout": settings.get("layout"),
            "options": image_options(settings.get("options", {}))}


def _same(have: dict[str, Any], want: dict[str, Any]) -> bool:
    """Whether an existing image's settings match: model, layout and every option both record (an option
    added since, such as ``mpp``, is compared only once the image records it)."""
    have, want = _comparable(have), _comparable(want)
    a, b = have["options"], want["options"]
    return (have["model"], have["layout"]) == (want["model"], want["layout"]) and \
        all(a[k] == b[k] for k in b if k in a)


def compose_to_folder(pipe: "PathUpPipeline", out: Path, cfg: ComposeConfig, *, layout: Any = None,
                      legend: Any = None, process_index: int = 0, num_processes: int = 1,
                      progress: bool = True, checked: bool = False) -> ComposeResult:
    """Compose this process's share of ``cfg.num`` images into ``out`` (the layout above).

    Seeds ``cfg.seed .. cfg.seed + cfg.num - 1`` are shared across processes as in ``pathup generate``
    (process i takes every num_processes-th seed); with ``--random-layout`` each seed also draws its own
    layout. An image whose every output (image, sidecar, masks, previews, GeoJSON, overview) exists is
    skipped when it was made with the same model, layout and image-changing options (``patch_batch``,
    ``device``, ``dtype`` may differ, as in ``pathup generate``: ``pathup.sample.resume.image_options``); made
    otherwise it is an error unless ``cfg.overwrite``; one with an output missing is made again.

    Args:
        pipe: the pipeline (model already on its device).
        out: the output folder (created as needed).
        cfg: the resolved options.
        layout: a label image or JSON file (or a ``Layout``); None with ``cfg.random_layout``.
        legend: the label image's legend file.
        process_index, num_processes: this process's share under ``accelerate launch``.
        progress: show the progress bar over images.
        checked: ``cfg`` is already checked (``validate`` and the size bound; the CLI does both before it
            loads the model); False: checked here, once.

    Raises:
        PathUpError: an invalid option, a bad layout or legend, a class the model does not know, ``out``
            a file, or an existing image made with other settings (without ``cfg.overwrite``).
    """
    from tqdm.auto import tqdm

    from pathup.config import save_config
    from pathup.sample.generate import check_output_size, output_format, save_with_scale, seeds_for_process
    from pathup.sample.writers import read_settings, save_image

    if not checked:
        validate(cfg)
        check_output_size(cfg)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PathUpError(f"out {out} exists and is not a folder")
    fmt = output_format(cfg)
    name = layout_name(layout, cfg)
    seeds = seeds_for_process(cfg.seed, cfg.num, process_index, num_processes)
    fixed = None if layout is None else make_layout(pipe, cfg, cfg.seed, layout=layout, legend=legend)
    result = ComposeResult()
    todo = []
    for seed in seeds:
        paths = output_paths(out, name, seed, fmt)
        side = paths["image"].with_suffix(".json")
        if all(p.is_file() for p in [*paths.values(), side]) and not cfg.overwrite:  # done: every output there
            want = _settings(pipe, cfg, seed, fixed, layout, legend, {})
            if not _same(read_settings(paths["image"]), want):
                raise PathUpError(f"{paths['image']} was made with another model, layout or settings; "
                                  "use --overwrite or another --out")
            result.skipped.append(paths["image"])
        else:
            todo.append(seed)
    if not todo:
        return result
    if process_index == 0:
        save_config(cfg, out / COMPOSE_CONFIG)
    for seed in tqdm(todo, desc="compose", unit="image", disable=not progress):
        lay = fixed if fixed is not None else make_layout(pipe, cfg, seed)
        comp = compose_image(pipe, lay, cfg, seed)
        paths = output_paths(out, name, seed, fmt)
        settings = _settings(pipe, cfg, seed, lay, layout, legend, comp.unet)
        settings["files"] = {k: p.name if k != "overview" else f"overview/{p.name}" for k, p in paths.items()}
        write_outputs(comp, paths, settings, cfg.preview_size, overview_mpp=pipe.overview_mpp(cfg))
        save_with_scale(save_image, comp.image, paths["image"], {**settings, "level": "composed"}, pipe.image_mpp(cfg))
        result.written.append(paths["image"])
        result.unet.append(comp.unet)
    return result


def _settings(pipe: "PathUpPipeline", cfg: ComposeConfig, seed: int, lay: "Layout | None", layout: Any,
              legend: Any, unet: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to reproduce one composed image (stored beside it)."""
    from pathup import __version__

    options = stored_options(cfg, seed=seed)
    if layout is None:  # a random layout is named by its recipe and seed (as random_layout names it)
        source = f"random:{cfg.layout_shape}:k={cfg.random_layout}:seed={seed}"
    elif hasattr(layout, "labels"):
        source = layout.source
    else:
        source = str(Path(str(layout)).resolve())
    settings: dict[str, Any] = {
        "layout": source, "legend_file": None if legend is None else str(Path(str(legend)).resolve()),
        "seed": seed, "model": pipe.model_name, "size": list(cfg.size), "options": options,
        "pathup_version": __version__}
    mpp = pipe.image_mpp(cfg)
    if mpp is not None:
        settings["mpp"] = mpp
    if lay is not None:
        settings["legend"] = lay.legend()
        settings["classes"] = list(lay.classes)
        settings["prompts"] = {c: pipe.prompts_for(c) for c in lay.classes}
    if unet:
        settings["unet_evaluations"] = unet
    return settings


def _preview_size(width: int, height: int, limit: int) -> tuple[int, int]:
    if limit <= 0 or max(width, height) <= limit:
        return width, height
    s = limit / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def write_outputs(comp: ComposeImage, paths: dict[str, Path], settings: dict[str, Any], preview_size: int, *,
                  overview_mpp: float | None = None) -> None:
    """Mask, previews, GeoJSON and overview of one composed image (atomic writes; the image is separate)."""
    import json

    from PIL import Image

    from pathup.io import atomic_path, atomic_write_text
    from pathup.sample.geojson import geojson_regions
    from pathup.sample.layout import colour_mask, overlay
    from pathup.sample.generate import save_with_scale
    from pathup.sample.writers import save_png

    height, width = comp.mask.shape
    mask = comp.mask
    with atomic_path(paths["mask"]) as tmp:
        if mask.max() < 256:
            Image.fromarray(mask.astype(np.uint8), "L").save(tmp, format="PNG")
        else:
            Image.fromarray(mask.astype(np.uint16), "I;16").save(tmp, format="PNG")
    pw, ph = _preview_size(width, height, preview_size)
    small = resize_labels(comp.labels, pw, ph)
    with atomic_path(paths["mask_colour"]) as tmp:
        Image.fromarray(colour_mask(small, comp.layout), "RGB").save(tmp, format="PNG")
    image = np.asarray(comp.image)
    if (pw, ph) != (width, height):
        image = np.asarray(Image.fromarray(image, "RGB").resize((pw, ph), Image.BOX))
    with atomic_path(paths["overlay"]) as tmp:
        Image.fromarray(overlay(image, small, comp.layout), "RGB").save(tmp, format="PNG")
    atomic_write_text(paths["geojson"], json.dumps(geojson_regions(comp.layout, width, height)) + "\n")
    save_with_scale(save_png, comp.overview, paths["overview"], {**settings, "level": "overview"}, overview_mpp)


