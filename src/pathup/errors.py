"""The one exception type that reaches users as a one-line message."""

from __future__ import annotations


class PathUpError(ValueError):
    """An error caused by the user's input or environment.

    A ``ValueError``, so that library callers who catch bad arguments the Python way also catch it. The
    CLI prints ``str(err)`` on one line (no traceback) and exits with status 2. Messages name the
    offending file or argument and, where it applies, the allowed values.
    """


class OptionError(PathUpError):
    """A bad value of one config option (a dataclass field).

    ``str(err)`` names the field as the Python API spells it (``lr must be > 0, got -1``); the CLI shows
    ``err.for_cli()``, which names the command-line flag instead (``--lr must be > 0, got -1``).
    """

    def __init__(self, option: str, problem: str) -> None:
        self.option = option
        self.problem = problem
        super().__init__(self._join(option))

    def _join(self, name: str) -> str:
        return f"{name}{'' if self.problem.startswith(':') else ' '}{self.problem}"

    def for_cli(self) -> str:
        return self._join("--" + self.option.replace("_", "-"))
