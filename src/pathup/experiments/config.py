"""Options of ``pathup experiment run`` and the checks made before any work starts.

``ExperimentConfig`` is the single source of the runner's defaults; ``validate`` and ``dataset_info``
check every option that can be checked up front (one-line ``PathUpError``); ``check_out`` refuses to
continue an experiment folder made with other options. The tables follow the PathUp paper's Tables 1-4
(section 4, "Experiments"); see ``pathup.experiments.run`` for the layout of ``OUT``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pathup.config import option
from pathup.errors import OptionError, PathUpError

TABLES = (1, 2, 3, 4)
# training arms of Table 2: key -> (condition name, TrainConfig overrides)
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "pathup": ("PathUp", {}),
    "no-fel": ("w-o FEL", {"fel_beta": 0.0}),
    "no-pa": ("w-o PA", {"patho_align": False}),
}
UPSCALER_CLASSES = ("StableDiffusionUpscalePipeline", "LDMSuperResolutionPipeline")
WEIGHT_MAP_CONDITIONS = {"pyramid": "weight map on", "uniform": "weight map off"}
# options that may change between reruns into the same OUT (they only add work or change nothing saved)
ADDITIVE = ("tables", "seeds", "compare", "upscaler", "device", "batch_size", "progress")
TRAIN_FIXED = ("data", "dataset", "out", "resume", "model", "max_steps")


def evaluate_option(name: str) -> Any:
    """The ``pathup evaluate`` option ``name`` (default, help, range) as an option of the experiment, which
    passes it on to every evaluation."""
    from pathup.metrics.evaluate import EvaluateConfig

    f = next(f for f in dataclasses.fields(EvaluateConfig) if f.name == name)
    meta = {k: v for k, v in f.metadata.items() if k not in ("help", "aliases")}
    return option(f.default, f.metadata["help"], **meta)


@dataclass
class ExperimentConfig:
    """Options of ``pathup experiment run`` (the single source of their defaults)."""

    data: str = option(help="prepared dataset folder (manifest.csv + dataset.json): training tiles and the real "
                            "images", metavar="DATASET")
    out: str = option(help="experiment folder (runs, images, results, tables.md, plots)", metavar="OUT")
    tables: list[int] = option(help="tables to produce: 1 (models), 2 (ablation), 3 (upscaling), 4 (weight map)",
                               default_factory=lambda: [2, 3, 4], metavar="N")
    seeds: int = option(5, "seeds (image sets and evaluation seeds 0 .. N-1); tables show mean +- std over them",
                        min=1)
    model: str = option("tiny", "model size to train from scratch (micro, tiny, tiny-f4, small, sd15) or a diffusers "
                                "Stable Diffusion folder / hub id to fine-tune", metavar="SIZE_OR_PATH")
    train_steps: Optional[int] = option(None, "optimizer steps of each training run (default: pathup train's)",
                                        metavar="N", min=1)
    train_config: Optional[str] = option(None, "YAML with further 'pathup train' options for all runs (e.g. "
                                               "batch_size, lr, vae_steps)", metavar="YAML")
    train_options: dict = option(help="further TrainConfig options (Python API / --config YAML)", default_factory=dict,
                                 cli=False)
    compare: list[str] = option(help="Table 1: extra models NAME=PATH (diffusers folder or PathUp run)",
                                default_factory=list, metavar="NAME=PATH")
    upscaler: list[str] = option(help="Table 3: diffusers upscaler folders (StableDiffusionUpscalePipeline, "
                                      "LDMSuperResolutionPipeline)", default_factory=list, metavar="PATH")
    classes: list[str] = option(help="classes to generate (default: all of the dataset's)", default_factory=list,
                                metavar="CLASS")
    images_per_class: int = option(10, "overviews per class and seed", min=1)
    split: str = option("all", "split of the real tiles (train, val, test, all)")
    steps: int = option(50, "sampling steps (overview and upscaling)", min=1)
    guidance: float = option(7.5, "classifier-free guidance scale", min=0, max=100)
    scheduler: str = option("ddim", "sampler (ddim, ddpm, dpm++, dpm++-karras, euler, pndm, unipc)")
    strength: float = option(0.8, "upscaling: share of the schedule re-run", min=0, min_exclusive=True, max=1)
    latent_patch: int = option(0, "upscaling: latent patch size (0: the UNet's sample size)", min=0)
    latent_overlap: Optional[int] = option(None, "upscaling: latent overlap (default: half the patch)", min=0)
    upscale_factor: float = option(0.0, "upscaled size = tile size x factor (0: overview / patch region of "
                                        "dataset.json, else 4)", min=0)
    upscaler_steps: int = option(50, "inference steps of the --upscaler pipelines", min=1)
    noise_level: int = option(20, "noise level of a StableDiffusionUpscalePipeline", min=0)
    features: str = option("inception", "feature extractor of the metrics (see pathup evaluate --features)")
    features_weights: Optional[str] = evaluate_option("features_weights")
    crops_per_image: int = evaluate_option("crops_per_image")
    num_samples: int = evaluate_option("num_samples")
    kid_subsets: int = evaluate_option("kid_subsets")
    kid_subset_size: int = evaluate_option("kid_subset_size")
    batch_size: int = evaluate_option("batch_size")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    progress: bool = option(True, "show progress bars")


def parse_compare(items: list[str]) -> dict[str, str]:
    """``["NAME=PATH", ...]`` -> ``{NAME: PATH}``; names must be unique and not ``PathUp``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise OptionError("compare", f"{item!r}: expected NAME=PATH")
        if name == ARMS["pathup"][0] or name in out or "/" in name:
            raise OptionError("compare", f"{item!r}: NAME must be unique, without '/', and not 'PathUp'")
        if not Path(path).exists():
            raise OptionError("compare", f"{name}: model folder not found: {path}")
        out[name] = path
    return out


def check_upscaler(path: str | Path) -> str:
    """The pipeline class of a diffusers upscaler folder; PathUpError unless it is one we can run."""
    p = Path(path)
    index = p / "model_index.json"
    if not p.is_dir() or not index.is_file():
        raise OptionError("upscaler", f"{p}: not a diffusers pipeline folder (no model_index.json)")
    try:
        cls = json.loads(index.read_text()).get("_class_name")
    except json.JSONDecodeError as err:
        raise OptionError("upscaler", f"{index}: not valid JSON ({err})") from None
    if cls not in UPSCALER_CLASSES:
        raise OptionError("upscaler", f"{p}: pipeline {cls!r} is not an upscaler; allowed: {', '.join(UPSCALER_CLASSES)}")
    return cls


def upscaler_names(paths: list[str]) -> dict[str, str]:
    """``{condition name: path}`` (the folder name); names must be unique."""
    out: dict[str, str] = {}
    for p in paths:
        check_upscaler(p)
        name = Path(p).resolve().name
        if name in out or name in ("PathUp", "bicubic"):
            raise OptionError("upscaler", f"{p}: the folder name {name!r} is already a Table 3 condition; rename it")
        out[name] = p
    return out


def slug(name: str) -> str:
    """A class, model or upscaler name as a file-name part: ``pathup.data.generated.class_dirname``
    (injective: ``a b`` and ``a_b`` never share a file)."""
    from pathup.data.generated import class_dirname

    return class_dirname(name)


def dataset_info(cfg: ExperimentConfig) -> dict[str, Any]:
    """``dataset.json`` plus the manifest rows, checked against what the tables need."""
    from pathup.data.manifest import SPLITS, read_dataset_info, read_manifest

    root = Path(cfg.data)
    if not (root / "manifest.csv").is_file() or not (root / "dataset.json").is_file():
        raise OptionError("data", f"{root}: not a prepared dataset (needs manifest.csv and dataset.json from "
                          "'pathup prepare')")
    info = read_dataset_info(root)  # one line for a corrupt dataset.json
    if cfg.split not in (*SPLITS, "all"):
        raise OptionError("split", f"{cfg.split!r}: allowed: {', '.join(SPLITS)}, all")
    rows = read_manifest(root)
    levels_needed = {"patch"} | ({"overview"} if {1, 2} & set(cfg.tables) else set())
    for lv in sorted(levels_needed):
        n = sum(1 for r in rows if r["level"] == lv and cfg.split in ("all", r["split"]))
        if n < 4:
            raise OptionError("data", f"{root}: {n} {lv} tile(s) in split {cfg.split}; the metrics need at least 4")
    unknown = [c for c in cfg.classes if c not in info["classes"]]
    if unknown:
        raise OptionError("classes", f"{', '.join(unknown)}: not in the dataset; allowed: {', '.join(info['classes'])}")
    return info


def tile_px(info: dict[str, Any]) -> int:
    """The dataset's tile size in pixels (``dataset.json``: ``tile_px``, or ``tile_size`` in older datasets)."""
    return int(info["tile_px"] if "tile_px" in info else info["tile_size"])


def upscale_size(cfg: ExperimentConfig, info: dict[str, Any]) -> int:
    """``tile size x factor``, ``factor`` = overview region / patch region of ``dataset.json`` (4 in the paper:
    2048 / 512) unless ``cfg.upscale_factor`` is set."""
    factor = cfg.upscale_factor
    if not factor:
        regions = info.get("level_regions") or {}
        try:
            factor = regions["overview"]["size"] / regions["patch"]["size"]
        except (KeyError, TypeError, ZeroDivisionError):
            factor = 4.0
    tile = tile_px(info)
    size = int(round(tile * factor))
    if size < tile:
        raise OptionError("upscale_factor", f"{factor}: the upscaled size {size} px is below the tile size "
                          f"{tile} px (use a factor >= 1)")
    return size


def validate(cfg: ExperimentConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Check every option that can be checked before any work starts (PathUpError, one line); returns the
    parsed ``compare`` and ``upscaler`` options (``parse_compare``, ``upscaler_names``)."""
    from pathup.config import validate as validate_fields
    from pathup.io import check_apart

    validate_fields(cfg)  # finite floats and the fields' ranges
    check_apart(cfg.data, cfg.out, "--data")
    bad = [t for t in cfg.tables if t not in TABLES]
    if bad or not cfg.tables:
        raise OptionError("tables", f"{' '.join(map(str, cfg.tables)) or '(none)'}: allowed: 1 2 3 4")
    from pathup.model.ldm import make_scheduler

    make_scheduler(cfg.scheduler)  # raises with the allowed names
    return parse_compare(cfg.compare), upscaler_names(cfg.upscaler)


def _identity(cfg: ExperimentConfig) -> dict[str, Any]:
    from pathup.config import to_dict

    return {k: v for k, v in to_dict(cfg).items() if k not in ADDITIVE}


def check_out(cfg: ExperimentConfig) -> None:
    """Refuse to continue an experiment folder made with other (non-additive) options."""
    from pathup.config import load_yaml

    saved = Path(cfg.out) / "experiment.yaml"
    if not saved.is_file():
        return
    old = load_yaml(saved)
    new = _identity(cfg)
    diff = [k for k in new if k in old and old[k] != new[k]]
    if diff:
        k = diff[0]
        raise PathUpError(f"{cfg.out} holds an experiment with --{k.replace('_', '-')} {old[k]!r} (now {new[k]!r}); "
                          f"use the same options (only {', '.join(ADDITIVE)} may change) or another --out")
