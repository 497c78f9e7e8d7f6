"""Time outside the UNet per step mode (issue 19's "outside-UNet <= 3 % of a step"), measured in one run.

Upscales one overview of a trained PathUp model with each ``--step-mode`` (per-patch, per-chunk, per-canvas),
alternating the modes over ``--repeats`` rounds so that a slow spell of a shared machine hits them alike, and
reports per mode and sampler the median tracking seconds and the share of them spent outside the UNet's
forward (``bench_speed.UnetClock``). The images of the modes are the same (tests/test_sample_tracking.py); the
largest pixel difference between them is printed as a check.

Usage (tiny model on 1 CPU thread, about 5 minutes)::

    OMP_NUM_THREADS=1 python benchmarks/bench_step_modes.py --model runs/k1200/model --size 1024 \\
        --latent-patch 16 --latent-overlap 8 --schedulers unipc ddim --steps 10 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

MODES = ("per-patch", "per-chunk", "per-canvas")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a trained PathUp model folder")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--latent-patch", type=int, default=16)
    ap.add_argument("--latent-overlap", type=int, default=8)
    ap.add_argument("--schedulers", nargs="+", default=["unipc", "ddim"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_speed import UnetClock

    from pathup.sample import PathUpPipeline, SampleConfig
    from pathup.sample.config import validate
    from pathup.sample.costs import Costs

    pipe = PathUpPipeline.from_pretrained(str(args.model), device=args.device, dtype="fp32", progress=False)
    clock = UnetClock(pipe.ldm.unet, pipe._execution_device)
    prompts = pipe.prompts_for(pipe.ldm.prompts.classes[0])
    print(f"| sampler | step mode | tracking s (median of {args.repeats}) | outside-UNet | max pixel diff vs "
          f"{args.modes[0]} |\n|---|---|---|---|---|")
    for sched in args.schedulers:
        times: dict[str, list[tuple[float, float]]] = {m: [] for m in args.modes}
        images: dict[str, np.ndarray] = {}
        ov = None
        for _ in range(args.repeats):
            for mode in args.modes:
                cfg = validate(SampleConfig(size=args.size, latent_patch=args.latent_patch,
                                            latent_overlap=args.latent_overlap, scheduler=sched, steps=args.steps,
                                            step_mode=mode, device=args.device, dtype="fp32"))
                if ov is None:
                    ov = pipe.overview_with(prompts["overview"], cfg, 0)
                costs, before = Costs(), clock.seconds
                img = pipe.upscale_with(ov, prompts["patch"], cfg, 0, output_type="np", costs=costs)
                track = costs.seconds["tracking"]
                times[mode].append((track, (track - (clock.seconds - before)) / track))
                images.setdefault(mode, img)
        for mode in args.modes:
            diff = float(np.abs(images[mode].astype(np.float64) - images[args.modes[0]]).max())
            print(f"| {sched} {args.steps} | {mode} | {statistics.median(t for t, _ in times[mode]):.1f} | "
                  f"{statistics.median(o for _, o in times[mode]):.1%} | {diff:.2g} |", flush=True)
    clock.close()


if __name__ == "__main__":
    main()
