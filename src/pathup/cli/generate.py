"""``pathup generate MODEL --class NAME --out DIR``: large images of a class (SPEC.md section 5).

Layout (other stages rely on it)::

    DIR/<class>/<class>_s<seed>.png        (or .tiff from 8192 px / --format tiff)
    DIR/<class>/<class>_s<seed>.json       settings: prompts, seed, model, every option
    DIR/<class>/overview/<class>_s<seed>.png (+ .json)
    DIR/<class>/generate_config.yaml       the resolved options of the last run

``--num N`` makes seeds seed .. seed+N-1; under ``accelerate launch`` they are shared across the
processes (process i takes every num_processes-th seed). Images already written (image and sidecar
present) are skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pathup.config import add_config_args, config_from_args
from pathup.io import safe_name
from pathup.sample.config import SampleConfig


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate", help="generate large images of a class (overview + patch-wise timestep tracking)",
        description="Generate an overview of a class at the model's training resolution, then upscale it "
                    "with patch-wise timestep tracking (PathUp Algorithm 1) to --size.")
    p.add_argument("model", metavar="MODEL", help="diffusers model folder, training run folder, hub id or size name")
    p.add_argument("--class", dest="class_name", required=True, metavar="NAME", help="class to generate")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_config_args(p, SampleConfig)
    p.set_defaults(func=run)


def seeds_for_process(seed: int, num: int, index: int, count: int) -> list[int]:
    """The seeds of one process: every ``count``-th of seed .. seed+num-1, starting at ``index``."""
    return [seed + i for i in range(num)][index::count]


def image_paths(out: Path, class_name: str, seed: int, fmt: str) -> tuple[Path, Path]:
    from pathup.sample.writers import suffix

    name = safe_name(class_name)
    return (out / name / f"{name}_s{seed}{suffix(fmt)}", out / name / "overview" / f"{name}_s{seed}.png")


def is_done(path: Path) -> bool:
    from pathup.sample.writers import sidecar_path

    return path.is_file() and sidecar_path(path).is_file()


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from pathup.config import save_config
    from pathup.errors import PathUpError
    from pathup.sample.config import parse_size, validate
    from pathup.sample.writers import choose_format, save_image, save_png

    cfg = config_from_args(SampleConfig, args)
    validate(cfg)
    size = parse_size(cfg.size)
    fmt = choose_format(cfg.format, size)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise PathUpError(f"--out {out} exists and is not a folder")

    from accelerate import PartialState

    state = PartialState(cpu=cfg.device == "cpu")
    seeds = seeds_for_process(cfg.seed, cfg.num, state.process_index, state.num_processes)
    todo = [s for s in seeds if not is_done(image_paths(out, args.class_name, s, fmt)[0])]
    skipped = len(seeds) - len(todo)
    if not todo:
        print(f"pathup generate: all {len(seeds)} image(s) already in {out}; nothing to do")
        return 0

    from pathup.sample.pipeline import PathUpPipeline

    device = cfg.device if cfg.device != "auto" or state.num_processes == 1 else str(state.device)
    pipe = PathUpPipeline.from_pretrained(args.model, device=device, dtype=cfg.dtype,
                                          progress=state.is_local_main_process)
    prompts = pipe.prompts_for(args.class_name)  # unknown class -> PathUpError naming the known ones
    if state.is_main_process:
        save_config(cfg, out / safe_name(args.class_name) / "generate_config.yaml")
    bar = tqdm(todo, desc=f"{args.class_name}", unit="image", disable=not state.is_local_main_process)
    for seed in bar:
        image_path, overview_path = image_paths(out, args.class_name, seed, fmt)
        overview = pipe.overview(prompt=prompts["overview"], seed=seed, steps=cfg.steps, guidance=cfg.guidance,
                                 scheduler=cfg.scheduler, negative_prompt=cfg.negative_prompt)
        settings = pipe.settings(args.class_name, cfg, seed=seed, prompts=prompts, source="generated")
        save_png(overview, overview_path, {**settings, "level": "overview"})
        image = pipe.upscale(overview, prompt=prompts["patch"], size=size, seed=seed, steps=cfg.steps,
                             guidance=cfg.guidance, scheduler=cfg.scheduler, strength=cfg.strength,
                             patch_size=cfg.patch_size, overlap=cfg.overlap, weight_map=cfg.weight_map,
                             patch_batch=cfg.patch_batch, step_mode=cfg.step_mode, vae_tile=cfg.vae_tile,
                             vae_overlap=cfg.vae_overlap, negative_prompt=cfg.negative_prompt, output_type="np")
        save_image(image, image_path, {**settings, "level": "upscaled", "overview": str(overview_path)})
    print(f"pathup generate: wrote {len(todo)} image(s) to {out / safe_name(args.class_name)}"
          + (f", skipped {skipped} already there" if skipped else ""))
    return 0
