"""Error hierarchy. Every error carries the process exit code the CLI uses for it.

Exit codes (documented in the README):
    0  success
    1  a gate failed (reserved for ``audit``/``report --gate``)
    2  usage, input or configuration error
    3  internal or attack failure
    141  standard output was closed before everything was printed (``robaudit ... | head``)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_STDOUT_CLOSED = 141
"""128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe."""


class RobauditError(Exception):
    """Base class. ``str(err)`` is a one-line message meant for the user.

    Messages often quote what the user gave (a YAML key, a file name, an array name); control
    characters in them (a newline in a hostile YAML key) are escaped, so the line stays one line.
    """

    exit_code: int = EXIT_INTERNAL

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(one_line(str(message)), *args)


def one_line(text: str) -> str:
    """``text`` with every control or other non-printable character escaped (``\\n``, ``\\x00``, ...)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class InputError(RobauditError):
    """Bad model file, bad data file, bad option value: the user can fix it."""

    exit_code = EXIT_USAGE


class ModelLoadError(InputError):
    """A model file could not be loaded (wrong format, corrupt, unsafe)."""


class DataLoadError(InputError):
    """A data file or folder could not be loaded or fails validation."""


class ConfigError(InputError):
    """An option or profile value is invalid."""


class AttackFailure(RobauditError):
    """An attack crashed or produced an invalid result (e.g. left its eps-ball)."""

    exit_code = EXIT_INTERNAL
