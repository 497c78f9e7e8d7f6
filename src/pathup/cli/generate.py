"""``pathup generate --model MODEL --class NAME --out DIR``: large images of a class (PathUp section 3.2).

Layout (other stages rely on it; ``pathup.data.generated``)::

    DIR/<class>/<class>_s<seed>.png        (or .tiff from 8192 px / --format tiff)
    DIR/<class>/<class>_s<seed>.json       settings: prompts, seed, model, every option, microns per pixel
    DIR/<class>/overview/<class>_s<seed>.png (+ .json)
    DIR/<class>/generate_config.yaml       the resolved options of the last run

``<class>`` is the class name, or for names that are not safe file names a safe form plus a short hash
(``pathup.data.generated.class_dirname``), so two classes never share a folder.

``--num N`` makes seeds seed .. seed+N-1; under ``accelerate launch`` they are shared across the
processes (process i takes every num_processes-th seed). Images already written (image and sidecar
present) are skipped, so an interrupted run resumes where it stopped. A folder made with another model
or other image-changing settings is an error (naming the folder and the setting) unless ``--overwrite``
replaces its images. The images carry the model's physical scale (``pathup.json``'s ``mpp``) unless
``--mpp`` sets it. Each sidecar records the image's UNet evaluations and seconds per stage (overview,
encode, tracking, decode); the run ends with one line summing them over the images it made.

A thin wrapper over ``pathup.sample.generate.generate_to_folder`` (argument parsing, the process share
under ``accelerate launch``, printing).
"""

from __future__ import annotations

import argparse
from typing import Any

from pathup.cli._sampling import add_options, add_sampling_parser, load_pipeline, model_of, own_options, read_options
from pathup.sample.config import SampleConfig
from pathup.sample.generate import image_paths, is_done, seeds_for_process  # noqa: F401  (re-exported)


def register(subparsers: Any) -> None:
    p = add_sampling_parser(
        subparsers, "generate", SampleConfig, func=run,
        help="generate large images of a class (overview + patch-wise timestep tracking)",
        description="Generate an overview of a class at the model's training resolution, then upscale it "
                    "with patch-wise timestep tracking (PathUp Algorithm 1) to --size.")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="class to generate (required)")
    p.add_argument("--out", metavar="DIR", help="output folder (required)")
    add_options(p)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from pathup.sample.config import validate
    from pathup.sample.generate import (check_out_folder, class_folder, generate_to_folder, pending_seeds,
                                        settle_class_folder)

    own_options(args, {"class_name": "--class NAME", "out": "--out DIR"})
    model = model_of(args)
    cfg = read_options(SampleConfig, args, validate)
    out = check_out_folder(args.out)  # an unwritable --out fails here, in one line, before any work
    state = PartialState(cpu=cfg.device == "cpu")
    share = dict(process_index=state.process_index, num_processes=state.num_processes)
    # A folder made with another model or other settings: an error, or with --overwrite cleared once.
    settle_class_folder(out, args.class_name, cfg, model, process_index=state.process_index,
                        barrier=state.wait_for_everyone)
    todo, done = pending_seeds(out, args.class_name, cfg, **share, model=model)  # no model loaded yet
    if not todo:
        print(f"pathup generate: all {len(done)} image(s) already in {out}; nothing to do")
        return 0
    pipe = load_pipeline(model, cfg, state)
    result = generate_to_folder(pipe, args.class_name, out, cfg, **share, progress=state.is_local_main_process,
                                pending=(todo, done))  # options checked and folder settled above
    skipped = len(result.skipped)
    print(f"pathup generate: wrote {len(result.written)} image(s) to {class_folder(out, args.class_name)}"
          + (f", skipped {skipped} already there" if skipped else ""))
    if result.written:
        print(f"pathup generate: {result.costs.summary()}")
    return 0
