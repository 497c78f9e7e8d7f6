"""Generate a class's large images into a folder, or upscale one image to a file (PathUp section 3.2).

The library side of ``pathup generate`` and ``pathup upscale``; the CLI only parses arguments, picks
the process share under ``accelerate launch`` and prints. Layout (other stages rely on it;
``pathup.data.generated``)::

    OUT/<class>/<class>_s<seed>.png          (or .tiff from 8192 px / format="tiff")
    OUT/<class>/<class>_s<seed>.json         settings: class, prompts, seed, model, every option, mpp, "level": "upscaled",
                                             unet_evaluations and seconds per stage (pathup.sample.costs)
    OUT/<class>/overview/<class>_s<seed>.png (+ .json with "level": "overview")
    OUT/<class>/generate_config.yaml         the resolved options of the last run
    OUT/<class>/generate_settings.json       the class, model and image-changing options of the folder

``<class>`` is ``class_dirname(class)`` (``pathup.io.unique_name``), so two classes never share a folder.
``upscale_to_file`` writes ``OUT/<image stem>_<class>_s<seed>.png`` (or .tiff) with its sidecar and
``OUT/upscale_config.yaml``.

Seeds ``cfg.seed .. cfg.seed + cfg.num - 1`` are shared across processes (process i takes every
num_processes-th seed). An image counts as done when it and its sidecar exist (both are written
atomically, the sidecar last), so a rerun skips it and an interrupted run resumes where it stopped;
what must match for a rerun to resume is ``pathup.sample.resume``'s. Images carry their microns per
pixel when the model (or ``cfg.mpp``) gives one (``pathup.sample.scale``).

``make_images`` is the loop itself (overview, upscale per weight map, each file written with its settings
and scale); ``generate_to_folder`` and ``pathup.experiments`` (the Tables 1-4 makers and the demo) use it.

Used like::

    from pathup.sample import PathUpPipeline, SampleConfig, generate_to_folder

    pipe = PathUpPipeline.from_pretrained("runs/bracs/model")
    result = generate_to_folder(pipe, "DCIS", Path("generated"), SampleConfig(num=4, size="2048"))
    result.written, result.skipped  # image paths

This module imports no torch at its top, so that ``pathup --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pathup.data.generated import (GENERATE_CONFIG, GENERATE_SETTINGS, UPSCALE_CONFIG,  # noqa: F401 - read
                                   GeneratedImage, class_dirname, read_generated)  # from here too
from pathup.errors import OptionError, PathUpError
from pathup.io import plain_text
from pathup.sample.config import SampleConfig, validate
from pathup.sample.costs import Costs
from pathup.sample.resume import (check_class_folder, check_upscale_target, class_folder, is_done,  # noqa: F401
                                  settings_fingerprint, settle_class_folder, stored_fingerprint)

if TYPE_CHECKING:
    from pathup.sample.pipeline import PathUpPipeline

MAX_OUTPUT_PIXELS = 32768 * 32768  # 1 gigapixel: a larger size is refused before any work


def check_output_size(cfg: SampleConfig) -> None:
    """Refuse a ``size`` over ``MAX_OUTPUT_PIXELS`` (width x height) in one line, before a model loads.

    The image and its latent canvas are held in memory whole (about 3 bytes per pixel for the image plus
    the latents and their weights), so 100000x100000 would need well over 30 GB before failing.
    """
    if cfg.size.pixels > MAX_OUTPUT_PIXELS:
        raise OptionError("size", f"{cfg.size.wxh()} is {cfg.size.pixels:,} pixels, over the limit of "
                                  f"{MAX_OUTPUT_PIXELS:,} (32768x32768): the image and its latents are held in "
                                  "memory whole")


@dataclass
class GenerateResult:
    """What a call wrote and what it found already done (paths of the large images), and what the images
    made by this call cost (UNet evaluations and seconds by stage, summed; ``pathup.sample.costs``)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    costs: Costs = field(default_factory=Costs)


def seeds_for_process(seed: int, num: int, index: int, count: int) -> list[int]:
    """The seeds of one process: every ``count``-th of seed .. seed+num-1, starting at ``index``."""
    return [seed + i for i in range(num)][index::count]


def output_format(cfg: SampleConfig) -> str:
    """``png`` or ``tiff`` for ``cfg`` (TIFF when asked for or from 8192 px on)."""
    from pathup.sample.writers import choose_format

    return choose_format(cfg.format, cfg.size)


def image_paths(out: Path, class_name: str, seed: int, fmt: str) -> tuple[Path, Path]:
    """(large image, overview) paths of one seed: ``OUT/<class>/<class>_s<seed>.<ext>`` and
    ``OUT/<class>/overview/<class>_s<seed>.png``."""
    from pathup.sample.writers import suffix

    name = class_dirname(class_name)
    folder = Path(out) / name
    return folder / f"{name}_s{seed}{suffix(fmt)}", folder / "overview" / f"{name}_s{seed}.png"


def _check_out(out: Path, option: str = "out") -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PathUpError(f"{option} {out} exists and is not a folder")
    return out


def check_out_folder(out: str | Path, option: str = "--out") -> Path:
    """Make sure ``out`` is (or can be made) a folder a file can be written in, before a model is loaded.

    Creates ``out`` when needed. Raises a one-line PathUpError naming ``option`` when ``out`` is a file or
    cannot be written (``pathup.io.check_writable_dir``).
    """
    from pathup.io import check_writable_dir

    out = _check_out(out, option)
    check_writable_dir(out, option)
    return out


def save_with_scale(save: Callable[..., Any], image: Any, path: Path, settings: dict[str, Any],
                    mpp: float | None) -> Any:
    """``save(image, path, settings, mpp=mpp)`` (``pathup.sample.writers``: resolution tags) with the image's
    microns per pixel also recorded in the sidecar (``"mpp"``)."""
    if mpp is not None:
        settings = {**settings, "mpp": mpp}
    return save(image, path, settings, mpp=mpp)


def pending_seeds(out: Path, class_name: str, cfg: SampleConfig, *, process_index: int = 0,
                  num_processes: int = 1, model: str | Path | None = None) -> tuple[list[int], list[int]]:
    """(seeds still to generate, seeds already done) of one process, without loading a model.

    Args:
        cfg: the options, already checked (``validate``; ``generate_to_folder`` and the CLI check them once).
        model: the model as given (compared with the folder's); None leaves the model uncompared.

    Raises:
        PathUpError: ``out`` is a file, or the class folder was made with another model or other settings
            (without ``cfg.overwrite``).
    """
    fmt = output_format(cfg)
    out = _check_out(out)
    seeds = seeds_for_process(cfg.seed, cfg.num, process_index, num_processes)
    if check_class_folder(out, class_name, cfg, model):
        return seeds, []  # overwrite: every image is made again
    done = [s for s in seeds if is_done(image_paths(out, class_name, s, fmt)[0])]
    return [s for s in seeds if s not in done], done


@dataclass
class ImageJob:
    """One seed of a class to make: where its overview goes, and the large images upscaled from that overview
    (weight map -> path; none: the overview only)."""

    class_name: str
    seed: int
    overview: Path
    images: dict[str, Path] = field(default_factory=dict)


def make_images(pipe: "PathUpPipeline", cfg: SampleConfig, jobs: list[ImageJob], *, resume: bool = False,
                progress: bool = True, desc: str = "images", extra: dict[str, Any] | None = None) -> GenerateResult:
    """Overviews and their large images for ``jobs``, each written with its settings and physical scale.

    The one generation loop: ``generate_to_folder``, the experiment's image makers and the demo use it.
    Each job's overview is sampled at the model's resolution (PathUp section 3.2), then upscaled by
    patch-wise timestep tracking (Algorithm 1) once per weight map with that job's seed; the overview
    carries the overview's microns per pixel, the large images the image's (``pathup.sample.scale``).

    Args:
        pipe: the pipeline (model already on its device).
        cfg: the options (checked here, once); ``cfg.seed`` is not used (each job has its seed).
        jobs: what to make.
        resume: skip files already done (image and sidecar), reading a done overview back instead of
            sampling it again; off, every file is made.
        progress: show the progress bar over jobs.
        desc: its label.
        extra: more settings recorded in every sidecar (e.g. ``vae_scale_factor``).

    Returns:
        Every file written (overviews and large images) and, with ``resume``, those found done.
    """
    validate(cfg)
    return _make_images(pipe, cfg, jobs, resume=resume, progress=progress, desc=desc, extra=extra)


def _make_images(pipe: "PathUpPipeline", cfg: SampleConfig, jobs: list[ImageJob], *, resume: bool, progress: bool,
                 desc: str, extra: dict[str, Any] | None) -> GenerateResult:
    """``make_images`` for a ``cfg`` already checked."""
    from tqdm.auto import tqdm

    from pathup.io import open_image
    from pathup.sample.writers import save_image, save_png

    result = GenerateResult()
    mpp, overview_mpp = pipe.image_mpp(cfg), pipe.overview_mpp(cfg)
    pipe.check_scale(cfg)
    for job in tqdm(jobs, desc=desc, unit="image", disable=not progress):
        prompts = pipe.prompts_for(job.class_name)  # unknown class -> PathUpError naming the known ones

        def settings(c: SampleConfig) -> dict[str, Any]:
            return {**pipe.settings(job.class_name, c, seed=job.seed, prompts=prompts, source="generated"),
                    **(extra or {})}

        overview_costs = Costs()
        if resume and is_done(job.overview):
            overview = open_image(job.overview)  # pixel limit from the header; one line if unreadable
            overview_costs = stored_costs(job.overview)  # what it cost when it was made
            result.skipped.append(job.overview)
        else:
            overview = pipe.overview_with(prompts["overview"], cfg, job.seed, costs=overview_costs)
            result.costs.add(overview_costs)
            save_with_scale(save_png, overview, job.overview,
                            {**settings(cfg), "level": "overview", **overview_costs.to_dict()}, overview_mpp)
            result.written.append(job.overview)
        for weight_map, path in job.images.items():
            if resume and is_done(path):
                result.skipped.append(path)
                continue
            wcfg = cfg if weight_map == cfg.weight_map else dataclasses.replace(cfg, weight_map=weight_map)
            costs = Costs()
            image = pipe.upscale_with(overview, prompts["patch"], wcfg, job.seed, costs=costs)
            result.costs.add(costs)
            costs = overview_costs.copy().add(costs)  # the image's whole cost: its overview and its upscale
            save_with_scale(save_image, image, path, {**settings(wcfg), "level": "upscaled",
                                                      "overview": str(job.overview), **costs.to_dict()}, mpp)
            result.written.append(path)
    return result


def stored_costs(image: Path) -> Costs:
    """The ``overview`` stage's costs recorded in an image's sidecar (empty for sidecars written before)."""
    from pathup.data.generated import read_json
    from pathup.sample.writers import sidecar_path

    meta = read_json(sidecar_path(image)) or {}
    costs = Costs()
    evals, secs = meta.get("unet_evaluations"), meta.get("seconds")
    if isinstance(evals, dict) and isinstance(evals.get("overview"), int):
        costs.unet_evaluations["overview"] = evals["overview"]
    if isinstance(secs, dict) and isinstance(secs.get("overview"), (int, float)):
        costs.seconds["overview"] = float(secs["overview"])
    return costs


def generate_to_folder(pipe: "PathUpPipeline", class_name: str, out: Path, cfg: SampleConfig, *,
                       process_index: int = 0, num_processes: int = 1, progress: bool = True,
                       barrier: Callable[[], None] | None = None,
                       pending: tuple[list[int], list[int]] | None = None) -> GenerateResult:
    """Generate this process's share of ``cfg.num`` images of a class into ``out`` (the layout above).

    Each image is an overview at the model's training resolution (PathUp section 3.2), then patch-wise
    timestep tracking (PathUp Algorithm 1, Eq. 6 weights) to ``cfg.size`` (``make_images``). Both are
    saved with their settings; images already written are skipped. Process 0 writes
    ``OUT/<class>/generate_config.yaml`` when there is work to do.

    Args:
        pipe: the pipeline (model already on its device).
        class_name: a class of the model's prompt table.
        out: the output folder (created as needed).
        cfg: the resolved options; ``cfg.device`` and ``cfg.dtype`` are only recorded here.
        process_index: this process's index under ``accelerate launch``.
        num_processes: the number of processes sharing the seeds.
        progress: show the progress bar over images.
        barrier: waits for every process (``PartialState().wait_for_everyone``); with ``cfg.overwrite``
            process 0 clears a folder made with other settings and the others wait for it here
            (``settle_class_folder``).
        pending: ``pending_seeds``' (todo, done) when the caller has already checked ``cfg`` and settled
            the folder (the CLI does both before it loads the model); None: both are done here.

    Returns:
        The large images written by this call and those found already done.

    Raises:
        PathUpError: an invalid option, an unknown class, ``out`` is a file, or the class folder was made
            with another model or other settings (without ``cfg.overwrite``).
    """
    from pathup.config import save_config
    from pathup.io import atomic_write_text

    out = Path(out)
    if pending is None:
        validate(cfg)
        check_output_size(cfg)
        _check_out(out)
        settle_class_folder(out, class_name, cfg, pipe.model_name, process_index=process_index, barrier=barrier)
        pending = pending_seeds(out, class_name, cfg, process_index=process_index, num_processes=num_processes,
                                model=pipe.model_name)
    todo, done = pending
    fmt = output_format(cfg)
    result = GenerateResult(skipped=[image_paths(out, class_name, s, fmt)[0] for s in done])
    pipe.prompts_for(class_name)  # unknown class -> PathUpError naming the known ones
    if not todo:
        return result
    folder = class_folder(out, class_name)
    fingerprint = settings_fingerprint(class_name, cfg, pipe.model_name)
    if stored_fingerprint(folder) != fingerprint:  # same content from every process: atomic, harmless
        atomic_write_text(folder / GENERATE_SETTINGS, json.dumps(fingerprint, indent=2, ensure_ascii=False) + "\n")
    if process_index == 0:
        save_config(cfg, folder / GENERATE_CONFIG)
    jobs = []
    for seed in todo:
        image_path, overview_path = image_paths(out, class_name, seed, fmt)
        jobs.append(ImageJob(class_name, seed, overview_path, {cfg.weight_map: image_path}))
    made = _make_images(pipe, cfg, jobs, resume=False, progress=progress, desc=plain_text(class_name), extra=None)
    result.written.extend(job.images[cfg.weight_map] for job in jobs)
    result.costs = made.costs
    return result


def upscale_path(image_path: str | Path, class_name: str, out: Path, cfg: SampleConfig) -> Path:
    """``OUT/<image stem>_<class>_s<seed>.png`` (or .tiff), where ``upscale_to_file`` writes.

    Raises:
        PathUpError: an invalid option in ``cfg``.
    """
    validate(cfg)
    check_output_size(cfg)
    return _upscale_target(image_path, class_name, out, cfg)


def _upscale_target(image_path: str | Path, class_name: str, out: Path, cfg: SampleConfig) -> Path:
    """``upscale_path`` for a ``cfg`` already checked."""
    from pathup.sample.writers import suffix

    fmt = output_format(cfg)
    return Path(out) / f"{Path(image_path).stem}_{class_dirname(class_name)}_s{cfg.seed}{suffix(fmt)}"


def upscale_to_file(pipe: "PathUpPipeline", image_path: str | Path, class_name: str, out: Path,
                    cfg: SampleConfig, *, image: Any = None, checked: bool = False) -> GenerateResult:
    """Upscale a user's own low-resolution overview with the class's patch prompt (PathUp Algorithm 1)
    and save it with its settings into ``out``.

    Args:
        pipe: the pipeline (model already on its device).
        image_path: the overview's file; names the output and is recorded in the settings.
        class_name: class whose patch prompt conditions the patches.
        out: the output folder (created as needed); ``OUT/upscale_config.yaml`` gets ``cfg``.
        cfg: the resolved options (``cfg.seed`` seeds the noise; ``cfg.num`` is ignored).
        image: the overview already loaded (RGB PIL); None loads ``image_path``.
        checked: ``cfg`` is already checked (``upscale_path``: ``validate`` and the size bound; the CLI does
            it before it loads the model); False: checked here, once.

    Returns:
        ``written == [target]``, or ``skipped == [target]`` when it and its sidecar already exist with
        the same settings.

    Raises:
        PathUpError: a missing or corrupt image, an invalid option, an unknown class, or ``target``
            exists with other settings (without ``cfg.overwrite``).
    """
    from pathup.config import save_config
    from pathup.io import load_rgb
    from pathup.sample.writers import save_image

    target = (_upscale_target if checked else upscale_path)(image_path, class_name, out, cfg)
    if image is None:
        image = load_rgb(image_path)  # PathUpError on a missing or corrupt file
    prompts = pipe.prompts_for(class_name)
    if check_upscale_target(target, image_path, class_name, cfg, pipe.model_name):
        return GenerateResult(skipped=[target])
    save_config(cfg, Path(out) / UPSCALE_CONFIG)
    costs = Costs()
    result = pipe.upscale_with(image, prompts["patch"], cfg, cfg.seed, costs=costs)
    settings = pipe.settings(class_name, cfg, seed=cfg.seed, prompts={"patch": prompts["patch"]},
                             source=str(Path(image_path).resolve()), costs=costs)
    save_with_scale(save_image, result, target, {**settings, "level": "upscaled", "overview": str(image_path)},
                    pipe.image_mpp(cfg))
    return GenerateResult(written=[target], costs=costs)
