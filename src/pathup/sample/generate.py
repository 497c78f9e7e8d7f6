"""Generate a class's large images into a folder, or upscale one image to a file (issue 4 item 7).

The library side of ``pathup generate`` and ``pathup upscale``; the CLI only parses arguments, picks
the process share under ``accelerate launch`` and prints. Layout (other stages rely on it)::

    OUT/<class>/<class>_s<seed>.png          (or .tiff from 8192 px / format="tiff")
    OUT/<class>/<class>_s<seed>.json         settings: class, prompts, seed, model, every option, "level": "upscaled"
    OUT/<class>/overview/<class>_s<seed>.png (+ .json with "level": "overview")
    OUT/<class>/generate_config.yaml         the resolved options of the last run
    OUT/<class>/generate_settings.json       the class, model and image-changing options of the folder

``<class>`` is ``class_dirname(class)``: the class name itself when it is a safe file name, else a
readable safe name plus a short hash of the exact name (``a b`` -> ``a_b-1c8e0f4d``, ``腫瘍`` ->
``class-3f1b...``), so two classes never share a folder. Readers map folders back to classes from the
sidecars (``read_generated``), never from the folder name.

``upscale_to_file`` writes ``OUT/<image stem>_<class>_s<seed>.png`` (or .tiff) with its sidecar and
``OUT/upscale_config.yaml``.

Seeds ``cfg.seed .. cfg.seed + cfg.num - 1`` are shared across processes (process i takes every
num_processes-th seed). An image counts as done when it and its sidecar exist (both are written
atomically, the sidecar last), so a rerun skips it and an interrupted run resumes where it stopped.
A rerun resumes only when the folder was made for the same class with the same model and the same
image-changing options (``generate_settings.json``, or the sidecars of an older folder); otherwise it
stops with a one-line error naming the folder and the first differing setting, and
``overwrite=True`` (``--overwrite``) replaces the folder's images instead. ``--seed``/``--num`` only add
images and ``--device``/``--dtype``/``--patch-batch`` are not compared.

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
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pathup.errors import PathUpError
from pathup.data.generated import (GENERATE_CONFIG, GENERATE_SETTINGS, LEVELS, UPSCALE_CONFIG,  # noqa: F401
                                   GeneratedImage, class_dirname, read_generated, read_json as _read_json)
from pathup.sample.config import SampleConfig, parse_size, validate

if TYPE_CHECKING:
    from pathup.sample.pipeline import PathUpPipeline

# options that never change an existing image: a rerun may differ in them and still resume
NEUTRAL_OPTIONS = ("seed", "num", "device", "dtype", "patch_batch", "overwrite")


MAX_OUTPUT_PIXELS = 32768 * 32768  # 1 gigapixel: a larger --size is refused before any work (issue 12 item 11)


def check_output_size(cfg: SampleConfig) -> None:
    """Refuse a ``--size`` over ``MAX_OUTPUT_PIXELS`` (width x height) in one line, before a model loads.

    The image and its latent canvas are held in memory whole (about 3 bytes per pixel for the image plus
    the latents and their weights), so 100000x100000 would need well over 30 GB before failing.
    """
    w, h = parse_size(cfg.size)
    if w * h > MAX_OUTPUT_PIXELS:
        raise PathUpError(f"--size {w}x{h} is {w * h:,} pixels, over the limit of {MAX_OUTPUT_PIXELS:,} "
                          "(32768x32768): the image and its latents are held in memory whole")


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
    """``OUT/<class>``, the folder of one class's images (``class_dirname``)."""
    return Path(out) / class_dirname(class_name)


def image_paths(out: Path, class_name: str, seed: int, fmt: str) -> tuple[Path, Path]:
    """(large image, overview) paths of one seed: ``OUT/<class>/<class>_s<seed>.<ext>`` and
    ``OUT/<class>/overview/<class>_s<seed>.png``."""
    from pathup.sample.writers import suffix

    name = class_dirname(class_name)
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


def check_out_folder(out: str | Path, option: str = "--out") -> Path:
    """Make sure ``out`` is (or can be made) a folder a file can be written in, before a model is loaded.

    Creates ``out`` when needed. Raises a one-line PathUpError when ``out`` is a file or cannot be written
    (``pathup.io.check_writable_dir``).
    """
    from pathup.io import check_writable_dir

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PathUpError(f"{option} {out} exists and is not a folder")
    check_writable_dir(out, option)
    return out


# ------------------------------------------------------------------------------ settings of a folder
def model_key(model: str | Path | None) -> str | None:
    """How a model is compared between runs: the absolute path of a local folder, else the name given."""
    if model is None:
        return None
    p = Path(str(model)).expanduser()
    return str(p.resolve()) if p.exists() else str(model)


def settings_fingerprint(class_name: str, cfg: SampleConfig, model: str | Path | None) -> dict[str, Any]:
    """What must match for a rerun to resume: class, model and every option that changes an image."""
    options = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NEUTRAL_OPTIONS}
    w, h = parse_size(cfg.size)
    options["size"] = f"{w}x{h}"
    return {"class": class_name, "model": model_key(model), "options": options}


def _fingerprint_of_sidecar(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The fingerprint recorded by an image's sidecar (folders written before generate_settings.json)."""
    options = meta.get("options")
    if not isinstance(options, dict):
        return None
    options = {k: v for k, v in options.items() if k not in NEUTRAL_OPTIONS}
    if "size" in options:
        try:
            w, h = parse_size(options["size"])
            options["size"] = f"{w}x{h}"
        except PathUpError:
            pass
    return {"class": meta.get("class"), "model": model_key(meta.get("model")), "options": options}


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
    """The first setting in which two fingerprints differ, as text (None when they match).

    A model of None on either side (unknown) is not compared; options missing on either side neither.
    """
    if old.get("class") is not None and old.get("class") != new.get("class"):
        return f"it holds class {_show(old.get('class'))}, not {_show(new.get('class'))}"
    if None not in (old.get("model"), new.get("model")) and old["model"] != new["model"]:
        return f"model {old['model']} there, {new['model']} now"
    a, b = old.get("options") or {}, new.get("options") or {}
    for key in b:
        if key in a and a[key] != b[key]:
            return f"--{key.replace('_', '-')} {_show(a[key])} there, {_show(b[key])} now"
    return None


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
    raise PathUpError(f"--out {folder} was made with other settings ({diff}); a rerun resumes only with the "
                      "same settings: use another --out, or --overwrite to replace its images")


def clear_class_folder(out: Path, class_name: str) -> None:
    """Remove ``OUT/<class>`` (its images, overviews and settings) for ``--overwrite``."""
    folder = class_folder(out, class_name)
    if folder.is_dir():
        shutil.rmtree(folder)


def pending_seeds(out: Path, class_name: str, cfg: SampleConfig, *, process_index: int = 0,
                  num_processes: int = 1, model: str | Path | None = None) -> tuple[list[int], list[int]]:
    """(seeds still to generate, seeds already done) of one process, without loading a model.

    Args:
        model: the model as given (compared with the folder's); None leaves the model uncompared.

    Raises:
        PathUpError: an invalid option in ``cfg``, ``out`` is a file, or the class folder was made with
            another model or other settings (without ``cfg.overwrite``).
    """
    validate(cfg)
    check_output_size(cfg)
    fmt = output_format(cfg)
    out = _check_out(out)
    seeds = seeds_for_process(cfg.seed, cfg.num, process_index, num_processes)
    if check_class_folder(out, class_name, cfg, model):
        return seeds, []  # --overwrite: every image is made again
    done = [s for s in seeds if is_done(image_paths(out, class_name, s, fmt)[0])]
    return [s for s in seeds if s not in done], done


def generate_to_folder(pipe: "PathUpPipeline", class_name: str, out: Path, cfg: SampleConfig, *,
                       process_index: int = 0, num_processes: int = 1, progress: bool = True,
                       barrier: Callable[[], None] | None = None) -> GenerateResult:
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
        barrier: waits for every process (``PartialState().wait_for_everyone``); with ``cfg.overwrite``
            process 0 clears a folder made with other settings and the others wait for it here.

    Returns:
        The large images written by this call and those found already done.

    Raises:
        PathUpError: an invalid option, an unknown class, ``out`` is a file, or the class folder was made
            with another model or other settings (without ``cfg.overwrite``).
    """
    from tqdm.auto import tqdm

    from pathup.config import save_config
    from pathup.sample.writers import save_image, save_png

    from pathup.io import atomic_write_text

    out = Path(out)
    validate(cfg)
    check_output_size(cfg)
    _check_out(out)
    if check_class_folder(out, class_name, cfg, pipe.model_name):  # other settings + overwrite
        if process_index == 0:
            clear_class_folder(out, class_name)
        if barrier is not None:
            barrier()
    todo, done = pending_seeds(out, class_name, cfg, process_index=process_index, num_processes=num_processes,
                               model=pipe.model_name)
    fmt = output_format(cfg)
    result = GenerateResult(skipped=[image_paths(out, class_name, s, fmt)[0] for s in done])
    prompts = pipe.prompts_for(class_name)  # unknown class -> PathUpError naming the known ones
    if not todo:
        return result
    folder = class_folder(out, class_name)
    fingerprint = settings_fingerprint(class_name, cfg, pipe.model_name)
    if stored_fingerprint(folder) != fingerprint:  # same content from every process: atomic, harmless
        atomic_write_text(folder / GENERATE_SETTINGS, json.dumps(fingerprint, indent=2, ensure_ascii=False) + "\n")
    if process_index == 0:
        save_config(cfg, folder / GENERATE_CONFIG)
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
    check_output_size(cfg)
    from pathup.sample.writers import suffix

    fmt = output_format(cfg)
    return Path(out) / f"{Path(image_path).stem}_{class_dirname(class_name)}_s{cfg.seed}{suffix(fmt)}"


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
    raise PathUpError(f"--out {target} exists with other settings ({diff}); use another --out, or --overwrite "
                      "to replace it")


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
        ``written == [target]``, or ``skipped == [target]`` when it and its sidecar already exist with
        the same settings.

    Raises:
        PathUpError: a missing or corrupt image, an invalid option, an unknown class, or ``target``
            exists with other settings (without ``cfg.overwrite``).
    """
    from pathup.config import save_config
    from pathup.io import load_rgb
    from pathup.sample.writers import save_image

    target = upscale_path(image_path, class_name, out, cfg)
    if image is None:
        image = load_rgb(image_path)  # PathUpError on a missing or corrupt file
    prompts = pipe.prompts_for(class_name)
    if check_upscale_target(target, image_path, class_name, cfg, pipe.model_name):
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
