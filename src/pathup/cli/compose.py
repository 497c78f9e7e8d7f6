"""``pathup compose --model MODEL --layout LAYOUT --out OUT [--size WxH]``: mixed-tissue images from a class map.

Regional conditioning (MultiDiffusion's region rule, Bar-Tal et al. 2023) in the overview and in
patch-wise timestep tracking (PathUp Algorithm 1); writes the image with its label mask, colour and
overlay previews, a JSON sidecar and the regions as GeoJSON for QuPath (see ``pathup.sample.compose``).

``--num N`` makes seeds seed .. seed+N-1 (with ``--random-layout K`` each seed draws its own layout);
under ``accelerate launch`` they are shared across the processes as in ``pathup generate``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pathup.cli._sampling import add_options, add_sampling_parser, load_pipeline, model_of, own_options, read_options
from pathup.sample.config import ComposeConfig


def register(subparsers: Any) -> None:
    p = add_sampling_parser(
        subparsers, "compose", ComposeConfig, func=run,
        help="mixed-tissue large images from a class map, with label masks",
        description="Compose a large image whose regions follow a class map: a class-mixed overview by "
                    "regional conditioning, then patch-wise timestep tracking in which each latent patch "
                    "blends the guided predictions of the classes under it by soft masks. Writes the image, "
                    "its label mask (class ids), colour and overlay previews, a JSON sidecar and GeoJSON "
                    "regions that QuPath imports.")
    p.add_argument("--layout", metavar="FILE",
                   help="class map: a label image (ids, or colours with --legend) or a JSON of rectangles/"
                        "polygons in relative coordinates; or use --random-layout K")
    p.add_argument("--legend", metavar="FILE",
                   help="YAML/JSON legend of a label image: class: colour ('#rrggbb' or [r, g, b]) or class: id; "
                        "without it a single-channel image's ids are the model's class indices")
    p.add_argument("--out", metavar="DIR", help="output folder (required)")
    add_options(p)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from pathup.errors import PathUpError
    from pathup.sample.compose_folder import compose_to_folder
    from pathup.sample.config import validate
    from pathup.sample.generate import check_out_folder

    own_options(args, {"out": "--out DIR"})
    model = model_of(args)
    cfg = read_options(ComposeConfig, args, validate)
    if (args.layout is None) == (cfg.random_layout == 0):
        raise PathUpError("give either --layout FILE or --random-layout K")
    if args.legend is not None and args.layout is None:
        raise PathUpError("--legend needs --layout (a label image)")
    for flag, path in (("--layout", args.layout), ("--legend", args.legend)):
        if path is not None and not Path(path).is_file():
            raise PathUpError(f"{flag} {path}: file not found")
    out = check_out_folder(args.out)  # an unwritable --out fails here, in one line, before the model loads
    state = PartialState(cpu=cfg.device == "cpu")
    pipe = load_pipeline(model, cfg, state)
    result = compose_to_folder(pipe, out, cfg, layout=args.layout, legend=args.legend,
                               process_index=state.process_index, num_processes=state.num_processes,
                               progress=state.is_local_main_process, checked=True)  # read_options checked cfg
    skipped = len(result.skipped)
    ratio = ""
    if result.unet:
        mean = sum(u["upscale_ratio"] for u in result.unet) / len(result.unet)
        ratio = f"; UNet evaluations {mean:.2f}x those of pathup generate at this size"
    print(f"pathup compose: wrote {len(result.written)} image(s) with masks to {out}"
          + (f", skipped {skipped} already there" if skipped else "") + ratio)
    return 0
