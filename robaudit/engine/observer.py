"""Progress observer: the engine reports through this, the CLI renders it."""

from __future__ import annotations

from typing import Any, Protocol


class Observer(Protocol):
    def plan_started(self, total_cells: int) -> None: ...

    def cell_started(self, label: str) -> None: ...

    def inputs_done(self, label: str, done: int, total: int) -> None:
        """``done`` of the cell's ``total`` inputs are attacked (called after each batch)."""
        ...

    def cell_finished(self, label: str, row: dict[str, Any]) -> None: ...

    def warn(self, text: str) -> None: ...


class NullObserver:
    """Observer that ignores everything (library use, tests)."""

    def plan_started(self, total_cells: int) -> None:
        pass

    def cell_started(self, label: str) -> None:
        pass

    def inputs_done(self, label: str, done: int, total: int) -> None:
        pass

    def cell_finished(self, label: str, row: dict[str, Any]) -> None:
        pass

    def warn(self, text: str) -> None:
        pass
