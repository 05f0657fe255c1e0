"""Atomic report writing: a file on disk is either the old one or the complete new one."""

from __future__ import annotations

import json
import math
import os
import stat
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


def _is_special(target: Path) -> bool:
    """Whether ``target`` is, directly or through symlinks, neither a regular file nor a folder: a
    pipe, a terminal or another device (``--out /dev/stdout``, a named pipe). Renaming over such a
    path would replace it with a regular file, so it is written in place."""
    try:
        st = os.stat(target)  # follows symlinks
    except OSError:
        return False
    return not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))


closed_outputs: list[Path] = []
"""Pipes whose reader left while a report was written into them (``--out /dev/stdout | head``): the
command runs on, and the CLI exits 141 if it would otherwise have exited 0."""


def _write_in_place(target: Path, write: Callable[[BinaryIO], None], option: str) -> Path:
    try:
        with open(target, "wb", buffering=0) as fh:  # unbuffered: nothing left to flush into a closed pipe
            write(fh)
    except BrokenPipeError:
        closed_outputs.append(target)
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror or exc}; choose another {option} path") from None
    return target


def _refuse_misplaced(target: Path, option: str) -> Path:
    """``target`` with symlinks resolved, or a one-line error when a folder stands where the file
    should go or a file where one of its folders should be."""
    if target.is_dir():
        raise InputError(f"cannot write {target}: it is a folder; give a file name for {option}")
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    folder = target.parent if str(target.parent) else Path(".")
    blocker = next((q for q in (folder, *folder.parents) if q.exists() and not q.is_dir()), None)
    if blocker is not None:
        raise InputError(f"cannot write {target}: {blocker} is a file, not a folder; choose another {option} path")
    return target


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], option: str = "--out") -> Path:
    """Call ``write`` on a temporary file in the same folder, fsync and rename it over ``path``: the
    file there is either the old one or the complete new one, even when the run is interrupted mid-write
    (the temporary file is removed). ``option`` names the flag in errors.

    A symlink is followed (the file it points to is replaced, the link stays); an existing file keeps
    its permission bits (a new one gets 0666 less the umask); a pipe, terminal or device (``/dev/stdout``)
    is written in place, since it cannot be replaced."""
    target = Path(path)
    if _is_special(target):
        return _write_in_place(target, write, option)
    target = _refuse_misplaced(target, option)
    folder = target.parent if str(target.parent) else Path(".")
    tmp: str | None = None
    try:
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except OSError:
            mode = 0o666 & ~_umask()  # mkstemp creates 0600; reports are meant to be shared
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror or exc}; choose another {option} path "
                         "(any previous file there is untouched)") from None
    finally:
        if tmp is not None:  # failed or interrupted (Ctrl-C, SIGTERM) before the rename
            try:
                os.unlink(tmp)
            except OSError:
                pass
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
    if _is_special(target):  # a pipe or device, written in place
        if not os.access(target, os.W_OK):
            raise InputError(f"cannot write {target}: permission denied; choose another {option} path")
        return target
    target = _refuse_misplaced(target, option)
    folder = target.parent if str(target.parent) else Path(".")
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

    from robaudit.report.detect_eval import as_audit_report, detect_eval_errors, is_detect_eval

    p = Path(path)
    report = read_json_file(p, "report")
    if is_detect_eval(report):  # rendered, gated and diffed as an audit report with one detection cell
        errors = detect_eval_errors(report)
        if not errors:
            try:
                report = as_audit_report(report)
            except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a wrong type the checks missed
                errors = [f"{type(exc).__name__}: {exc}"]
        if errors:
            raise DataLoadError(f"{p} is not a valid `detect eval` report: {_first_of(errors)}")
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
        raise DataLoadError(f"{p} is not a valid robaudit report: {_first_of(errors)}")
    return report


def _first_of(errors: list[str]) -> str:
    """The first of ``errors``, and how many more there are."""
    return errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
