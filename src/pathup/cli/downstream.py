"""``pathup downstream``: does training on synthetic images help a lesion-subtype classifier? (Table 6)"""

from __future__ import annotations

import argparse

from pathup.config import add_config_args, config_from_args
from pathup.downstream.config import DownstreamConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "downstream",
        help="classify lesion subtypes with/without synthetic images (ViT, ABMIL; paper Table 6)",
        description="Train a ViT and an ABMIL classifier on the real images only, with random augmentation "
                    "('Rand.') and with synthetic images from 'pathup generate'; report per-class F1 "
                    "(mean +- std over seeds) on the patient-level test split as a Table 6 style Markdown "
                    "table, a bar plot and confusion matrices. On a CPU try: --vit vit_tiny_patch16_224 "
                    "--vit-img-size 64 --vit-patch-size 8 --abmil-encoder resnet18 --abmil-img-size 64.",
    )
    add_config_args(parser, DownstreamConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathup.downstream.run import run_downstream

    cfg = config_from_args(DownstreamConfig, args)
    run_downstream(cfg)
    print((cfg.out / "table.md").read_text(), end="")
    print(f"results: {cfg.out / 'results.json'}")
    return 0
