"""The terminal consoles of the CLI modules: results on stdout, messages and progress on stderr.

Off a terminal (a pipe, a CI log) rich would wrap and truncate at 80 columns: stderr messages are
printed unwrapped, so each stays the one line the exit-code contract promises, and stdout tables get
``PIPE_WIDTH`` columns (unless ``COLUMNS`` says otherwise) so no column is cut to ``unsupp…``.
"""

from __future__ import annotations

import os

from rich.console import Console

PIPE_WIDTH = 200
"""Width of stdout tables when stdout is not a terminal and ``COLUMNS`` is not set."""


def stdout_console() -> Console:
    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(width=PIPE_WIDTH)
    return console


def stderr_console() -> Console:
    return Console(stderr=True, soft_wrap=True)
