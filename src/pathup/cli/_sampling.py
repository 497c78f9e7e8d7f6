"""What ``pathup generate`` / ``upscale`` / ``compose`` share: the model option, reading the options
(checked before any model loads) and loading the pipeline on the right device."""

from __future__ import annotations

import argparse
from typing import Any

from pathup.config import add_config_args, config_from_args

MODEL_HELP = "diffusers model folder, training run folder, hub id or size name"


def add_sampling_parser(subparsers: Any, name: str, config: type, *, help: str, description: str,  # noqa: A002
                        func: Any, positional_model: bool = True, skip: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """A subcommand with ``--model MODEL`` (and, with ``positional_model``, the older positional MODEL,
    hidden), the options of ``config`` and ``func`` to run; the caller adds its own arguments."""
    p = subparsers.add_parser(name, help=help, description=description)
    if positional_model:  # the older spelling `pathup generate MODEL ...` keeps working
        p.add_argument("model_arg", nargs="?", metavar="MODEL", help=argparse.SUPPRESS)
    p.add_argument("--model", metavar="MODEL", help=MODEL_HELP + " (required)")
    p.set_defaults(func=func, _config=config, _skip=skip)
    return p


def add_options(p: argparse.ArgumentParser) -> None:
    """The config's options (after the subcommand's own arguments, so ``--help`` lists those first)."""
    add_config_args(p, p.get_default("_config"), skip=p.get_default("_skip"))


# The sampling commands' own arguments (not fields of their config): YAML key -> argparse dest.
OWN_KEYS = {"model": "model", "class": "class_name", "class_name": "class_name", "out": "out",
            "layout": "layout", "legend": "legend"}


def own_options(args: argparse.Namespace, required: dict[str, str]) -> None:
    """``--model``, ``--class``, ``--out``, ``--layout``, ``--legend`` may come from ``--config`` too (keys
    ``model``, ``class``, ``out``, ``layout``, ``legend``); the command line wins. ``required``: dest ->
    flag of the ones the command needs (a one-line error names the flag and the key)."""
    from pathup.errors import PathUpError

    if getattr(args, "config", None):
        from pathup.config import load_yaml

        for key, value in load_yaml(args.config).items():
            dest = OWN_KEYS.get(key)
            if dest is None or not hasattr(args, dest) or getattr(args, dest) is not None:
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise PathUpError(f"{args.config}: '{key}' must be text, got {value!r}")
            setattr(args, dest, str(value))
    for dest, flag in required.items():
        if getattr(args, dest, None) is None:
            key = next(k for k, d in OWN_KEYS.items() if d == dest)
            raise PathUpError(f"{flag} is required: give it on the command line or as '{key}:' in --config")


def model_of(args: argparse.Namespace) -> str:
    """The model given by ``--model`` (or the older positional MODEL); a one-line error without one."""
    from pathup.errors import PathUpError

    given, old = getattr(args, "model", None), getattr(args, "model_arg", None)
    if given is not None and old is not None and given != old:
        raise PathUpError(f"give the model once: --model {given} and the positional MODEL {old} differ")
    if given is None and old is None:
        raise PathUpError(f"--model MODEL is required ({MODEL_HELP})")
    return given if given is not None else old


def read_options(cls: type, args: argparse.Namespace, validate: Any) -> Any:
    """The resolved options, every one checked by ``validate`` and the size bound before any process group
    or model starts."""
    from pathup.sample.generate import check_output_size

    cfg = config_from_args(cls, args, own=tuple(OWN_KEYS))
    validate(cfg)
    check_output_size(cfg)  # --size bounded before any model loads
    return cfg


def load_pipeline(model: str, cfg: Any, state: Any = None) -> Any:
    """``PathUpPipeline.from_pretrained`` on ``cfg.device`` (under ``accelerate launch`` with several
    processes and ``--device auto``: this process's device)."""
    from pathup.sample.pipeline import PathUpPipeline

    device = cfg.device
    if state is not None and cfg.device == "auto" and state.num_processes > 1:
        device = str(state.device)
    progress = state.is_local_main_process if state is not None else True
    return PathUpPipeline.from_pretrained(model, device=device, dtype=cfg.dtype, progress=progress)
