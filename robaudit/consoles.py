"""The terminal consoles of the CLI modules: results on stdout, messages and progress on stderr.

Off a terminal (a pipe, a CI log) rich would wrap and truncate at 80 columns: stderr messages are
printed unwrapped, so each stays the one line the exit-code contract promises, and stdout tables get
``PIPE_WIDTH`` columns (unless ``COLUMNS`` says otherwise) so no column is cut to ``unsupp…``.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

PIPE_WIDTH = 200
"""Width of stdout tables when stdout is not a terminal and ``COLUMNS`` is not set."""


_closed = {"stdout": False}


class _Console(Console):
    """Rich's console, noting when its pipe closes (rich then silences stdout and exits 1, the exit
    code robaudit reserves for gates; :func:`stdout_closed` lets the entry point say 141 instead)."""

    def on_broken_pipe(self) -> None:
        _closed["stdout"] = True
        super().on_broken_pipe()


def stdout_closed() -> bool:
    """Whether standard output was found closed: by a console, or by Typer's ``echo`` (Typer then
    swaps ``sys.stdout`` for Click's ``PacifyFlushWrapper`` before exiting 1)."""
    return _closed["stdout"] or type(sys.stdout).__name__ == "PacifyFlushWrapper"


def stdout_console() -> Console:
    console = _Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = _Console(width=PIPE_WIDTH)
    return console


def stderr_console() -> Console:
    return _Console(stderr=True, soft_wrap=True)
