"""Generate a class's large images into a folder, or upscale one image to a file (issue 4 item 7).

The library side of ``pathup generate`` and ``pathup upscale``; the CLI only parses arguments, picks
the process share under ``accelerate launch`` and prints. Layout (other stages rely on it)::

    OUT/<class>/<class>_s<seed>.png          (or .tiff from 8192 px / format="tiff")
    OUT/<class>/<class>_s<seed>.json         settings: prompts, seed, model, every option
    OUT/<class>/overview/<class>_s<seed>.png (+ .json)
    OUT/<class>/generate_config.yaml         the resolved options of the last run

``upscale_to_file`` writes ``OUT/<image stem>_<class>_s<seed>.png`` (or .tiff) with its sidecar and
``OUT/upscale_config.yaml``.

Seeds ``cfg.seed .. cfg.seed + cfg.num - 1`` are shared across processes (process i takes every
num_processes-th seed). An image counts as done when it and its sidecar exist (both are written
atomically, the sidecar last), so a rerun skips it and an interrupted run resumes where it stopped.

Used like::

    from pathup.sample import PathUpPipeline, SampleConfig, generate_to_folder

    pipe = PathUpPipeline.from_pretrained("runs/bracs/model")
    result = generate_to_folder(pipe, "DCIS", Path("generated"), SampleConfig(num=4, size="2048"))
    result.written, result.skipped  # image paths

This module imports no torch at its top, so that ``pathup --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pathup.errors import PathUpError
from pathup.io import safe_name
from pathup.sample.config import SampleConfig, parse_size, validate

if TYPE_CHECKING:
    from pathup.sample.pipeline import PathUpPipeline

GENERATE_CONFIG = "generate_config.yaml"
UPSCALE_CONFIG = "upscale_config.yaml"


@dataclass
class GenerateResult:
    """What a call wrote and what it found already done (paths of the large images)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def seeds_for_process(seed: int, num: int, index: int, count: int) -> list[int]:
    """The seeds of one process: every ``count``-th of seed .. seed+num-1, starting at ``index``."""
    return [seed + i for i in range(num)][index::count]


def output_format(cfg: SampleConfig) -> str:
    """``png`` or ``tiff`` for ``cfg`` (TIFF when asked for or from 8192 px on)."""
    from pathup.sample.writers import choose_format

    return choose_format(cfg.format, parse_size(cfg.size))


def class_folder(out: Path, class_name: str) -> Path:
    """``OUT/<class>``, the folder of one class's images."""
    return Path(out) / safe_name(class_name)


def image_paths(out: Path, class_name: str, seed: int, fmt: str) -> tuple[Path, Path]:
    """(large image, overview) paths of one seed: ``OUT/<class>/<class>_s<seed>.<ext>`` and
    ``OUT/<class>/overview/<class>_s<seed>.png``."""
    from pathup.sample.writers import suffix

    name = safe_name(class_name)
    folder = Path(out) / name
    return folder / f"{name}_s{seed}{suffix(fmt)}", folder / "overview" / f"{name}_s{seed}.png"


def is_done(path: Path) -> bool:
    """An image counts as written when it and its JSON sidecar both exist."""
    from pathup.sample.writers import sidecar_path

    return Path(path).is_file() and sidecar_path(path).is_file()


def _check_out(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PathUpError(f"--out {out} exists and is not a folder")
    return out


def pending_seeds(out: Path, class_name: str, cfg: SampleConfig, *, process_index: int = 0,
                  num_processes: int = 1) -> tuple[list[int], list[int]]:
    """(seeds still to generate, seeds already done) of one process, without loading a model.

    Raises:
        PathUpError: an invalid option in ``cfg``, or ``out`` is a file.
    """
    validate(cfg)
    fmt = output_format(cfg)
    out = _check_out(out)
    seeds = seeds_for_process(cfg.seed, cfg.num, process_index, num_processes)
    done = [s for s in seeds if is_done(image_paths(out, class_name, s, fmt)[0])]
    return [s for s in seeds if s not in done], done


def generate_to_folder(pipe: "PathUpPipeline", class_name: str, out: Path, cfg: SampleConfig, *,
                       process_index: int = 0, num_processes: int = 1,
                       progress: bool = True) -> GenerateResult:
    """Generate this process's share of ``cfg.num`` images of a class into ``out`` (the layout above).

    Each image runs SPEC.md section 5: the overview at the model's training resolution (step 1),
    then patch-wise timestep tracking (PathUp Algorithm 1, Eq. 6 weights) to ``cfg.size``. Both are
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

    Returns:
        The large images written by this call and those found already done.

    Raises:
        PathUpError: an invalid option, an unknown class, or ``out`` is a file.
    """
    from tqdm.auto import tqdm

    from pathup.config import save_config
    from pathup.sample.writers import save_image, save_png

    out = Path(out)
    todo, done = pending_seeds(out, class_name, cfg, process_index=process_index, num_processes=num_processes)
    fmt = output_format(cfg)
    size = parse_size(cfg.size)
    result = GenerateResult(skipped=[image_paths(out, class_name, s, fmt)[0] for s in done])
    prompts = pipe.prompts_for(class_name)  # unknown class -> PathUpError naming the known ones
    if not todo:
        return result
    if process_index == 0:
        save_config(cfg, class_folder(out, class_name) / GENERATE_CONFIG)
    for seed in tqdm(todo, desc=f"{class_name}", unit="image", disable=not progress):
        image_path, overview_path = image_paths(out, class_name, seed, fmt)
        overview = pipe.overview(prompt=prompts["overview"], seed=seed, steps=cfg.steps, guidance=cfg.guidance,
                                 scheduler=cfg.scheduler, negative_prompt=cfg.negative_prompt)
        settings = pipe.settings(class_name, cfg, seed=seed, prompts=prompts, source="generated")
        save_png(overview, overview_path, {**settings, "level": "overview"})
        image = _upscale(pipe, overview, prompts["patch"], cfg, seed)
        save_image(image, image_path, {**settings, "level": "upscaled", "overview": str(overview_path)})
        result.written.append(image_path)
    return result


def upscale_path(image_path: str | Path, class_name: str, out: Path, cfg: SampleConfig) -> Path:
    """``OUT/<image stem>_<class>_s<seed>.png`` (or .tiff), where ``upscale_to_file`` writes.

    Raises:
        PathUpError: an invalid option in ``cfg``.
    """
    validate(cfg)
    from pathup.sample.writers import suffix

    fmt = output_format(cfg)
    return Path(out) / f"{Path(image_path).stem}_{safe_name(class_name)}_s{cfg.seed}{suffix(fmt)}"


def upscale_to_file(pipe: "PathUpPipeline", image_path: str | Path, class_name: str, out: Path,
                    cfg: SampleConfig, *, image: Any = None) -> GenerateResult:
    """Upscale a user's own low-resolution overview with the class's patch prompt (SPEC.md section 5
    from step 1 on; PathUp Algorithm 1) and save it with its settings into ``out``.

    Args:
        pipe: the pipeline (model already on its device).
        image_path: the overview's file; names the output and is recorded in the settings.
        class_name: class whose patch prompt conditions the patches.
        out: the output folder (created as needed); ``OUT/upscale_config.yaml`` gets ``cfg``.
        cfg: the resolved options (``cfg.seed`` seeds the noise; ``cfg.num`` is ignored).
        image: the overview already loaded (RGB PIL); None loads ``image_path``.

    Returns:
        ``written == [target]``, or ``skipped == [target]`` when it and its sidecar already exist.

    Raises:
        PathUpError: a missing or corrupt image, an invalid option, an unknown class.
    """
    from pathup.config import save_config
    from pathup.io import load_rgb
    from pathup.sample.writers import save_image

    target = upscale_path(image_path, class_name, out, cfg)
    if image is None:
        image = load_rgb(image_path)  # PathUpError on a missing or corrupt file
    prompts = pipe.prompts_for(class_name)
    if is_done(target):
        return GenerateResult(skipped=[target])
    save_config(cfg, Path(out) / UPSCALE_CONFIG)
    result = _upscale(pipe, image, prompts["patch"], cfg, cfg.seed)
    settings = pipe.settings(class_name, cfg, seed=cfg.seed, prompts={"patch": prompts["patch"]},
                             source=str(Path(image_path).resolve()))
    save_image(result, target, {**settings, "level": "upscaled", "overview": str(image_path)})
    return GenerateResult(written=[target])


def _upscale(pipe: "PathUpPipeline", overview: Any, prompt: str, cfg: SampleConfig, seed: int) -> Any:
    """``pipe.upscale`` with every option from ``cfg``; uint8 (H, W, 3)."""
    return pipe.upscale(overview, prompt=prompt, size=parse_size(cfg.size), seed=seed, steps=cfg.steps,
                        guidance=cfg.guidance, scheduler=cfg.scheduler, strength=cfg.strength,
                        patch_size=cfg.patch_size, overlap=cfg.overlap, weight_map=cfg.weight_map,
                        patch_batch=cfg.patch_batch, step_mode=cfg.step_mode, vae_tile=cfg.vae_tile,
                        vae_overlap=cfg.vae_overlap, negative_prompt=cfg.negative_prompt, output_type="np")
