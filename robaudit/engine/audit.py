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
from robaudit.engine.cells import (Cell, CellContext, CellKind, cell_chunks, check_runnable, execution_order, expand,
                                   get_runner)
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
    workers: int = 1
    """Processes that run cells (see :mod:`robaudit.engine.parallel`); 1: this process."""


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
        "profile_fields": _profile_fields(job.profile),
        "attack_params": _attack_params_digest(job.profile),
    }
    return json.loads(json.dumps(fp))  # the form it has when read back from the journal (tuples -> lists)


def _attack_params_digest(profile: Profile) -> str:
    """Every attack's parameters with robaudit's defaults filled in, hashed: a resume must not mix
    rows computed under different defaults (a newer robaudit may change them, as ``confirm_draws``
    did), which the profile's own digest cannot see."""
    import hashlib

    from robaudit.attacks.base import params_from_overrides
    from robaudit.attacks.registry import AttackName, get_attack_class

    resolved = {}
    for spec in profile.attacks:
        cls = get_attack_class(AttackName(spec.name), spec.backend)
        resolved[spec.label] = dataclasses.asdict(params_from_overrides(cls.Params, dict(spec.params)))
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()


def _default_eps_warnings(profile: Profile, clip: tuple[float, float]) -> list[str]:
    from robaudit.attacks.base import AttackKind
    from robaudit.attacks.registry import AttackName, get_attack_class
    from robaudit.engine.attack_job import default_eps_warnings

    defaulted = [a.label for a in profile.attacks if a.eps is None
                 and get_attack_class(AttackName(a.name), a.backend).kind is AttackKind.FIXED_EPS]
    return default_eps_warnings(defaulted, clip)


def _profile_fields(profile: Profile) -> dict[str, Any]:
    """What ``_profile_digest`` covers, field by field (numbers and names as they are, the rest hashed),
    so that a refused resume can say which field changed. Not compared itself: the digest decides."""
    import hashlib

    out: dict[str, Any] = {}
    for key, value in profile.to_dict().items():
        if key in ("source", "description", "name", "seed", "gates"):  # outside the digest
            continue
        if value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = {"sha256": hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()}
    return out


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
        _check_outputs(job, fresh=state.header is None)
        loaded = [load_inputs(dataclasses.replace(job.inputs, model=m)) for m in job.models]
        for inputs in loaded:
            _check_losses(profile, inputs.model.num_classes, inputs.model_spec)
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


SUMMARY_NAME = "summary.md"


def _check_outputs(job: AuditJob, fresh: bool) -> None:
    """Refuse, before any cell runs, an output the audit could not write at the end (a folder where
    a report or the summary goes) and, for a fresh audit, files it would replace that robaudit did
    not write (someone else's ``report.json`` in a reused folder)."""
    paths = [report_path(job.out, job.models, m) for m in range(len(job.models))] + [job.out / SUMMARY_NAME]
    for path in paths:
        if path.is_dir():
            raise ConfigError(f"{path} is a folder, where the audit writes its {path.name}: "
                              "move it or choose another --out folder")
        if not fresh or not path.is_file():
            continue
        try:
            with path.open("rb") as fh:
                head = fh.read(4096).decode("utf-8", "replace")
        except OSError:
            head = ""
        ours = head.startswith("### robaudit:") if path.name == SUMMARY_NAME else '"robaudit_version"' in head
        if not ours:
            raise ConfigError(f"{path} exists and is not a robaudit {'summary' if path.name == SUMMARY_NAME else 'report'}: "
                              "the audit would replace it; move it or choose another --out folder")


def _check_losses(profile: Profile, num_classes: int, model_spec: str) -> None:
    """Refuse, before any cell runs, an attack whose ``loss`` the model's classes cannot support (DLR
    needs 3 classes, targeted DLR 4): the loss itself would only say so when its cell runs."""
    from robaudit.attacks._losses import check_attack_loss
    from robaudit.attacks.base import TargetMode
    from robaudit.attacks.registry import AttackName, get_attack_class

    modes = [TargetMode(t) for t in profile.targets]
    for a in profile.attacks:
        try:
            check_attack_loss(get_attack_class(AttackName(a.name), a.backend), a.params, a.name, modes, num_classes)
        except ConfigError as exc:
            raise ConfigError(f"{model_spec}: attacks.{a.label}: {exc}") from None


def _run_model(job: AuditJob, command: list[str], m: int, inputs: Inputs, cells: list[Cell], state: Any,
               journal: Journal, obs: AuditObserver, build_evaluation_set: Any, model_warnings: Any) -> dict[str, Any]:
    from robaudit.report import build_report
    from robaudit.report.validity import evaluation_warnings

    profile = job.profile
    model, data = inputs.model, inputs.data
    seed_everything(profile.seed)
    evalset = build_evaluation_set(model, data, profile.samples, profile.seed, profile.batch_size)
    warnings = list(model.info.notes)
    for w in model_warnings(model, evalset, data):
        warnings.append(w)
    warnings += _default_eps_warnings(profile, model.clip)
    warnings += profile.notes
    for w in warnings:
        obs.warn(w if len(job.models) == 1 else f"{inputs.model_spec}: {w}")
    base_ctx = CellContext(model=model, evalset=evalset, profile=profile, device=str(model.device))
    stacks = StackContexts(base_ctx, data)
    rows: list[dict[str, Any]] = []
    detection: list[dict[str, Any]] = []
    clever: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    results: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {}

    def finished(cell: Cell, row: dict[str, Any], ex: dict[str, Any] | None) -> None:
        obs.cell_finished(cell.id, row)
        for w in _row_warnings(cell, row):
            obs.warn(w if len(job.models) == 1 else f"{inputs.model_spec}: {w}")
        results[cell.id] = (row, ex)

    todo = []
    for cell in execution_order(cells):
        done = state.cells.get(cell.id)
        if done is not None:
            finished(cell, done["row"], done["examples"])
        else:
            todo.append(cell)
    if job.workers > 1 and len(todo) > 1:
        from robaudit.engine.parallel import run_cells_parallel

        run_cells_parallel(dataclasses.replace(job.inputs, model=inputs.model_spec), profile, todo, state.chunks,
                           job.workers, journal, obs, finished)
    else:
        for cell in todo:
            ctx = stacks.get(cell.defences, cell.threat)
            chunks = dict(state.chunks.get(cell.id, {}))
            obs.cell_started(cell.id, cell_chunks(cell, profile, ctx.evalset.n), len(chunks))

            def on_chunk(rec: dict[str, Any], _cid: str = cell.id) -> None:
                journal.chunk_finished(_cid, rec)
                obs.chunk_finished(_cid)

            row, ex = get_runner(cell.kind)(ctx, cell, chunks, on_chunk)
            journal.cell_finished(cell.id, row, ex)
            finished(cell, row, ex)
    for cell in cells:  # the report keeps the plan's order
        row, ex = results[cell.id]
        if cell.kind is CellKind.DETECT:
            detection.append(row)
        elif cell.kind is CellKind.CLEVER:  # CLEVER entries go to the report's clever section
            clever.append(row)
        else:
            rows.append(row)
        warnings.extend(_row_warnings(cell, row))
        if ex is not None:
            examples.append(ex)
    for w in evaluation_warnings(rows):  # NaN/inf met, black-box beating white-box, eps, iterations
        warnings.append(w)
        obs.warn(w if len(job.models) == 1 else f"{inputs.model_spec}: {w}")

    model_dict = inputs.model_section()
    data_dict = inputs.data_section(evalset)
    config = {"profile": profile.to_dict(), "cells": [c.id for c in cells],
              "attacks": [a.label for a in profile.attacks], "targets": list(profile.targets),
              "n": profile.samples, "batch_size": profile.batch_size}
    report = build_report(command=command, seed=profile.seed, device=model.device, model=model_dict, data=data_dict,
                          config=config, results=rows, warnings=warnings)
    report["kind"] = "audit"
    report["examples"] = examples
    if any(s for s in profile.defences):
        report["defences"] = stacks.section(profile.defences)
    if detection:
        report["detection"] = detection
    if clever:
        from robaudit.engine.clever_cell import audit_clever_section

        report["clever"] = audit_clever_section(clever, rows, profile)
    return report


def _row_warnings(cell: Cell, row: dict[str, Any]) -> list[str]:
    """A finished cell's warnings: a detection or CLEVER cell that did not run, and the row's notes."""
    out = []
    if cell.kind is not CellKind.ATTACK and row.get("status") != "ok":
        out.append(f"{cell.id}: {row.get('status')}: {row.get('reason')}")
    return out + list(row.get("notes") or [])


class StackContexts:
    """One :class:`CellContext` per (defence stack, threat model) of a model, built when first needed.

    A defended stack gets its own evaluation set: the same sampled inputs (same seed), kept where the
    *defended* model classifies them correctly, so success is measured on correctly classified
    inputs under each defence and the clean-accuracy cost of the defence is measured on the same
    sample. Randomised stacks are seeded from the profile seed and the stack, never the run order.
    """

    def __init__(self, base: CellContext, data: Any) -> None:
        self.base = base
        self.data = data
        self._sets: dict[tuple[str, ...], CellContext] = {(): base}
        self._pool: tuple[str, Any] | None = None
        """The last transfer pool built, by pool id: transfer cells run grouped by attack and target
        (:func:`execution_order`), so one pool in memory serves every stack."""

    def transfer_pool(self, cell: Cell) -> Any:
        """The :class:`~robaudit.engine.cells.TransferPool` of ``cell``'s attack and target."""
        from robaudit.engine.cells import craft_transfer_pool, transfer_pool_id

        key = transfer_pool_id(cell)
        if self._pool is None or self._pool[0] != key:
            self._pool = None  # free the old pool before crafting the next
            self._pool = (key, craft_transfer_pool(self.base.model, self.data, cell, self.base.profile,
                                                   self.base.device))
        return self._pool[1]

    def _defended(self, stack: tuple[str, ...]) -> CellContext:
        if stack not in self._sets:
            import hashlib

            from robaudit.defences import defend_model, reseed_defences
            from robaudit.engine.evaluation import build_evaluation_set

            profile = self.base.profile
            model = defend_model(self.base.model, stack, profile.defence_params, eot_samples=profile.eot_samples)
            digest = hashlib.sha256(f"{profile.seed}|{'+'.join(stack)}".encode()).digest()
            stack_seed = int.from_bytes(digest[:4], "big") % (2**31 - 1)
            seed_everything(stack_seed)
            reseed_defences(model, stack_seed)
            evalset = build_evaluation_set(model, self.data, profile.samples, profile.seed, profile.batch_size)
            self._sets[stack] = CellContext(model=model, evalset=evalset, profile=profile, device=self.base.device,
                                            defences=stack)
        return self._sets[stack]

    def get(self, stack: tuple[str, ...], threat: str = "adaptive") -> CellContext:
        ctx = self._defended(stack)
        if stack and threat == "transfer":
            return dataclasses.replace(ctx, craft_model=self.base.model, transfer_pool=self.transfer_pool)
        return ctx

    def section(self, stacks: tuple[tuple[str, ...], ...]) -> list[dict[str, Any]]:
        """The report's ``defences`` section: clean accuracy under each stack and its change."""
        base_acc = self.base.evalset.clean_accuracy
        out = []
        for stack in stacks:
            ctx = self._defended(stack)
            model = ctx.model
            stack_module = getattr(model, "stack", None)
            describe = getattr(stack_module, "describe", None)
            preprocessors = describe() if callable(describe) else []
            randomized = bool(getattr(stack_module, "randomized", False))
            out.append({
                "defences": list(stack), "clean_accuracy": ctx.evalset.clean_accuracy,
                "clean_accuracy_change": ctx.evalset.clean_accuracy - base_acc,
                "n_selected": ctx.evalset.n_selected, "n_correct": ctx.evalset.n,
                "randomized": randomized,
                "eot_samples": self.base.profile.eot_samples if randomized else None,
                "adaptive_gradient": adaptive_gradient(preprocessors, randomized, self.base.profile.eot_samples,
                                                       self.base.profile.threat_models) if stack else None,
                "preprocessors": preprocessors,
            })
        return out


def adaptive_gradient(preprocessors: list[dict[str, Any]], randomized: bool, eot_samples: int,
                      threat_models: tuple[str, ...]) -> str:
    """How adaptive attacks take gradients through a stack, in words: ``"BPDA (jpeg, tvm), EOT 4"``."""
    if "adaptive" not in threat_models:
        return "none (transfer only)"
    bpda = [str(p.get("name")) for p in preprocessors if p.get("gradient") == "bpda"]
    zero = [str(p.get("name")) for p in preprocessors if p.get("gradient") == "zero"]
    parts = [f"BPDA ({', '.join(bpda)})"] if bpda else []
    parts += [f"zero ({', '.join(zero)})"] if zero else []
    if not parts:
        parts = ["autograd"]
    if randomized:
        parts.append(f"EOT {eot_samples}")
    return ", ".join(parts)


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
    for row in (out.get("clever") or {}).get("rows", []):
        for key in AUDIT_TIMING_FIELDS:
            row.pop(key, None)
    return out


__all__ = ["AuditJob", "AuditResult", "AuditObserver", "CellKind", "run_audit", "strip_timing", "report_path"]
