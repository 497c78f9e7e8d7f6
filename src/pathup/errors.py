"""The one exception type that reaches users as a one-line message."""


class PathUpError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints ``str(err)`` on one line (no traceback) and exits with status 2.
    Messages should name the offending file or option and, where it applies, the allowed values.
    """
