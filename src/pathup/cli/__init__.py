"""The ``pathup`` command: one subcommand per stage, each a thin wrapper over the Python API.

Each stage lives in its own module ``pathup.cli.<stage>`` that defines
``register(subparsers) -> None`` and sets ``func`` on its parser; modules are discovered, so a
stage adds itself without touching this file. Heavy imports (torch, diffusers) happen inside the
command functions, so ``pathup --help`` stays fast.
"""

from __future__ import annotations

import argparse
import re
import importlib
import logging
import pkgutil
import sys
from typing import Sequence

from pathup import __version__
from pathup.errors import OptionError, PathUpError

# The order in which stages appear in ``pathup --help``; modules not listed follow alphabetically.
STAGE_ORDER = ("prepare", "train", "generate", "upscale", "evaluate", "experiment", "downstream",
               "study", "demo")


def _stage_modules() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    ordered = [s for s in STAGE_ORDER if s in found]
    return ordered + sorted(found - set(ordered))


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf(inity)?$", re.IGNORECASE)


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
    for p in [parser, *sub.choices.values()]:
        # argparse reads "-1e9" as an option name (its negative-number rule knows no exponent): a value
        # like "--vae-kl-weight -1e9" must reach the config layer, which names the option and its range
        p._negative_number_matcher = _NEGATIVE_NUMBER
    return parser


def _os_error_line(err: OSError) -> str:
    """``[Errno 28] No space left on device: 'x'`` -> ``No space left on device: x`` (one line, naming the path)."""
    what = err.strerror or str(err) or type(err).__name__
    paths = [str(p) for p in (err.filename, getattr(err, "filename2", None)) if p]
    return f"{what}: {' -> '.join(paths)}" if paths else what


def _interrupted(command: str | None, exiting: bool) -> int:
    import signal

    if exiting:  # a second Ctrl+C while Python shuts down must not print a traceback either
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except (ValueError, OSError):  # pragma: no cover - not the main thread
            pass
    try:
        print(f"pathup{' ' + command if command else ''}: interrupted", file=sys.stderr)
    except (OSError, ValueError):  # pragma: no cover - stderr gone
        pass
    return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``pathup`` command; returns the exit status (0, 2 for a user error, 130 for Ctrl+C).

    Errors caused by input or environment (``PathUpError``, and any ``OSError`` such as an unwritable or
    full output folder) are one line naming the file or option; ``-v`` shows the traceback instead.
    Ctrl+C at any moment, start-up imports included, exits 130 without a traceback.
    """
    command = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        return _run(parser, args)
    except KeyboardInterrupt:
        return _interrupted(command, exiting=argv is None)  # (argv given: called from Python, which goes on)


class _TerminalFormatter(logging.Formatter):
    """Log lines with control characters written out (``\\x1b``): a class name's escape sequence in a
    warning never reaches the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        from pathup.io import show_controls

        return "\n".join(show_controls(line) for line in super().format(record).split("\n"))


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if type(handler.formatter) is logging.Formatter:
            handler.setFormatter(_TerminalFormatter(handler.formatter._fmt))
    if not args.verbose:  # libraries' progress chatter (checkpoint saving etc.) only with -v
        for name in ("accelerate", "diffusers", "transformers", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
        for name in ("tifffile", "tiffslide"):  # their warnings about a damaged file repeat our one-line error
            logging.getLogger(name).setLevel(logging.ERROR)
        from pathup.progress import set_library_bars

        set_library_bars(False)  # diffusers'/transformers' own 'Loading weights' bars; PathUp shows its own
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except PathUpError as err:
        if args.verbose:
            raise
        from pathup.io import show_controls

        message = err.for_cli() if isinstance(err, OptionError) else str(err)
        print(f"pathup {args.command}: error: {show_controls(message)}", file=sys.stderr)
        return 2
    except OSError as err:  # unwritable or read-only output, disk full, a folder where a file should be...
        if args.verbose:
            raise
        from pathup.io import show_controls

        line = show_controls(_os_error_line(err))
        print(f"pathup {args.command}: error: {line} (-v shows where)", file=sys.stderr)
        return 2
    return int(result or 0)
