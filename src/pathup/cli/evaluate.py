"""``pathup evaluate``: IP, IR, FID, KID (x 1000), a seam score and class-consistency between real and synthetic
images."""

from __future__ import annotations

import argparse

from pathup.config import add_config_args, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from pathup.metrics.evaluate import EvaluateConfig

    p = subparsers.add_parser(
        "evaluate", help="IP, IR, FID, KID, a seam score and class-consistency between real and synthetic images",
        description="Compare a synthetic image set with a real one (PathUp paper 4.3; SPEC.md 6). Writes "
                    "OUT (JSON), a Markdown table beside it and the resolved config. Example: pathup evaluate "
                    "--real data/bracs --split test --fake runs/gen --level overview --repeats 5 --out m.json")
    add_config_args(p, EvaluateConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathup.metrics.evaluate import EvaluateConfig, evaluate, metrics_markdown

    cfg = config_from_args(EvaluateConfig, args)
    result = evaluate(cfg)
    print(metrics_markdown(result), end="")
    print(f"wrote {cfg.out}")
    return 0
