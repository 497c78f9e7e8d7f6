"""``pathup experiment``: the paper's Tables 1-4 (Markdown, mean +- std over seeds) and plots."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment", help="build Tables 1-4 (mean +- std over seeds) and plots from evaluate results",
        description="Collect 'pathup evaluate' JSON files laid out as RESULTS/<table>/<condition>/*.json "
                    "(e.g. RESULTS/table2/w-o FEL/overview_seed0.json) and write OUT/tables.md plus one plot "
                    "per table. See pathup.metrics.experiment for the layout.")
    p.add_argument("--results", required=True, metavar="DIR", help="folder with <table>/<condition>/*.json")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for tables.md and the plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathup.metrics.experiment import build_report

    report = build_report(args.results, args.out)
    print(report["markdown"], end="")
    return 0
