"""The ``clever`` job: inputs -> evaluation set per defence stack -> CLEVER per norm -> attacks to
compare with -> report (a plain dict with a ``clever`` section).

For every defence stack (the undefended model first) the same inputs are sampled with the seed
and kept where the (defended) model classifies them correctly, as ``audit`` does. CLEVER then
runs once per norm, estimating every class the requested target settings need from the same
sample points (untargeted: all other classes; least-likely / next-class: the target, chosen as
``robaudit attack`` chooses it). Sample points depend on the seed, the input's dataset index, the
norm and the batch number only, so stacks are compared on the same points. Defended models get
gradients through non-differentiable preprocessors by BPDA (``robaudit.defences``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from robaudit.attacks.base import TargetMode
from robaudit.attacks.targets import compute_targets
from robaudit.clever.compare import COMPARE_ATTACKS, comparison_entry, correlations, measure_attack
from robaudit.clever.estimate import estimate
from robaudit.clever.interface import CleverNorm, CleverParams
from robaudit.clever.section import classes_needed, skipped_row, summary_row
from robaudit.engine.evaluation import EvaluationSet, build_evaluation_set
from robaudit.engine.session import InputOptions, load_inputs, seed_everything
from robaudit.errors import ConfigError


class CleverObserver(Protocol):
    """Progress of a CLEVER job in *units*: one (input, sample batch) of CLEVER, or one input of an attack."""

    def plan_started(self, total_units: int) -> None: ...

    def step_started(self, label: str) -> None: ...

    def advance(self, units: int) -> None: ...

    def warn(self, text: str) -> None: ...


class NullCleverObserver:
    def plan_started(self, total_units: int) -> None:
        pass

    def step_started(self, label: str) -> None:
        pass

    def advance(self, units: int) -> None:
        pass

    def warn(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class CleverJob:
    """What ``robaudit clever`` runs."""

    inputs: InputOptions
    norms: tuple[CleverNorm, ...] = (CleverNorm.L2,)
    targets: tuple[TargetMode, ...] = (TargetMode.UNTARGETED,)
    stacks: tuple[tuple[str, ...], ...] = ((),)
    """Defence stacks; the undefended model ``()`` is always run first."""
    radius: dict[CleverNorm, float] = field(default_factory=dict)
    """Ball radius per norm; a norm not given uses its default scaled by the clip range's span."""
    params: CleverParams = field(default_factory=CleverParams)
    n: int | None = None
    """Inputs to sample (``None``: all)."""
    seed: int = 0
    compare: bool = True
    """Run the minimisation attacks of :data:`~robaudit.clever.compare.COMPARE_ATTACKS` and compare."""
    attack_batch_size: int = 128


def radii(job: CleverJob, clip: tuple[float, float]) -> dict[CleverNorm, float]:
    span = clip[1] - clip[0]
    out = {}
    for norm in job.norms:
        r = job.radius.get(norm, norm.default_radius * span)
        if not r > 0:
            raise ConfigError(f"the {norm.value} radius must be > 0, got {r}")
        out[norm] = float(r)
    return out


def _defended(model: Any, stack: tuple[str, ...]) -> Any:
    if not stack:
        return model
    try:
        from robaudit.defences import defend_model
    except ImportError as exc:
        raise ConfigError(f"--defences needs the defence engine (robaudit.defences), which is missing: {exc}") from None
    return defend_model(model, stack, bpda=True)


def run_clever_job(job: CleverJob, command: list[str], observer: CleverObserver | None = None) -> dict[str, Any]:
    """Run the job and return the report (``kind: clever``; attack rows of the comparison in ``results``)."""
    from robaudit.engine.attack_job import model_warnings
    from robaudit.report import build_report

    obs = observer or NullCleverObserver()
    if not job.norms or not job.targets:
        raise ConfigError("give at least one norm and one target setting")
    seed_everything(job.seed)
    inputs = load_inputs(job.inputs)
    model, data = inputs.model, inputs.data
    r_by_norm = radii(job, model.clip)
    warnings = list(model.info.notes)
    evalsets: list[tuple[tuple[str, ...], Any, EvaluationSet]] = []
    for stack in job.stacks:
        m = _defended(model, stack)
        seed_everything(job.seed)
        evalsets.append((stack, m, build_evaluation_set(m, data, job.n, job.seed, job.attack_batch_size)))
    base_evalset = evalsets[0][2]
    warnings += model_warnings(model, base_evalset, data)
    for w in warnings:
        obs.warn(w)

    total = 0
    for _, _, ev in evalsets:
        per_norm = ev.n * job.params.nb_batches
        total += per_norm * len(job.norms)
        if job.compare:
            for norm in job.norms:
                total += ev.n * sum(1 for _ in COMPARE_ATTACKS.get(norm, ())) * len(job.targets)
    obs.plan_started(total)

    rows: list[dict[str, Any]] = []
    comparison: list[dict[str, Any]] = []
    attack_rows: list[dict[str, Any]] = []
    for stack, m, ev in evalsets:
        key = "+".join(stack) or "none"
        targets = {mode: compute_targets(mode, ev.clean_logits, ev.y) for mode in job.targets}
        tlist = {mode: None if t is None else [int(v) for v in t] for mode, t in targets.items()}
        classes = [classes_needed(int(ev.y[i]), model.num_classes, job.targets,
                                  {mode: tlist[mode][i] for mode in job.targets if tlist[mode] is not None})
                   for i in range(ev.n)]
        for norm in job.norms:
            radius = r_by_norm[norm]
            if not model.white_box:
                for mode in job.targets:
                    rows.append(skipped_row(stack, norm.value, mode, radius,
                                            "black-box model: CLEVER needs gradients"))
                continue
            obs.step_started(f"clever {norm.value} / {key}")
            seed_everything(job.seed)
            run = estimate(m, ev.x, ev.y, classes, [int(i) for i in ev.indices], norm, radius, job.params,
                           seed=job.seed, clip=model.clip, device=model.device, progress=obs.advance)
            for note in run.notes:
                warnings.append(f"clever {norm.value} / {key}: {note}")
            scores_by_mode = {}
            for mode in job.targets:
                row = summary_row(run, mode, tlist[mode], stack)
                rows.append(row)
                scores_by_mode[mode] = [r["score"] for r in row["inputs"]]
            if not job.compare or norm not in COMPARE_ATTACKS:
                continue
            for mode in job.targets:
                t0 = time.perf_counter()
                measured = []
                for name in COMPARE_ATTACKS[norm]:
                    obs.step_started(f"{name.value} {norm.value} {mode.value} / {key}")
                    res = measure_attack(m, ev.x, ev.y, targets[mode], name, norm, mode, seed=job.seed,
                                         batch_size=job.attack_batch_size, defences=stack, device=str(model.device))
                    obs.advance(ev.n)
                    if res is None:
                        continue
                    measured.append(res)
                    attack_rows.append(res.row)
                comparison.append(comparison_entry(stack, norm, mode, [int(i) for i in ev.indices],
                                                   scores_by_mode[mode], radius, measured,
                                                   time.perf_counter() - t0))

    config = {
        "norms": [n.value for n in job.norms], "targets": [t.value for t in job.targets],
        "defences": [list(s) for s in job.stacks], "radius": {n.value: r for n, r in r_by_norm.items()},
        "nb_batches": job.params.nb_batches, "batch_size": job.params.batch_size,
        "points_per_input": job.params.points_per_input, "weibull_shapes": list(job.params.shapes),
        "poor_fit_p": job.params.poor_fit_p, "n": job.n, "compare": job.compare,
        "compare_attacks": {n.value: [a.value for a in COMPARE_ATTACKS.get(n, ())] for n in job.norms},
        "sampling": "uniform in the Lp ball around each input, clipped to the input range; points seeded per "
                    "(seed, dataset index, norm, batch)",
    }
    section = clever_section(config, rows, comparison, attack_rows)
    # a warning only where the stack drops inputs: its rows then rest on fewer of them
    stack_notes = [f"defence stack {'+'.join(s)}: {ev.n} of {ev.n_selected} sampled inputs classified correctly "
                   f"(clean accuracy {ev.clean_accuracy:.3f}); its rows score those {ev.n}"
                   for s, _, ev in evalsets if s and ev.n < ev.n_selected]
    report = build_report(command=command, seed=job.seed, device=model.device, model=inputs.model_section(),
                          data=inputs.data_section(base_evalset),
                          config={"clever": config, "n": job.n, "batch_size": job.attack_batch_size},
                          results=attack_rows, warnings=warnings + stack_notes)
    report["kind"] = "clever"
    report["clever"] = section
    return report


def clever_section(config: dict[str, Any], rows: list[dict[str, Any]], comparison: list[dict[str, Any]],
                   attack_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Assemble the report's ``clever`` section (correlations are computed here)."""
    return {"config": config, "rows": rows, "comparison": comparison,
            "correlation": correlations(rows, attack_rows, comparison)}
