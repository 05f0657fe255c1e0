"""The ``audit`` job: profile -> plan of cells -> journaled, resumable run -> one report per model.

Order of work: validate the profile and check every cell kind has an engine (exit 2 before
loading anything); lock the output folder; load models and data; compare the fingerprint with
an existing journal (``--resume``); build each model's evaluation set; run the cells not yet
finished, journaling every finished chunk and cell; write the reports atomically.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from robaudit import __version__
from robaudit.config import Profile
from robaudit.engine.cells import Cell, CellContext, CellKind, cell_chunks, check_runnable, expand, get_runner
from robaudit.engine.journal import Journal, JournalState, fingerprint_changes, read_journal
from robaudit.engine.session import InputOptions, Inputs, load_inputs, seed_everything
from robaudit.errors import ConfigError

AUDIT_TIMING_FIELDS = ("seconds", "seconds_per_image")
"""Row fields that measure time: the only ones allowed to differ between identical runs."""


class AuditObserver(Protocol):
    def plan_started(self, total_cells: int, finished_cells: int) -> None: ...

    def cell_started(self, cell_id: str, total_chunks: int, finished_chunks: int) -> None: ...

    def chunk_finished(self, cell_id: str) -> None: ...

    def cell_finished(self, cell_id: str, row: dict[str, Any]) -> None: ...

    def warn(self, text: str) -> None: ...


class NullAuditObserver:
    def plan_started(self, total_cells: int, finished_cells: int) -> None:
        pass

    def cell_started(self, cell_id: str, total_chunks: int, finished_chunks: int) -> None:
        pass

    def chunk_finished(self, cell_id: str) -> None:
        pass

    def cell_finished(self, cell_id: str, row: dict[str, Any]) -> None:
        pass

    def warn(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class AuditJob:
    models: tuple[str, ...]
    inputs: InputOptions
    """Data and loading options (its ``model`` field is replaced by each of ``models``)."""
    profile: Profile
    out: Path
    resume: bool = False


@dataclass(frozen=True)
class AuditResult:
    reports: list[tuple[Path, dict[str, Any]]]
    resumed_cells: int
    """Cells taken from the journal instead of run."""


def report_path(out: Path, models: tuple[str, ...], index: int) -> Path:
    if len(models) == 1:
        return out / "report.json"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(models[index].replace("demo:", "demo-")).stem).strip("-") or "model"
    return out / f"report-m{index}-{stem}.json"


def _fingerprint(job: AuditJob, loaded: list[Inputs]) -> dict[str, Any]:
    opts = dataclasses.asdict(job.inputs)
    opts.pop("model")
    opts.pop("device")
    opts.pop("data")
    fp = {
        "robaudit_version": __version__,
        "models": [{"spec": inp.model_spec, "sha256": inp.model.info.sha256, "options": opts} for inp in loaded],
        "data": {"spec": job.inputs.data, "sha256": loaded[0].data.sha256},
        "seed": job.profile.seed,
        "profile": {"name": job.profile.name, "digest": _profile_digest(job.profile)},
    }
    return json.loads(json.dumps(fp))  # the form it has when read back from the journal (tuples -> lists)


def _profile_digest(profile: Profile) -> str:
    """The profile content that decides results: not its name, description, seed (checked apart) or gates."""
    return dataclasses.replace(profile, name="", seed=0, gates=()).digest


def run_audit(job: AuditJob, command: list[str], observer: AuditObserver | None = None) -> AuditResult:
    from robaudit.engine.attack_job import model_warnings
    from robaudit.engine.evaluation import build_evaluation_set

    obs = observer or NullAuditObserver()
    profile = job.profile
    cells = expand(profile, len(job.models))
    check_runnable(cells, profile.source)
    journal = Journal(job.out)
    journal.lock()
    try:
        state = read_journal(journal.path)
        if state.header is not None and not job.resume:
            raise ConfigError(f"{job.out} holds the journal of an earlier audit: pass --resume to continue it, "
                              "or choose an empty --out folder")
        loaded = [load_inputs(dataclasses.replace(job.inputs, model=m)) for m in job.models]
        fp = _fingerprint(job, loaded)
        if state.header is not None:
            changes = fingerprint_changes(state.header.get("fingerprint", {}), fp)
            if changes:
                raise ConfigError(f"cannot resume the audit in {job.out}: " + "; ".join(changes)
                                  + " (run with another --out, or delete the folder to start over)")
            journal.open({}, state)
        else:
            if job.resume:
                obs.warn(f"nothing to resume in {job.out}: starting a fresh audit")
            state = JournalState()
            journal.open({"fingerprint": fp}, None)

        finished = sum(1 for c in cells if c.id in state.cells)
        obs.plan_started(len(cells), finished)
        reports = []
        for m, inputs in enumerate(loaded):
            report = _run_model(job, command, m, inputs, [c for c in cells if c.model_index == m], state,
                                journal, obs, build_evaluation_set, model_warnings)
            reports.append((report_path(job.out, job.models, m), report))
        return AuditResult(reports=reports, resumed_cells=finished)
    finally:
        journal.close()


def _run_model(job: AuditJob, command: list[str], m: int, inputs: Inputs, cells: list[Cell], state: Any,
               journal: Journal, obs: AuditObserver, build_evaluation_set: Any, model_warnings: Any) -> dict[str, Any]:
    from robaudit.report import build_report

    profile = job.profile
    model, data = inputs.model, inputs.data
    seed_everything(profile.seed)
    evalset = build_evaluation_set(model, data, profile.samples, profile.seed, profile.batch_size)
    warnings = list(model.info.notes)
    for w in model_warnings(model, evalset):
        warnings.append(w)
    for w in warnings:
        obs.warn(w if len(job.models) == 1 else f"{inputs.model_spec}: {w}")
    ctx = CellContext(model=model, evalset=evalset, profile=profile, device=str(model.device))
    rows: list[dict[str, Any]] = []
    detection: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    for cell in cells:
        done = state.cells.get(cell.id)
        if done is not None:
            row, ex = done["row"], done["examples"]
        else:
            chunks = dict(state.chunks.get(cell.id, {}))
            obs.cell_started(cell.id, cell_chunks(cell, profile, evalset.n), len(chunks))

            def on_chunk(rec: dict[str, Any], _cid: str = cell.id) -> None:
                journal.chunk_finished(_cid, rec)
                obs.chunk_finished(_cid)

            row, ex = get_runner(cell.kind)(ctx, cell, chunks, on_chunk)
            journal.cell_finished(cell.id, row, ex)
        obs.cell_finished(cell.id, row)
        if cell.kind is CellKind.DETECT:
            detection.append(row)
            if row.get("status") != "ok":
                row_notes = [f"{cell.id}: {row.get('status')}: {row.get('reason')}"]
            else:
                row_notes = []
        else:
            rows.append(row)
            row_notes = []
        for w in [*row_notes, *(row.get("notes") or [])]:
            warnings.append(w)
            obs.warn(w if len(job.models) == 1 else f"{inputs.model_spec}: {w}")
        if ex is not None:
            examples.append(ex)

    model_dict = inputs.model_section()
    data_dict = inputs.data_section(evalset)
    config = {"profile": profile.to_dict(), "cells": [c.id for c in cells],
              "attacks": [a.label for a in profile.attacks], "targets": list(profile.targets),
              "n": profile.samples, "batch_size": profile.batch_size}
    report = build_report(command=command, seed=profile.seed, device=model.device, model=model_dict, data=data_dict,
                          config=config, results=rows, warnings=warnings)
    report["kind"] = "audit"
    report["examples"] = examples
    if detection:
        report["detection"] = detection
    return report


def strip_timing(report: dict[str, Any]) -> dict[str, Any]:
    """A copy without the fields that legitimately differ between identical runs (for comparisons)."""
    import copy

    out = copy.deepcopy(report)
    for key in ("created", "command", "device"):
        out.pop(key, None)
    for row in out.get("results", []):
        for key in AUDIT_TIMING_FIELDS:
            row.pop(key, None)
    for entry in out.get("detection", []):
        for key in AUDIT_TIMING_FIELDS:
            entry.pop(key, None)
        for att in (entry.get("attacks") or {}).values():
            att.pop("seconds", None)
    return out


__all__ = ["AuditJob", "AuditResult", "AuditObserver", "CellKind", "run_audit", "strip_timing", "report_path"]
