"""Atomic report writing: a file on disk is either the old one or the complete new one."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from robaudit.errors import DataLoadError, InputError


def _clean(obj: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], option: str = "--out") -> Path:
    """Call ``write`` on a temporary file in the same folder, fsync and rename it over ``path``: the
    file there is either the old one or the complete new one. ``option`` names the flag in errors."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    tmp: str | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; reports are meant to be shared
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise InputError(f"cannot write {target}: {exc.strerror or exc}; choose another {option} path "
                         "(any previous file there is untouched)") from None
    return target


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) atomically, as :func:`write_atomic`."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda fh: fh.write(data))


def check_writable(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Refuse (exit 2) an output path that could not be written, before any work is spent on it:
    a folder in its place, or a parent that cannot be created or written. Creates nothing but the
    parent folders, and probes them with a temporary file that is removed at once."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"cannot write {target}: it is a folder; give a file name for {option}")
    folder = target.parent if str(target.parent) else Path(".")
    blocker = next((q for q in (folder, *folder.parents) if q.exists() and not q.is_dir()), None)
    if blocker is not None:
        raise InputError(f"cannot write {target}: {blocker} is a file, not a folder; choose another {option} path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror or exc}; choose another {option} path") from None
    return target


def write_json_atomic(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` as JSON atomically (NaN/inf become null)."""
    return write_text_atomic(path, json.dumps(_clean(payload), indent=2, allow_nan=False) + "\n")


def read_json_file(path: str | os.PathLike[str], what: str, error: type[Exception] = DataLoadError) -> Any:
    """The JSON document in ``path``; ``error`` with a one-line message naming ``what`` it should be
    (``"report"``, ``"detector file"``) when it is missing, unreadable or not JSON."""
    p = Path(path)
    try:
        with p.open(encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"cannot read {what} {p}: {exc}") from None


def read_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The report in ``path``, validated against the published schema (a report edited by hand or
    by another tool into a wrong shape is refused with the first violation, exit 2)."""
    from robaudit.report.schema import validation_errors

    from robaudit.report.detect_eval import as_audit_report, is_detect_eval

    p = Path(path)
    report = read_json_file(p, "report")
    if is_detect_eval(report):  # rendered, gated and diffed as an audit report with one detection cell
        report = as_audit_report(report)
    if isinstance(report, dict) and "results" not in report and "mode" in report and "schema_version" in report:
        raise DataLoadError(f"{p} is the output of `robaudit detect {report.get('mode')}`, which `report` does not "
                            "render (it renders `detect eval` reports and audits); `robaudit detect score` prints "
                            "its own table")
    if isinstance(report, dict) and "detector" in report and "fit" in report:
        raise DataLoadError(f"{p} is a detector file written by `robaudit detect fit`, not a report; "
                            "`robaudit detect score` and `detect eval --detector` read it")
    if not isinstance(report, dict) or "schema_version" not in report or "results" not in report:
        raise DataLoadError(f"{p} is not a robaudit report (no schema_version/results)")
    errors = validation_errors(report)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DataLoadError(f"{p} is not a valid robaudit report: {errors[0]}{more}")
    return report
