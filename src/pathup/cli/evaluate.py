"""``pathup evaluate``: IP, IR, FID, KID (x 1000), a seam score and class-consistency between real and synthetic
images."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "IP, IR, FID, KID, a seam score and class-consistency between real and synthetic images"
DESCRIPTION = ("Compare a synthetic image set with a real one (PathUp paper section 4.3). Writes OUT (JSON), a "
               "Markdown table beside it and the resolved config. Example: pathup evaluate --data data/bracs "
               "--split test --fake runs/gen --level overview --repeats 5 --out m.json")


def register(subparsers: argparse._SubParsersAction) -> None:
    from pathup.config import add_config_args
    from pathup.metrics.evaluate import EvaluateConfig

    add_config_args(p := subparsers.add_parser("evaluate", help=HELP, description=DESCRIPTION), EvaluateConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathup.config import config_from_args
    from pathup.metrics.evaluate import EvaluateConfig, evaluate, metrics_markdown

    cfg = config_from_args(EvaluateConfig, args)
    result = evaluate(cfg)
    if cfg.reconstruction:
        from pathup.metrics.judge import reconstruction_markdown

        print(reconstruction_markdown(result), end="")
        print(f"wrote {cfg.out} and the real | reconstruction strip {Path(cfg.out).with_suffix('.png')}")
        return 0
    print(metrics_markdown(result), end="")
    print(f"wrote {cfg.out}")
    return 0
