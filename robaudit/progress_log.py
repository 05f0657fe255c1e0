"""Progress for a log: what the CLI shows instead of progress bars when stderr is not a terminal.

Off a terminal (a CI job, ``2> run.log``) rich cannot redraw bars, so they used to be off and a
long audit printed nothing until it ended; CI services that stop a job after some minutes of
silence then killed it. :class:`LogProgress` takes the same calls as the part of
:class:`rich.progress.Progress` the CLI uses and prints one plain line every ``interval`` seconds
(from a background thread, so a single long step still shows the run is alive), with each task's
count and estimated time left::

    progress 1m30s: audit 3/12; m0/attack/cw-l2/untargeted/none 2/5 (eta 1m02s)

The interval is ``ROBAUDIT_PROGRESS_SECONDS`` (default 30; 0 prints on every step; ``--quiet``
prints nothing). Messages go through ``console`` like the bars' messages do.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from robaudit.errors import ConfigError

DEFAULT_INTERVAL = 30.0
"""Seconds between progress lines in a log, unless ``ROBAUDIT_PROGRESS_SECONDS`` says otherwise."""
INTERVAL_ENV = "ROBAUDIT_PROGRESS_SECONDS"


def interval_from_env() -> float:
    """``ROBAUDIT_PROGRESS_SECONDS`` as seconds (a usage error if it is not a number >= 0)."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ConfigError(f"{INTERVAL_ENV} must be a number of seconds >= 0, got {raw!r}")
    return value


def duration(seconds: float) -> str:
    """``75.2`` -> ``1m15s``; ``3700`` -> ``1h01m40s``; under a minute ``42s``."""
    s = int(round(max(0.0, seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float
    started: float
    start_completed: float = field(default=0.0)
    """Work already done when the task was added (a resumed cell): not counted in its rate."""
    eta: bool = True
    """False for a count of unlike steps (cells of different attacks), whose average predicts nothing."""

    def text(self, now: float) -> str:
        desc = self.description.strip()
        if self.total is None:  # work without counts (a spinner on a terminal)
            return f"{desc} {self.completed:g}" if self.completed else f"{desc} (running)"
        out = f"{desc} {self.completed:g}/{self.total:g}"
        done = self.completed - self.start_completed
        if self.eta and 0 < done and self.completed < self.total:
            left = (now - self.started) / done * (self.total - self.completed)
            out += f" (eta {duration(left)})"
        return out


class LogProgress:
    """Plain progress lines for a log, with the calls of :class:`rich.progress.Progress` the CLI makes
    (``add_task``, ``advance``, ``update``, ``remove_task``, ``console``, use as a context manager)."""

    def __init__(self, console: Console, interval: float | None = None,
                 clock: Any = time.monotonic) -> None:
        self.console = console
        self.interval = interval_from_env() if interval is None else interval
        self._clock = clock
        self._tasks: dict[int, _Task] = {}
        self._next_id = 0
        self._start = clock()
        self._last = self._start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "LogProgress":
        self._start = self._last = self._clock()
        if self.interval > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._heartbeat, name="robaudit-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(self.interval, 1.0)):
            self._maybe_print()

    def add_task(self, description: str, total: float | None = 100.0, completed: float = 0,
                 **fields: Any) -> int:
        """``eta=False`` (a rich task field, ignored by the bars): no estimate in the line."""
        with self._lock:
            task_id = self._next_id
            self._next_id += 1
            self._tasks[task_id] = _Task(description, total, float(completed), self._clock(), float(completed),
                                         eta=bool(fields.get("eta", True)))
        return task_id

    def update(self, task_id: int, *, description: str | None = None, total: float | None = None,
               completed: float | None = None, advance: float | None = None, **_: Any) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return
            if description is not None:
                task.description = description
            if total is not None:
                task.total = total
            if completed is not None:
                task.completed = float(completed)
            if advance is not None:
                task.completed += advance
        self._maybe_print()

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def remove_task(self, task_id: int) -> None:
        with self._lock:
            self._tasks.pop(task_id, None)

    def _maybe_print(self) -> None:
        with self._lock:
            now = self._clock()
            if now - self._last < self.interval or not self._tasks:
                return
            self._last = now
            parts = "; ".join(t.text(now) for t in self._tasks.values())
        self.console.print(f"progress {duration(now - self._start)}: {parts}", markup=False, highlight=False)
