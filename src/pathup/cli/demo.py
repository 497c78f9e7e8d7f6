"""``pathup demo``: the whole pipeline on the shipped sample images, with an HTML report."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "run prepare -> train -> generate -> evaluate -> report on the shipped sample images"
DESCRIPTION = ("Runs the whole PathUp pipeline on real images shipped with the package (Kather 2016 colorectal "
               "tiles by default, or BreakHis with --sample breakhis): prepares tiles, trains the tiny model from "
               "scratch, generates overviews, large images by patch-wise timestep tracking and a mixed-tissue "
               "image from a class map, evaluates them (class-consistency beside its real ceiling included) and "
               "writes OUT/report.html. About 15 minutes on 2 CPU cores (14-16.5 min measured); rerunning reuses "
               "finished stages.")


def register(subparsers: Any) -> None:
    from pathup.config import add_config_args
    from pathup.experiments.demo.config import DemoConfig

    add_config_args(p := subparsers.add_parser("demo", help=HELP, description=DESCRIPTION), DemoConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathup.config import config_from_args
    from pathup.experiments.demo.config import DemoConfig
    from pathup.experiments.demo.run import run_demo

    report = run_demo(config_from_args(DemoConfig, args))
    print(f"pathup demo: report at {report}")
    return 0
