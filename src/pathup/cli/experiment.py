"""``pathup experiment``: the paper's Tables 1-4 (Markdown, mean +- std over seeds) and plots.

* ``pathup experiment run --data DATASET --out OUT``: train the ablation arms, generate and upscale, evaluate
  every condition per seed and write the report (``pathup.experiments.run``).
* ``pathup experiment report --results RESULTS --out OUT`` (or the older ``pathup experiment --results ...
  --out ...``): only the report, from evaluate JSON files (``pathup.experiments.tables``).
"""

from __future__ import annotations

import argparse

RUN_EPILOG = """\
layout of OUT:
  runs/<arm>/                    training runs: pathup, no-fel, no-pa (Table 2)
  images/<arm>/seed<s>/<kind>/   overview, pyramid, uniform, bicubic, upscaler-<name> images + sidecar .json
  results/table<N>/<condition>/<level>_seed<s>.json   'pathup evaluate' results, one per seed
  tables.md, table<N>.png        Markdown tables (mean +- std over seeds) and plots
Rerunning the same command resumes: finished runs, images and results are skipped.

examples:
  pathup experiment run --data data/bracs --out exp/ --features-weights pt_inception.pth
  pathup experiment run --data data/bracs --out exp/ --tables 1 3 --compare SD=runs/sd/model \\
      --upscaler models/sd-x4-upscaler
  pathup experiment run --data data/small --out exp/ --model micro --train-steps 50 --seeds 2 \\
      --steps 10 --images-per-class 4 --features random-cnn      # a quick offline smoke run
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from pathup.config import add_config_args
    from pathup.experiments.config import ExperimentConfig

    p = subparsers.add_parser(
        "experiment", help="reproduce Tables 1-4 (train, generate, evaluate over seeds) and plot them",
        description="'run' trains the ablation arms, generates and upscales images, evaluates every condition "
                    "per seed and writes Markdown tables (mean +- std over seeds) and plots; 'report' only "
                    "collects 'pathup evaluate' JSON files laid out as RESULTS/<table>/<condition>/*.json "
                    "(e.g. RESULTS/table2/w-o FEL/overview_seed0.json) into OUT/tables.md and one plot per "
                    "table. 'pathup experiment --results RESULTS --out OUT' is the same as 'report'.")
    p.add_argument("--results", dest="legacy_results", metavar="DIR",
                   help="report only: folder with <table>/<condition>/*.json (same as 'report --results')")
    p.add_argument("--out", dest="legacy_out", metavar="DIR", help="report only: output folder (with --results)")
    p.set_defaults(func=run_legacy)
    sub = p.add_subparsers(dest="experiment_action", metavar="ACTION")

    r = sub.add_parser("run", help="train, generate, upscale, evaluate and report the tables",
                       description="Reproduce the structure of the PathUp paper's Tables 1-4 on a prepared "
                                   "dataset (see pathup.experiments.run).", epilog=RUN_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(r, ExperimentConfig)
    r.set_defaults(func=run_experiment)

    rep = sub.add_parser("report", help="tables.md and plots from existing evaluate results",
                         description="Collect RESULTS/<table>/<condition>/*.json and write OUT/tables.md plus "
                                     "one plot per table (see pathup.experiments.tables for the layout).")
    rep.add_argument("--results", required=True, metavar="DIR", help="folder with <table>/<condition>/*.json")
    rep.add_argument("--out", required=True, metavar="DIR", help="output folder for tables.md and the plots")
    rep.set_defaults(func=run_report)


def _report(results: str, out: str) -> int:
    from pathup.experiments.tables import build_report

    report = build_report(results, out)
    print(report["markdown"], end="")
    return 0


def run_legacy(args: argparse.Namespace) -> int:
    from pathup.errors import PathUpError

    if not args.legacy_results or not args.legacy_out:
        raise PathUpError("give an action: 'run --data DATASET --out OUT' or 'report --results DIR --out DIR' "
                          "(or --results DIR --out DIR)")
    return _report(args.legacy_results, args.legacy_out)


def run_report(args: argparse.Namespace) -> int:
    return _report(args.results, args.out)


def run_experiment(args: argparse.Namespace) -> int:
    from pathup.config import config_from_args
    from pathup.experiments.config import ExperimentConfig
    from pathup.experiments.run import run_experiment as run_exp

    cfg = config_from_args(ExperimentConfig, args)
    res = run_exp(cfg)
    print(res["report"]["markdown"], end="")
    print(f"trained {len(res['trained'])} run(s), wrote {res['images_written']} image(s) "
          f"({res['images_skipped']} existed), {len(res['evaluated'])} evaluation(s) "
          f"({res['evaluations_skipped']} existed); see {res['out']}/tables.md")
    return 0
