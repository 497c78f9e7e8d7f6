"""``pathup features train --data DATASET --out ENC``: train a domain encoder for the metrics."""

from __future__ import annotations

import argparse

HELP = "feature extractors for the metrics: train a texture-aware domain encoder on a dataset's real tiles"
TRAIN_HELP = ("train a small CNN on the dataset's real training tiles (class labels, flips, rotations, mild colour "
              "jitter) and write ENC/encoder.safetensors + ENC/encoder.json, for 'pathup evaluate --features ENC'")


def register(subparsers: argparse._SubParsersAction) -> None:
    from pathup.config import add_config_args
    from pathup.metrics.encoder_config import EncoderConfig

    p = subparsers.add_parser("features", help=HELP, description=HELP)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    t = actions.add_parser("train", help=TRAIN_HELP, description=TRAIN_HELP + ".",
                           epilog="example:\n  pathup features train --data data/kather --out runs/encoder\n"
                                  "  pathup evaluate --data data/kather --fake runs/gen --features runs/encoder",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(t, EncoderConfig)
    t.set_defaults(func=run_train)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args: argparse.Namespace) -> int:
    from pathup.config import config_from_args, save_config
    from pathup.errors import PathUpError
    from pathup.metrics.domain import EncoderConfig, describe, train_encoder

    cfg = config_from_args(EncoderConfig, args)
    if cfg.data is None or cfg.out is None:
        raise PathUpError("give --data DATASET (a folder written by 'pathup prepare') and --out ENC")
    out = train_encoder(cfg)
    save_config(cfg, out / "config.yaml")
    print(describe(out))
    return 0
