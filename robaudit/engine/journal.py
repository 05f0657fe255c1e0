"""The audit journal: an append-only JSON-lines file, fsynced after every record.

Line 1 is a header with the run's fingerprint (robaudit version, models, data, profile, seed);
then ``chunk`` records (one finished batch of samples of a cell) and ``cell`` records (a finished
cell's row). A process killed at any moment leaves at most a torn last line, which a resume drops.
A lock file (``flock``, released by the kernel even on SIGKILL) refuses a second run on the same folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from robaudit.errors import ConfigError, InputError

JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = ".robaudit.lock"


@dataclass
class JournalState:
    """What a journal says is already done."""

    header: dict[str, Any] | None = None
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)
    """cell id -> ``{"row": ..., "examples": ...}``"""
    chunks: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    """cell id -> chunk index -> chunk record"""
    valid_bytes: int = 0
    """Length of the intact prefix of the file (a torn last line is cut off on resume)."""


def read_journal(path: Path) -> JournalState:
    state = JournalState()
    if not path.exists():
        return state
    data = path.read_bytes()
    pos = 0
    lines = data.splitlines(keepends=True)
    for number, raw in enumerate(lines, start=1):
        if not raw.endswith(b"\n"):
            break  # torn write: the process died mid-line
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict):
                raise ValueError("not a record")
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            if number == len(lines):
                break  # the last line only: treated as a torn write
            # a damaged line with records after it: resuming would cut those finished records away
            raise ConfigError(f"{path} line {number} is not a journal record, and {len(lines) - number} lines "
                              "follow it: the journal is damaged, not torn; move it away (or choose another "
                              "--out) to start over") from None
        if number == 1 and rec.get("type") != "header":
            raise ConfigError(f"{path} does not start with a robaudit journal header: move it away (or choose "
                              "another --out) to start over")
        pos += len(raw)
        kind = rec.get("type")
        if kind == "header":
            state.header = rec
        elif kind == "chunk":
            state.chunks.setdefault(rec["cell"], {})[int(rec["record"]["chunk"])] = rec["record"]
        elif kind == "cell":
            state.cells[rec["cell"]] = {"row": rec["row"], "examples": rec.get("examples")}
    state.valid_bytes = pos
    return state


def fingerprint_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty when a resume is safe)."""
    out = []
    labels = {"robaudit_version": "robaudit version", "models": "model", "data": "data", "seed": "seed",
              "profile": "profile", "attack_params": "attack parameters"}
    for key, label in labels.items():
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "models":
            a_list, b_list = a or [], b or []
            if len(a_list) != len(b_list):
                out.append(f"the models changed ({len(a_list)} before, {len(b_list)} now)")
                continue
            for i, (ma, mb) in enumerate(zip(a_list, b_list)):
                if ma != mb:
                    what = "content (sha256)" if ma.get("sha256") != mb.get("sha256") else "options"
                    out.append(f"model {i} ({mb.get('spec')}) changed: {what}")
        elif key == "data":
            what = "content (sha256)" if (a or {}).get("sha256") != (b or {}).get("sha256") else "options"
            out.append(f"the data ({(b or {}).get('spec')}) changed: {what}")
        elif key == "profile":
            diffs = [f"name {(a or {}).get('name')!r} -> {(b or {}).get('name')!r}"] \
                if (a or {}).get("name") != (b or {}).get("name") else []
            fa, fb = old.get("profile_fields") or {}, new.get("profile_fields") or {}
            for k in dict.fromkeys([*fa, *fb]):  # numbers and names as they are; lists and mappings hashed
                va, vb = fa.get(k), fb.get(k)
                if va != vb:
                    hashed = isinstance(va, dict) or isinstance(vb, dict) or k not in fa or k not in fb
                    diffs.append(k if hashed else f"{k} {va!r} -> {vb!r}")
            if not fa and (a or {}).get("digest") != (b or {}).get("digest"):
                diffs.append("its content (the journal predates per-field records)")
            out.append(f"the profile changed ({', '.join(diffs) or 'content'})")
        elif key == "attack_params":
            if old.get("profile") != new.get("profile"):
                continue  # the profile's own change (named above) explains it
            out.append("the attacks' parameters with robaudit's defaults filled in differ from the run being "
                       "resumed (written by an earlier robaudit, or defaults changed)")
        else:
            out.append(f"the {label} changed ({a} -> {b})")
    return out


class Journal:
    """An open journal in an output folder (holds the folder's lock while open)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / JOURNAL_NAME
        self._lock_fh: TextIO | None = None
        self._fh: Any = None

    def lock(self) -> None:
        import fcntl

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = open(self.folder / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run
        except OSError as exc:
            raise InputError(f"cannot use {self.folder} as the output folder: {exc.strerror or exc}; "
                             "choose another --out") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            who = fh.read().strip()
            fh.close()
            raise ConfigError(f"another robaudit audit is running on {self.folder}"
                              f"{f' (pid {who})' if who else ''}: wait for it, or use another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def open(self, header: dict[str, Any], state: JournalState | None) -> None:
        """Start a fresh journal (``state`` None) or continue ``state``'s intact prefix."""
        try:
            if state is None:
                self._fh = open(self.path, "wb")  # noqa: SIM115
            else:
                self._fh = open(self.path, "r+b")  # noqa: SIM115
                self._fh.truncate(state.valid_bytes)
                self._fh.seek(state.valid_bytes)
        except OSError as exc:
            raise self._write_error(exc) from None
        if state is None:
            self._write({"type": "header", **header})

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n"
        try:
            self._fh.write(line.encode("utf-8"))
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:  # disk full, quota, folder gone: what is journaled so far stays usable
            raise self._write_error(exc) from None

    def _write_error(self, exc: OSError) -> InputError:
        return InputError(f"cannot write the audit journal {self.path}: {exc.strerror or exc}; every batch "
                          "journaled before is kept: free space or fix the folder, then rerun with --resume")

    def chunk_finished(self, cell_id: str, record: dict[str, Any]) -> None:
        self._write({"type": "chunk", "cell": cell_id, "record": record})

    def cell_finished(self, cell_id: str, row: dict[str, Any], examples: dict[str, Any] | None) -> None:
        self._write({"type": "cell", "cell": cell_id, "row": row, "examples": examples})

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:  # the write that failed already raised; its torn line is dropped on resume
                pass
            self._fh = None
        if self._lock_fh is not None:
            self._lock_fh.close()  # releases the flock
            self._lock_fh = None
