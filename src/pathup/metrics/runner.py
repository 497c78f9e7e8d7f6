"""``pathup experiment run``: train, generate, upscale and evaluate the PathUp paper's Tables 1-4 on a dataset.

The runner produces the evaluate results that ``pathup.metrics.experiment.build_report`` turns into
Markdown tables (mean +- std over seeds) and plots. Everything is written under ``OUT``::

    OUT/experiment.yaml                      the resolved ExperimentConfig (a rerun must agree with it)
    OUT/runs/<arm>/                          training runs (pathup.train): pathup, no-fel, no-pa
    OUT/images/<arm>/seed<s>/overview/       overviews at the model resolution, <class>_<i>.png + sidecar .json
    OUT/images/<arm>/seed<s>/pyramid/        PathUp upscaling (Eq. 6 pyramid weight map) of those overviews
    OUT/images/pathup/seed<s>/uniform/       the same overviews and noise with uniform weights (Table 4)
    OUT/images/pathup/seed<s>/bicubic/       PIL bicubic resizes of the overviews (Table 3)
    OUT/images/pathup/seed<s>/upscaler-<n>/  a diffusers upscaler checkpoint (Table 3)
    OUT/results/table<N>/<condition>/<level>_seed<s>.json   one ``evaluate`` result per seed
    OUT/tables.md, OUT/table<N>.png          the report

Tables (SPEC.md section 6; PathUp paper Tables 1-4):

* Table 1 (model comparison): ``PathUp`` plus every ``--compare NAME=PATH`` model (a diffusers Stable
  Diffusion folder or a PathUp run), overview level and patch level (each model's overviews upscaled by
  PathUp with the same model).
* Table 2 (ablation): ``PathUp`` (full), ``w-o FEL`` (``fel_beta=0``), ``w-o PA`` (``patho_align=False``),
  three training runs with the same options otherwise; overview and patch level.
* Table 3 (upscaling, patch level): PathUp upscaling vs ``bicubic`` vs each ``--upscaler PATH``
  (``StableDiffusionUpscalePipeline`` or ``LDMSuperResolutionPipeline`` folders), all from the same
  overviews; an upscaler whose output size differs from the target is resized bicubically to it.
* Table 4 (weight map, patch level + seam score): ``weight map on`` (pyramid) vs ``weight map off``
  (uniform), same overviews, same noise.

Sizes follow the dataset: overviews are evaluated at the dataset's ``tile_size`` against its overview tiles;
upscaled images are ``tile_size x factor`` pixels, ``factor`` = overview region / patch region from
``dataset.json`` (4 in the paper: 2048 / 512), so that a ``tile_size`` crop covers the same tissue as a
real patch tile; patch-level metrics use random ``tile_size`` crops against the patch tiles. Seed ``s``
generates overview ``i`` of each class with seed ``s * images_per_class + i`` (and upscales it with the
same noise seed) and is the evaluation seed.

Resumable: finished training runs, images and result files are skipped; an interrupted training run
resumes from its newest checkpoint. From-scratch models share one autoencoder: the ablation runs start from
the full run's trained first stage (``RUN/base``), so the arms differ only in the UNet stage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pathup.errors import PathUpError
from pathup.io import open_image

log = logging.getLogger(__name__)

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
TRAIN_FIXED = ("dataset", "out", "resume", "model", "max_steps")


def _f(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - dataclass field with help text
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ExperimentConfig:
    """Options of ``pathup experiment run`` (the single source of their defaults)."""

    data: str = field(metadata={"help": "prepared dataset folder (manifest.csv + dataset.json): training tiles "
                                        "and the real images", "metavar": "DATASET"})
    out: str = field(metadata={"help": "experiment folder (runs, images, results, tables.md, plots)",
                               "metavar": "OUT"})
    tables: list[int] = _f([2, 3, 4], "tables to produce: 1 (models), 2 (ablation), 3 (upscaling), 4 (weight map)",
                           metavar="N")
    seeds: int = _f(5, "seeds (image sets and evaluation seeds 0 .. N-1); tables show mean +- std over them", min=1)
    model: str = _f("tiny", "model size to train from scratch (micro, tiny, small, sd15) or a diffusers Stable "
                            "Diffusion folder / hub id to fine-tune", metavar="SIZE_OR_PATH")
    train_steps: Optional[int] = _f(None, "optimizer steps of each training run (default: pathup train's)",
                                    metavar="N", min=1)
    train_config: Optional[str] = _f(None, "YAML with further 'pathup train' options for all runs (e.g. "
                                           "batch_size, lr, vae_steps)", metavar="YAML")
    train_options: dict = _f({}, "further TrainConfig options (Python API / --config YAML)", cli=False)
    compare: list[str] = _f([], "Table 1: extra models NAME=PATH (diffusers folder or PathUp run)",
                            metavar="NAME=PATH")
    upscaler: list[str] = _f([], "Table 3: diffusers upscaler folders (StableDiffusionUpscalePipeline, "
                                 "LDMSuperResolutionPipeline)", metavar="PATH")
    classes: list[str] = _f([], "classes to generate (default: all of the dataset's)", metavar="CLASS")
    images_per_class: int = _f(10, "overviews per class and seed", min=1)
    split: str = _f("all", "split of the real tiles (train, val, test, all)")
    steps: int = _f(50, "sampling steps (overview and upscaling)", min=1)
    guidance: float = _f(7.5, "classifier-free guidance scale", min=0, max=100)
    scheduler: str = _f("ddim", "sampler (ddim, dpm++, euler, pndm, ddpm)")
    strength: float = _f(0.8, "upscaling: share of the schedule re-run", min=0, min_exclusive=True, max=1)
    latent_patch: int = _f(0, "upscaling: latent patch size (0: the UNet's sample size)", min=0)
    latent_overlap: Optional[int] = _f(None, "upscaling: latent overlap (default: half the patch)", min=0)
    upscale_factor: float = _f(0.0, "upscaled size = tile_size x factor (0: overview / patch region of "
                                    "dataset.json, else 4)", min=0)
    upscaler_steps: int = _f(50, "inference steps of the --upscaler pipelines", min=1)
    noise_level: int = _f(20, "noise level of a StableDiffusionUpscalePipeline", min=0)
    features: str = _f("inception", "feature extractor of the metrics (see pathup evaluate --features)")
    features_weights: Optional[str] = _f(None, "local weights for the extractor", metavar="PATH")
    crops_per_image: int = _f(1, "patch level: random crops per upscaled image", min=1)
    num_samples: int = _f(10000, "at most this many samples per set and seed (0 = all)", min=0)
    kid_subsets: int = _f(100, "KID: number of random subsets", min=1)
    kid_subset_size: int = _f(1000, "KID: subset size (shrinks to the smaller set)", min=2)
    batch_size: int = _f(32, "images per feature-extraction batch", min=1)
    device: str = _f("auto", "auto, cpu, cuda, cuda:N")
    progress: bool = _f(True, "show progress bars")


# --------------------------------------------------------------------------------------------- checks
def parse_compare(items: list[str]) -> dict[str, str]:
    """``["NAME=PATH", ...]`` -> ``{NAME: PATH}``; names must be unique and not ``PathUp``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise PathUpError(f"--compare {item!r}: expected NAME=PATH")
        if name == ARMS["pathup"][0] or name in out or "/" in name:
            raise PathUpError(f"--compare {item!r}: NAME must be unique, without '/', and not 'PathUp'")
        if not Path(path).exists():
            raise PathUpError(f"--compare {name}: model folder not found: {path}")
        out[name] = path
    return out


def check_upscaler(path: str | Path) -> str:
    """The pipeline class of a diffusers upscaler folder; PathUpError unless it is one we can run."""
    p = Path(path)
    index = p / "model_index.json"
    if not p.is_dir() or not index.is_file():
        raise PathUpError(f"--upscaler {p}: not a diffusers pipeline folder (no model_index.json)")
    try:
        cls = json.loads(index.read_text()).get("_class_name")
    except json.JSONDecodeError as err:
        raise PathUpError(f"--upscaler {index}: not valid JSON ({err})") from None
    if cls not in UPSCALER_CLASSES:
        raise PathUpError(f"--upscaler {p}: pipeline {cls!r} is not an upscaler; allowed: {', '.join(UPSCALER_CLASSES)}")
    return cls


def upscaler_names(paths: list[str]) -> dict[str, str]:
    """``{condition name: path}`` (the folder name); names must be unique."""
    out: dict[str, str] = {}
    for p in paths:
        check_upscaler(p)
        name = Path(p).resolve().name
        if name in out or name in ("PathUp", "bicubic"):
            raise PathUpError(f"--upscaler {p}: the folder name {name!r} is already a Table 3 condition; rename it")
        out[name] = p
    return out


def _slug(name: str) -> str:
    """A class, model or upscaler name as a file-name part: ``pathup.sample.generate.class_dirname``
    (injective: ``a b`` and ``a_b`` never share a file)."""
    from pathup.data.generated import class_dirname

    return class_dirname(name)


def dataset_info(cfg: ExperimentConfig) -> dict[str, Any]:
    """``dataset.json`` plus the manifest rows, checked against what the tables need."""
    from pathup.data.manifest import SPLITS, read_manifest

    root = Path(cfg.data)
    if not (root / "manifest.csv").is_file() or not (root / "dataset.json").is_file():
        raise PathUpError(f"--data {root}: not a prepared dataset (needs manifest.csv and dataset.json from "
                          "'pathup prepare')")
    info = json.loads((root / "dataset.json").read_text())
    if cfg.split not in (*SPLITS, "all"):
        raise PathUpError(f"--split {cfg.split!r}: allowed: {', '.join(SPLITS)}, all")
    rows = read_manifest(root)
    levels_needed = {"patch"} | ({"overview"} if {1, 2} & set(cfg.tables) else set())
    for lv in sorted(levels_needed):
        n = sum(1 for r in rows if r["level"] == lv and cfg.split in ("all", r["split"]))
        if n < 4:
            raise PathUpError(f"--data {root}: {n} {lv} tile(s) in split {cfg.split}; the metrics need at least 4")
    unknown = [c for c in cfg.classes if c not in info["classes"]]
    if unknown:
        raise PathUpError(f"--classes {', '.join(unknown)}: not in the dataset; allowed: {', '.join(info['classes'])}")
    return info


def upscale_size(cfg: ExperimentConfig, info: dict[str, Any]) -> int:
    """``tile_size x factor`` (see the module docstring)."""
    factor = cfg.upscale_factor
    if not factor:
        regions = info.get("level_regions") or {}
        try:
            factor = regions["overview"]["size"] / regions["patch"]["size"]
        except (KeyError, TypeError, ZeroDivisionError):
            factor = 4.0
    size = int(round(info["tile_size"] * factor))
    if size < info["tile_size"]:
        raise PathUpError(f"--upscale-factor {factor}: the upscaled size {size} px is below the tile size "
                          f"{info['tile_size']} px (use a factor >= 1)")
    return size


def validate(cfg: ExperimentConfig) -> None:
    """Check every option that can be checked before any work starts (PathUpError, one line)."""
    from pathup.config import validate as validate_fields

    validate_fields(cfg)  # finite floats and the fields' ranges
    bad = [t for t in cfg.tables if t not in TABLES]
    if bad or not cfg.tables:
        raise PathUpError(f"--tables {' '.join(map(str, cfg.tables)) or '(none)'}: allowed: 1 2 3 4")
    for name in ("seeds", "images_per_class", "steps", "crops_per_image", "upscaler_steps", "batch_size"):
        if getattr(cfg, name) < 1:
            raise PathUpError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not 0.0 < cfg.strength <= 1.0:
        raise PathUpError(f"--strength must be in (0, 1], got {cfg.strength}")
    if cfg.train_steps is not None and cfg.train_steps < 1:
        raise PathUpError(f"--train-steps must be >= 1, got {cfg.train_steps}")
    if cfg.upscale_factor < 0:
        raise PathUpError(f"--upscale-factor must be >= 0, got {cfg.upscale_factor}")
    from pathup.model.ldm import make_scheduler

    make_scheduler(cfg.scheduler)  # raises with the allowed names
    parse_compare(cfg.compare)
    upscaler_names(cfg.upscaler)


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


# --------------------------------------------------------------------------------------------- training
def train_options(cfg: ExperimentConfig) -> dict[str, Any]:
    """The user's TrainConfig options: ``--train-config`` YAML, then ``train_options``."""
    from pathup.config import load_yaml

    opts = load_yaml(cfg.train_config) if cfg.train_config else {}
    opts.update(cfg.train_options)
    fixed = sorted(set(opts) & set(TRAIN_FIXED))
    if fixed:
        raise PathUpError(f"train option(s) {', '.join(fixed)} are set by the experiment (use --model, "
                          "--train-steps); remove them from --train-config")
    clash = sorted(set(opts) & {"fel_beta", "patho_align"})
    if clash:
        raise PathUpError(f"train option(s) {', '.join(clash)} are what Table 2 varies; leave them at their defaults")
    return opts


def train_arm(cfg: ExperimentConfig, arm: str, opts: dict[str, Any]) -> tuple[Path, bool]:
    """Train one arm of Table 2 (or skip it when finished); return (model folder, trained now)."""
    from pathup.config import from_dict, save_config
    from pathup.train import TrainConfig, train

    run = Path(cfg.out) / "runs" / arm
    done = run / "experiment-done.json"
    model = run / "model"
    if done.is_file() and (model / "model_index.json").is_file():
        return model, False
    data = {**opts, **ARMS[arm][1], "dataset": cfg.data, "out": str(run), "model": cfg.model, "resume": True}
    if cfg.train_steps is not None:
        data["max_steps"] = cfg.train_steps
    if cfg.device == "cpu":
        data["cpu"] = True
    tcfg = from_dict(TrainConfig, data, source="--train-config")
    full_base = Path(cfg.out) / "runs" / "pathup" / "base"
    if arm != "pathup" and tcfg.from_scratch and (full_base / "model_index.json").is_file() \
            and not (run / "base").exists():
        from pathup.io import atomic_dir

        with atomic_dir(run / "base") as tmp:  # share the full run's trained autoencoder (first stage)
            shutil.copytree(full_base, tmp, dirs_exist_ok=True)
    log.info("training %s (%s) in %s", arm, ARMS[arm][0], run)
    model = train(tcfg)
    from pathup.io import atomic_write_text

    save_config(tcfg, run / "experiment-train.yaml")
    atomic_write_text(done, json.dumps({"arm": arm, "condition": ARMS[arm][0]}) + "\n")
    return Path(model), True


# --------------------------------------------------------------------------------------------- images
@dataclass
class _Counts:
    written: int = 0
    skipped: int = 0


def _seed_of(cfg: ExperimentConfig, seed: int, i: int) -> int:
    return seed * cfg.images_per_class + i


def _overview_settings(pipe: Any, cls: str, seed: int, cfg: ExperimentConfig) -> dict[str, Any]:
    from pathup import __version__

    return {"class": cls, "prompt": pipe.prompts_for(cls)["overview"], "seed": seed, "model": pipe.model_name,
            "kind": "overview", "options": {"steps": cfg.steps, "guidance": cfg.guidance,
                                            "scheduler": cfg.scheduler}, "pathup_version": __version__}


def latent_grid(cfg: ExperimentConfig, pipe: Any) -> tuple[int, int]:
    """(latent patch, latent overlap) for PathUp upscaling with this model."""
    p = cfg.latent_patch or int(pipe.ldm.unet.config.sample_size)
    o = p // 2 if cfg.latent_overlap is None else cfg.latent_overlap
    if not 0 <= o < p:
        raise PathUpError(f"--latent-overlap {o} must be in [0, --latent-patch {p})")
    return p, o


def generate_arm(cfg: ExperimentConfig, model: str | Path, key: str, classes: list[str], size: int,
                 weight_maps: tuple[str, ...], counts: _Counts) -> None:
    """Overviews of every class and seed, each upscaled by PathUp with the given weight maps."""
    from tqdm.auto import tqdm

    from pathup.sample import PathUpPipeline
    from pathup.sample.config import SampleConfig
    from pathup.sample.writers import save_png

    root = Path(cfg.out) / "images" / key
    todo = []
    for s in range(cfg.seeds):
        for cls in classes:
            for i in range(cfg.images_per_class):
                name = f"{_slug(cls)}_{i}.png"
                paths = [root / f"seed{s}" / "overview" / name] + [root / f"seed{s}" / wm / name for wm in weight_maps]
                if all(p.is_file() for p in paths):
                    counts.skipped += len(paths)
                else:
                    todo.append((s, cls, i, paths))
    if not todo:
        return
    pipe = PathUpPipeline.from_pretrained(str(model), device=cfg.device, progress=False)
    patch, overlap = latent_grid(cfg, pipe)
    for s, cls, i, paths in tqdm(todo, desc=f"images {key}", unit="class-seed", disable=not cfg.progress):
        seed = _seed_of(cfg, s, i)
        ov_path = paths[0]
        if ov_path.is_file():
            overview = open_image(ov_path)  # pixel limit checked from the header; one-line error if unreadable
            counts.skipped += 1
        else:
            overview = pipe.overview(cls, seed=seed, steps=cfg.steps, guidance=cfg.guidance, scheduler=cfg.scheduler)
            save_png(overview, ov_path, _overview_settings(pipe, cls, seed, cfg))
            counts.written += 1
        for wm, path in zip(weight_maps, paths[1:]):
            if path.is_file():
                counts.skipped += 1
                continue
            img = pipe.upscale(overview, cls, size=size, seed=seed, steps=cfg.steps, guidance=cfg.guidance,
                               scheduler=cfg.scheduler, strength=cfg.strength, patch_size=patch, overlap=overlap,
                               weight_map=wm)
            sc = SampleConfig(steps=cfg.steps, guidance=cfg.guidance, scheduler=cfg.scheduler, seed=seed,
                              size=str(size), patch_size=patch, overlap=overlap, strength=cfg.strength,
                              weight_map=wm)
            settings = pipe.settings(cls, sc, seed=seed, prompts=pipe.prompts_for(cls), source=str(ov_path))
            settings["vae_scale_factor"] = pipe.ldm.vae_scale_factor
            save_png(img, path, settings)
            counts.written += 1


def bicubic_images(cfg: ExperimentConfig, classes: list[str], size: int, counts: _Counts) -> None:
    """PIL bicubic resizes of the full model's overviews (Table 3 baseline)."""
    from PIL import Image

    from pathup.sample.writers import save_png

    root = Path(cfg.out) / "images" / "pathup"
    for s in range(cfg.seeds):
        for cls in classes:
            for i in range(cfg.images_per_class):
                name = f"{_slug(cls)}_{i}.png"
                out = root / f"seed{s}" / "bicubic" / name
                if out.is_file():
                    counts.skipped += 1
                    continue
                src = root / f"seed{s}" / "overview" / name
                img = open_image(src).resize((size, size), Image.BICUBIC)
                save_png(img, out, {"class": cls, "seed": _seed_of(cfg, s, i), "kind": "bicubic",
                                    "overview_source": str(src), "size": [size, size]})
                counts.written += 1


def load_upscaler(path: str, device: str) -> Any:
    """A diffusers upscaler pipeline from a local folder (PathUpError if it cannot be loaded)."""
    from diffusers import DiffusionPipeline

    from pathup.device import resolve_device

    check_upscaler(path)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - diffusers/transformers loading errors
        raise PathUpError(f"--upscaler {path}: cannot load ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None
    dev = resolve_device(device)
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    pipe._pathup_device = dev  # noqa: SLF001 - the generator's device
    return pipe


def run_upscaler(pipe: Any, image: Any, prompt: str, seed: int, cfg: ExperimentConfig) -> Any:
    """One low-resolution overview -> its upscale (PIL), by the pipeline's own interface."""
    import torch

    g = torch.Generator(device=pipe._pathup_device).manual_seed(int(seed))  # noqa: SLF001
    if type(pipe).__name__ == "StableDiffusionUpscalePipeline":
        return pipe(prompt=prompt, image=image, num_inference_steps=cfg.upscaler_steps, guidance_scale=cfg.guidance,
                    noise_level=cfg.noise_level, generator=g).images[0]
    return pipe(image=image, num_inference_steps=cfg.upscaler_steps, generator=g).images[0]


def patch_prompts(model: str | Path, classes: list[str]) -> dict[str, str]:
    """The ``patch`` prompt of each class from a saved model's prompt table (``pathup.json``)."""
    from pathup.prompts import PromptTable, build_prompt

    meta = Path(model) / "pathup.json"
    table = None
    if meta.is_file():
        data = json.loads(meta.read_text()).get("prompts")
        table = PromptTable.from_dict(data) if data else None
    return {c: table.prompt(c, "patch") if table is not None else build_prompt(c, "patch") for c in classes}


def upscaler_images(cfg: ExperimentConfig, name: str, path: str, classes: list[str], size: int,
                    prompts: dict[str, str], counts: _Counts) -> None:
    """Table 3: a diffusers upscaler applied to the full model's overviews (resized to ``size`` if needed)."""
    from PIL import Image
    from tqdm.auto import tqdm

    from pathup.sample.writers import save_png

    root = Path(cfg.out) / "images" / "pathup"
    todo = []
    for s in range(cfg.seeds):
        for cls in classes:
            for i in range(cfg.images_per_class):
                out = root / f"seed{s}" / f"upscaler-{_slug(name)}" / f"{_slug(cls)}_{i}.png"
                if out.is_file():
                    counts.skipped += 1
                else:
                    todo.append((s, cls, i, out))
    if not todo:
        return
    pipe = load_upscaler(path, cfg.device)
    for s, cls, i, out in tqdm(todo, desc=f"upscaler {name}", unit="img", disable=not cfg.progress):
        src = root / f"seed{s}" / "overview" / out.name
        overview = open_image(src)
        seed = _seed_of(cfg, s, i)
        img = run_upscaler(pipe, overview, prompts[cls], seed, cfg)
        native = list(img.size)
        if img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        save_png(img, out, {"class": cls, "seed": seed, "kind": "upscaler", "upscaler": str(path),
                            "pipeline": type(pipe).__name__, "prompt": prompts[cls], "native_size": native,
                            "size": [size, size], "overview_source": str(src),
                            "options": {"steps": cfg.upscaler_steps, "guidance": cfg.guidance,
                                        "noise_level": cfg.noise_level}})
        counts.written += 1


# --------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class EvalJob:
    """One evaluate call: table, condition (row), level, seed, the fake folder and whether to add the seam."""

    table: int
    condition: str
    level: str
    seed: int
    fake: Path
    seam: bool = False

    def out(self, root: Path) -> Path:
        return root / "results" / f"table{self.table}" / self.condition / f"{self.level}_seed{self.seed}.json"


def plan_evaluations(cfg: ExperimentConfig, compare: dict[str, str], upscalers: dict[str, str]) -> list[EvalJob]:
    """Every (table, condition, level, seed) to evaluate, with the folder of its synthetic images."""
    img = Path(cfg.out) / "images"
    jobs: list[EvalJob] = []
    for s in range(cfg.seeds):
        def both(table: int, cond: str, key: str) -> None:
            jobs.append(EvalJob(table, cond, "overview", s, img / key / f"seed{s}" / "overview"))
            jobs.append(EvalJob(table, cond, "patch", s, img / key / f"seed{s}" / "pyramid"))

        if 1 in cfg.tables:
            both(1, ARMS["pathup"][0], "pathup")
            for name in compare:
                both(1, name, f"cmp-{_slug(name)}")
        if 2 in cfg.tables:
            for arm, (cond, _o) in ARMS.items():
                both(2, cond, arm)
        if 3 in cfg.tables:
            jobs.append(EvalJob(3, "PathUp", "patch", s, img / "pathup" / f"seed{s}" / "pyramid"))
            jobs.append(EvalJob(3, "bicubic", "patch", s, img / "pathup" / f"seed{s}" / "bicubic"))
            for name in upscalers:
                jobs.append(EvalJob(3, name, "patch", s, img / "pathup" / f"seed{s}" / f"upscaler-{_slug(name)}"))
        if 4 in cfg.tables:
            for wm, cond in WEIGHT_MAP_CONDITIONS.items():
                jobs.append(EvalJob(4, cond, "patch", s, img / "pathup" / f"seed{s}" / wm, seam=True))
    return jobs


def table_orders(cfg: ExperimentConfig, compare: dict[str, str], upscalers: dict[str, str]) -> dict[int, list[str]]:
    return {1: ["PathUp", *compare], 2: [c for c, _o in ARMS.values()], 3: ["PathUp", "bicubic", *upscalers],
            4: ["weight map off", "weight map on"]}


def evaluate_job(cfg: ExperimentConfig, job: EvalJob, tile: int) -> dict[str, Any]:
    """``pathup evaluate`` of one job against the dataset's real tiles of the job's level."""
    from pathup.metrics.evaluate import EvaluateConfig, evaluate

    ecfg = EvaluateConfig(real=cfg.data, fake=str(job.fake), out=str(job.out(Path(cfg.out))), level=job.level,
                          split=cfg.split, features=cfg.features, features_weights=cfg.features_weights,
                          overview_size=tile, patch_size=tile, crops_per_image=cfg.crops_per_image,
                          num_samples=cfg.num_samples, repeats=1, seed=job.seed, kid_subsets=cfg.kid_subsets,
                          kid_subset_size=cfg.kid_subset_size, batch_size=cfg.batch_size, device=cfg.device,
                          cache_dir=str(Path(cfg.out) / "cache" / "features"), seam=job.seam,
                          progress=cfg.progress)
    return evaluate(ecfg)


# --------------------------------------------------------------------------------------------- driver
def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Train, generate, upscale, evaluate and report the requested tables (see the module docstring).

    Returns:
        ``{"out", "trained": [arm, ...], "images_written", "images_skipped", "evaluated": [json paths],
        "evaluations_skipped", "report": build_report(...)}``.
    """
    from pathup.config import save_config
    from pathup.io import atomic_write_text
    from pathup.metrics.experiment import build_report

    cfg = dataclasses.replace(cfg, tables=sorted(set(cfg.tables)))
    validate(cfg)
    info = dataset_info(cfg)
    compare = parse_compare(cfg.compare)
    upscalers = upscaler_names(cfg.upscaler)
    opts = train_options(cfg)
    classes = list(cfg.classes) or list(info["classes"])
    if len(classes) * cfg.images_per_class < 4:
        raise PathUpError(f"{len(classes)} class(es) x --images-per-class {cfg.images_per_class} = "
                          f"{len(classes) * cfg.images_per_class} image(s) per seed; the metrics need at least 4")
    check_out(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "experiment.yaml")
    tile = int(info["tile_size"])
    size = upscale_size(cfg, info)

    arms = ["pathup"] + (["no-fel", "no-pa"] if 2 in cfg.tables else [])
    trained, models = [], {}
    for arm in arms:
        models[arm], now = train_arm(cfg, arm, opts)
        if now:
            trained.append(arm)

    counts = _Counts()
    for arm in arms:
        maps = ("pyramid", "uniform") if arm == "pathup" and 4 in cfg.tables else ("pyramid",)
        generate_arm(cfg, models[arm], arm, classes, size, maps, counts)
    if 1 in cfg.tables:
        for name, path in compare.items():
            generate_arm(cfg, path, f"cmp-{_slug(name)}", classes, size, ("pyramid",), counts)
    if 3 in cfg.tables:
        bicubic_images(cfg, classes, size, counts)
        if upscalers:
            prompts = patch_prompts(models["pathup"], classes)
            for name, path in upscalers.items():
                upscaler_images(cfg, name, path, classes, size, prompts, counts)

    evaluated, skipped = [], 0
    for job in plan_evaluations(cfg, compare, upscalers):
        path = job.out(out)
        if path.is_file():
            skipped += 1
            continue
        evaluate_job(cfg, job, tile)
        evaluated.append(str(path))
    for t, order in table_orders(cfg, compare, upscalers).items():
        if t in cfg.tables:
            atomic_write_text(out / "results" / f"table{t}" / "order.txt", "\n".join(order) + "\n")
    report = build_report(out / "results", out)
    return {"out": str(out), "trained": trained, "images_written": counts.written, "images_skipped": counts.skipped,
            "evaluated": evaluated, "evaluations_skipped": skipped, "report": report}
