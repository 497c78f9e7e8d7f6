"""``pathup demo``: the whole pipeline on the shipped sample images, with an HTML report."""

from __future__ import annotations

import argparse
from typing import Any

from pathup.config import add_config_args, config_from_args


def register(subparsers: Any) -> None:
    from pathup.demo import DemoConfig

    p = subparsers.add_parser(
        "demo", help="run prepare -> train -> generate -> evaluate -> report on the shipped sample images",
        description="Runs the whole PathUp pipeline on real images shipped with the package (Kather 2016 "
                    "colorectal tiles by default, or BreakHis with --sample breakhis): prepares tiles, trains "
                    "the tiny model from scratch, generates overviews, large images by patch-wise timestep "
                    "tracking and a mixed-tissue image from a class map, evaluates them (class-consistency "
                    "beside its real ceiling included) and writes OUT/report.html. About 9 minutes on 2 CPU "
                    "cores; rerunning reuses finished stages.")
    add_config_args(p, DemoConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathup.demo import DemoConfig, run_demo

    cfg = config_from_args(DemoConfig, args)
    report = run_demo(cfg)
    print(f"pathup demo: report at {report}")
    return 0
