"""The CLEVER cell of an audit: scores of one model under one defence stack (``m0/clever/clever/-/ss``).

The profile's ``clever:`` section (:class:`~robaudit.config.CleverSpec`) gives the norm, radius
and budget; the profile's ``targets`` the target settings (all estimated from the same sample
points). The cell scores the first ``clever.inputs`` inputs of the (stack's) evaluation set, in
journaled chunks; each chunk's record holds its inputs' per-class estimates, so a killed audit
resumes at the chunk in flight. Sample points are seeded from the *profile* seed, the input's
dataset index, the norm and the batch, so every stack is scored on the same points and a cell's
result does not depend on the run order. The cell's entry (its journaled "row") has one summary
row per target setting; :func:`audit_clever_section` gathers the entries of a model into the
report's ``clever`` section.
"""

from __future__ import annotations

from typing import Any, Callable

from robaudit.attacks.base import TargetMode
from robaudit.clever.interface import CleverNorm, CleverParams, CleverRun
from robaudit.config import Profile
from robaudit.engine.cells import Cell, CellContext, ChunkRecord, n_chunks


def clever_n(evalset_n: int, profile: Profile) -> int:
    spec = profile.clever
    assert spec is not None
    return min(spec.inputs, evalset_n)


def clever_radius(profile: Profile, clip: tuple[float, float]) -> float:
    """The profile's ``clever.radius``, or (none given) its norm's default for [0, 1] inputs scaled
    by the model's clip span, as ``robaudit clever`` does (L1 10, L2 5, Linf 0.3)."""
    spec = profile.clever
    assert spec is not None
    if spec.radius is not None:
        return float(spec.radius)
    return CleverNorm.parse(spec.norm).default_radius * (float(clip[1]) - float(clip[0]))


def _spec(profile: Profile, clip: tuple[float, float]) -> tuple[CleverNorm, float, CleverParams]:
    spec = profile.clever
    assert spec is not None
    return CleverNorm.parse(spec.norm), clever_radius(profile, clip), CleverParams(nb_batches=spec.batches,
                                                                                    batch_size=spec.batch_size)


def _bounds(n: int, chunks: int, k: int) -> tuple[int, int]:
    """Inputs ``[lo, hi)`` of chunk ``k`` when ``n`` inputs are split evenly over ``chunks`` chunks."""
    return (k * n) // chunks, ((k + 1) * n) // chunks


def _model(ctx: CellContext, cell: Cell) -> Any:
    """The cell's model: the context's, which the audit has already wrapped in the cell's stack
    (an audit that does not wrap it gets it wrapped here)."""
    if cell.defences and not getattr(ctx, "defences", ()):
        from robaudit.defences import defend_model

        return defend_model(ctx.model, cell.defences, getattr(ctx.profile, "defence_params", None) or None,
                            bpda=True, eot_samples=getattr(ctx.profile, "eot_samples", 1))
    return ctx.model


def run_clever_chunk(model: Any, evalset: Any, cell: Cell, profile: Profile, chunk: int, chunks: int,
                     device: str | None) -> dict[str, Any]:
    """CLEVER of the inputs of chunk ``chunk``: a JSON-ready record of their per-class estimates."""
    from robaudit.attacks.targets import compute_targets
    from robaudit.clever.estimate import estimate
    from robaudit.clever.section import classes_needed, estimate_to_dict
    from robaudit.engine.session import seed_everything

    norm, radius, params = _spec(profile, model.clip)
    modes = [TargetMode(t) for t in profile.targets]
    lo, hi = _bounds(clever_n(evalset.n, profile), chunks, chunk)
    if hi <= lo:
        return {"chunk": chunk, "n": 0, "inputs": [], "seconds": 0.0, "gradient_seconds": 0.0, "fit_seconds": 0.0,
                "points": 0, "backward": 0}
    x, y = evalset.x[lo:hi], evalset.y[lo:hi]
    targets = {m: compute_targets(m, evalset.clean_logits[lo:hi], y) for m in modes}
    classes = [classes_needed(int(y[i]), model.num_classes, modes,
                              {m: int(t[i]) for m, t in targets.items() if t is not None}) for i in range(hi - lo)]
    seed_everything(cell.chunk_seed(profile.seed, chunk))
    run = estimate(model, x, y, classes, [int(i) for i in evalset.indices[lo:hi]], norm, radius, params,
                   seed=profile.seed, clip=model.clip, positions=range(lo, hi), device=device)
    rec = {"chunk": chunk, "n": hi - lo, "inputs": [estimate_to_dict(e) for e in run.inputs],
           "seconds": run.seconds, "gradient_seconds": run.gradient_seconds, "fit_seconds": run.fit_seconds,
           "points": run.forward_points, "backward": run.backward_passes}
    if run.notes:
        rec["notes"] = list(run.notes)
    return rec


def clever_cell_entry(cell: Cell, profile: Profile, evalset: Any, records: list[ChunkRecord],
                      clip: tuple[float, float]) -> dict[str, Any]:
    """Combine the chunk records of a CLEVER cell into its entry (one summary row per target)."""
    from robaudit.attacks.targets import compute_targets
    from robaudit.clever.section import estimate_from_dict, summary_row

    norm, radius, params = _spec(profile, clip)
    ests = tuple(estimate_from_dict(e) for r in records for e in r["inputs"])
    n = len(ests)
    notes = tuple(x for r in records for x in r.get("notes", []))
    run = CleverRun(norm=norm, radius=radius, params=params, inputs=ests,
                    seconds=float(sum(r["seconds"] for r in records)),
                    gradient_seconds=float(sum(r["gradient_seconds"] for r in records)),
                    fit_seconds=float(sum(r["fit_seconds"] for r in records)),
                    forward_points=int(sum(r["points"] for r in records)),
                    backward_passes=int(sum(r["backward"] for r in records)), notes=notes)
    extra = {"cell_id": cell.id, "seed": cell.seed(profile.seed)}
    rows = []
    for t in profile.targets:
        mode = TargetMode(t)
        tt = compute_targets(mode, evalset.clean_logits[:n], evalset.y[:n])
        rows.append(summary_row(run, mode, None if tt is None else [int(v) for v in tt], cell.defences, extra))
    return {"cell_id": cell.id, "kind": "clever", "status": "ok", "reason": None, "seed": cell.seed(profile.seed),
            "defences": list(cell.defences), "norm": norm.value, "radius": radius, "n": n, "rows": rows,
            "seconds": run.seconds, **({"notes": list(notes)} if notes else {})}


def run_clever_cell(ctx: CellContext, cell: Cell, finished: dict[int, ChunkRecord],
                    on_chunk: Callable[[ChunkRecord], None]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The :data:`~robaudit.engine.cells.CellRunner` of CLEVER cells (the row is the cell's entry).

    The chunk count is the one ``cells.cell_chunks`` reports for the cell (the evaluation set in
    ``batch_size`` chunks), so the audit's progress bar is right; the CLEVER inputs are spread
    evenly over those chunks.
    """
    from robaudit.clever.section import skipped_row

    profile = ctx.profile
    model = _model(ctx, cell)
    norm, radius, _ = _spec(profile, model.clip)
    if not model.white_box:
        reason = "black-box model: CLEVER needs gradients"
        rows = [skipped_row(cell.defences, norm.value, TargetMode(t), radius, reason,
                            {"cell_id": cell.id, "seed": cell.seed(profile.seed)}) for t in profile.targets]
        return {"cell_id": cell.id, "kind": "clever", "status": "skipped", "reason": reason,
                "seed": cell.seed(profile.seed), "defences": list(cell.defences), "norm": norm.value,
                "radius": radius, "n": 0, "rows": rows, "seconds": 0.0}, None
    chunks = n_chunks(ctx.evalset.n, profile.batch_size)
    records = []
    for k in range(chunks):
        rec = finished.get(k)
        if rec is None:
            rec = run_clever_chunk(model, ctx.evalset, cell, profile, k, chunks, ctx.device)
            on_chunk(rec)
        records.append(rec)
    return clever_cell_entry(cell, profile, ctx.evalset, records, model.clip), None


def audit_clever_section(entries: list[dict[str, Any]], attack_rows: list[dict[str, Any]],
                         profile: Profile) -> dict[str, Any]:
    """The ``clever`` section of an audit report: every CLEVER cell's rows, and the rank correlation
    across stacks between mean CLEVER and the audit's own attack cells (no extra attacks run)."""
    from robaudit.engine.clever_job import clever_section

    spec = profile.clever
    assert spec is not None
    norm = CleverNorm.parse(spec.norm)
    params = CleverParams(nb_batches=spec.batches, batch_size=spec.batch_size)
    radius = next((float(e["radius"]) for e in entries if e.get("radius") is not None), spec.radius)
    config = {"norms": [norm.value], "targets": list(profile.targets),
              "defences": [list(s) for s in profile.defences], "radius": {norm.value: radius},
              "nb_batches": spec.batches, "batch_size": spec.batch_size, "points_per_input": params.points_per_input,
              "weibull_shapes": list(params.shapes), "poor_fit_p": params.poor_fit_p, "n": spec.inputs,
              "compare": False, "compare_attacks": {}}
    rows = [r for e in entries for r in e.get("rows", [])]
    return clever_section(config, rows, [], attack_rows)
