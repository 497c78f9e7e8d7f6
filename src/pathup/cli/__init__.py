"""The ``pathup`` command: one subcommand per stage, each a thin wrapper over the Python API.

Each stage lives in its own module ``pathup.cli.<stage>`` that defines
``register(subparsers) -> None`` and sets ``func`` on its parser; modules are discovered, so a
stage adds itself without touching this file. Heavy imports (torch, diffusers) happen inside the
command functions, so ``pathup --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from typing import Sequence

from pathup import __version__
from pathup.errors import PathUpError

# The order in which stages appear in ``pathup --help``; modules not listed follow alphabetically.
STAGE_ORDER = ("prepare", "train", "generate", "upscale", "evaluate", "experiment", "downstream",
               "study", "demo")


def _stage_modules() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    ordered = [s for s in STAGE_ORDER if s in found]
    return ordered + sorted(found - set(ordered))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pathup",
        description="PathUp: synthesise realistic, multi-class, high-resolution pathology images "
                    "with a latent diffusion model, and prove they are useful.",
    )
    parser.add_argument("--version", action="version", version=f"pathup {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _stage_modules():
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(sub)
    return parser


def _quiet_library_progress_bars() -> None:
    """Hide diffusers'/transformers' own 'Loading weights' bars; PathUp shows its own progress."""
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            importlib.import_module(module).disable_progress_bar()
        except ImportError:  # pragma: no cover - both are dependencies
            pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s: %(message)s")
    if not args.verbose:  # libraries' progress chatter (checkpoint saving etc.) only with -v
        for name in ("accelerate", "diffusers", "transformers", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
        _quiet_library_progress_bars()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except PathUpError as err:
        if args.verbose:
            raise
        print(f"pathup {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pathup {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
