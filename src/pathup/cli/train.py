"""``pathup train DATASET --out RUN``: train the latent diffusion model (patho-align + FEL)."""

from __future__ import annotations

import argparse

HELP = "train the latent diffusion model on a prepared dataset (patho-align, feature entropy loss)"


def register(subparsers) -> None:
    from pathup.config import add_config_args
    from pathup.train.config import TrainConfig

    p = subparsers.add_parser(
        "train", help=HELP, description=HELP + ". Works under 'accelerate launch pathup train ...'.",
        epilog="examples:\n  pathup train data/ --out runs/tiny --max-steps 2000\n"
               "  pathup train data/ --out runs/sd --model runwayml/stable-diffusion-v1-5 --mixed-precision bf16\n"
               "  pathup train data/ --out runs/tiny --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DATASET", help="folder written by 'pathup prepare' (manifest.csv, dataset.json)")
    add_config_args(p, TrainConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathup.config import config_from_args
    from pathup.train import TrainConfig, train

    cfg = config_from_args(TrainConfig, args, dataset=args.dataset)
    out = train(cfg)
    print(out)
    return 0
