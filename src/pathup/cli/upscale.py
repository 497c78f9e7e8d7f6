"""``pathup upscale IMAGE --model MODEL --class NAME``: patch-wise timestep tracking on your own overview.

Runs PathUp Algorithm 1 on a given low-resolution image (for example a real overview, to compare
upscalers): resize to --size, encode, noise to --strength, denoise with one scheduler per patch and the
pyramid weights, decode. Writes ``OUT/<image stem>_<class>_s<seed>.png`` (or .tiff) with a JSON sidecar
(and the model's physical scale, or ``--mpp``), and the resolved options in ``OUT/upscale_config.yaml``.
A rerun skips a target made with the same settings; one made from another image, model or settings is an
error unless ``--overwrite`` replaces it.

A thin wrapper over ``pathup.sample.generate.upscale_to_file`` (argument parsing, printing).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pathup.cli._sampling import OWN_KEYS, add_options, add_sampling_parser, load_pipeline, model_of, own_options
from pathup.sample.config import SampleConfig


def register(subparsers: Any) -> None:
    p = add_sampling_parser(
        subparsers, "upscale", SampleConfig, func=run, positional_model=False, skip=("num",),
        help="upscale your own overview with patch-wise timestep tracking",
        description="Upscale a low-resolution image to --size with the class's patch prompt and "
                    "patch-wise timestep tracking (PathUp Algorithm 1).")
    p.add_argument("image", metavar="IMAGE", help="the low-resolution overview (any RGB image file)")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="class whose patch prompt conditions the upscaling (required)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: upscaled)")
    add_options(p)


def run(args: argparse.Namespace) -> int:
    from pathup.config import config_from_args
    from pathup.io import load_rgb
    from pathup.sample.generate import check_out_folder, check_upscale_target, upscale_path, upscale_to_file

    own_options(args, {"class_name": "--class NAME"})
    model = model_of(args)
    cfg = config_from_args(SampleConfig, args, own=tuple(OWN_KEYS))
    out = Path(args.out or "upscaled")
    target = upscale_path(args.image, args.class_name, out, cfg)  # checks every option first
    image = load_rgb(args.image)  # PathUpError on a missing or corrupt file
    check_out_folder(out)  # an unwritable --out fails here, in one line, before the model loads
    if check_upscale_target(target, args.image, args.class_name, cfg, model):  # same settings: done
        print(f"pathup upscale: {target} already exists; nothing to do")
        return 0
    pipe = load_pipeline(model, cfg)
    result = upscale_to_file(pipe, args.image, args.class_name, out, cfg, image=image, checked=True)  # checked above
    print(f"pathup upscale: wrote {target}")
    if result.written:
        print(f"pathup upscale: {result.costs.summary()}")
    return 0
