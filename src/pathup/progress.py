"""One progress setting for a whole run: PathUp's own tqdm bars follow ``progress``; so do the bars that
diffusers and transformers draw themselves (loading and writing weights)."""

from __future__ import annotations

import contextlib
import importlib
from typing import Iterator

_LIBRARIES = ("diffusers.utils.logging", "transformers.utils.logging")


def set_library_bars(enabled: bool) -> None:
    """Switch diffusers' and transformers' own progress bars on or off (process-wide)."""
    for name in _LIBRARIES:
        try:
            mod = importlib.import_module(name)
        except ImportError:  # pragma: no cover - both are dependencies
            continue
        (mod.enable_progress_bar if enabled else mod.disable_progress_bar)()


@contextlib.contextmanager
def library_bars(enabled: bool) -> Iterator[None]:
    """Within the block, the libraries' bars are off when ``enabled`` is False (restored after)."""
    if enabled:
        yield
        return
    before = []
    for name in _LIBRARIES:
        try:
            before.append(importlib.import_module(name).is_progress_bar_enabled())
        except ImportError:  # pragma: no cover
            before.append(True)
    set_library_bars(False)
    try:
        yield
    finally:
        if all(before):
            set_library_bars(True)
