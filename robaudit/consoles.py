"""The terminal consoles of the CLI modules: results on stdout, messages and progress on stderr.

Off a terminal (a pipe, a CI log) rich would wrap and truncate at 80 columns: stderr messages are
printed unwrapped, so each stays the one line the exit-code contract promises, and stdout tables get
``PIPE_WIDTH`` columns (unless ``COLUMNS`` says otherwise) so no column is cut to ``unsupp…``.
"""

from __future__ import annotations

import os
import sys

import typer

from rich.console import Console

PIPE_WIDTH = 200
"""Width of stdout tables when stdout is not a terminal and ``COLUMNS`` is not set."""


_closed = {"stdout": False}


def stdout_gone() -> None:
    """Standard output was closed by its reader (``robaudit ... | head``): note it, and point stdout at
    /dev/null so the rest of the command (judging gates, writing files, messages on stderr) runs on."""
    _closed["stdout"] = True
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


class _Console(Console):
    """Rich's console, which on a closed pipe would silence stdout and exit 1 (the exit code robaudit
    reserves for failed gates) in the middle of the command. Here the command runs on to its end,
    and the entry point exits 141 if it would otherwise have exited 0 (:func:`stdout_closed`)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        if not self.stderr:
            stdout_gone()


def echo(text: str, nl: bool = True) -> None:
    """``typer.echo`` to stdout that survives a closed pipe as the consoles do."""
    if _closed["stdout"]:
        return
    try:
        typer.echo(text, nl=nl)
    except BrokenPipeError:
        stdout_gone()


def typer_found_stdout_closed() -> bool:
    """Whether Typer met a closed stdout: when a write outside the consoles and :func:`echo` fails
    on a closed pipe (``--help | head``), it swaps ``sys.stdout`` for Click's ``PacifyFlushWrapper``
    and exits 1."""
    return type(sys.stdout).__name__ == "PacifyFlushWrapper"


def stdout_closed() -> bool:
    """Whether standard output was found closed: by a console, :func:`echo`, a report written to
    ``/dev/stdout``, or Typer (:func:`typer_found_stdout_closed`)."""
    from robaudit.report.writer import closed_outputs

    return _closed["stdout"] or bool(closed_outputs) or typer_found_stdout_closed()


def stdout_console() -> Console:
    console = _Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = _Console(width=PIPE_WIDTH)
    return console


def stderr_console() -> Console:
    return _Console(stderr=True, soft_wrap=True)
