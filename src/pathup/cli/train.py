"""``pathup train --data DATASET --out RUN``: train the latent diffusion model (patho-align + FEL)."""

from __future__ import annotations

import argparse

HELP = "train the latent diffusion model on a prepared dataset (patho-align, feature entropy loss)"


def register(subparsers) -> None:
    from pathup.config import add_config_args
    from pathup.train.config import TrainConfig

    p = subparsers.add_parser(
        "train", help=HELP, description=HELP + ". Works under 'accelerate launch pathup train ...'.",
        epilog="examples:\n  pathup train --data data/ --out runs/mine --max-steps 2000\n"
               "  pathup train --data data/ --out runs/sd --model runwayml/stable-diffusion-v1-5 "
               "--mixed-precision bf16 --ema-offload\n"
               "  pathup train --data data/ --out runs/mine --resume\n"
               "  pathup train --data data/ --out runs/mine --log-with wandb",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    # the dataset used to be positional (pathup train DATASET --out RUN): still accepted, hidden
    p.add_argument("positional_data", nargs="?", metavar="DATASET", help=argparse.SUPPRESS)
    add_config_args(p, TrainConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathup.config import config_from_args
    from pathup.errors import PathUpError
    from pathup.train import TrainConfig, train

    fixed = {}
    if args.positional_data is not None:
        given = getattr(args, "data", None)
        if given is not None and str(given) != args.positional_data:
            raise PathUpError(f"two datasets given ({args.positional_data} and --data {given}); give one --data")
        fixed["data"] = args.positional_data
    cfg = config_from_args(TrainConfig, args, **fixed)
    if cfg.data is None:
        raise PathUpError("no dataset given: --data DATASET (a folder written by 'pathup prepare')")
    out = train(cfg)
    print(out)
    return 0
