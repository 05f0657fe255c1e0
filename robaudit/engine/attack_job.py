"""The ``attack`` job: inputs -> evaluation set -> attack plan -> report (a plain dict)."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from robaudit.attacks.base import AttackKind
from robaudit.attacks.registry import get_attack_class
from robaudit.engine.attack_run import AttackPlan, check_plan, run_attack_plan
from robaudit.engine.evaluation import EvaluationSet, build_evaluation_set
from robaudit.engine.observer import NullObserver, Observer
from robaudit.engine.session import InputOptions, load_inputs, seed_everything
from robaudit.models import Classifier
from robaudit.models.checks import is_stochastic, looks_like_probabilities
from robaudit.report import build_report


@dataclass(frozen=True)
class AttackJob:
    inputs: InputOptions
    plan: AttackPlan
    n: int | None = None
    """How many inputs to sample (``None``: all)."""


def plan_warnings(plan: AttackPlan, clip: tuple[float, float]) -> list[str]:
    out = []
    span = clip[1] - clip[0]
    if plan.eps is not None and plan.eps > span:
        out.append(f"eps {plan.eps:g} is larger than the input range {span:g}: every input can be replaced "
                   f"entirely (did you mean {plan.eps:g}/255 = {plan.eps / 255:.4g}?)")
    return out


def model_warnings(model: Classifier, evalset: EvaluationSet) -> list[str]:
    """Validity flags about the model itself (results are still reported, but flagged)."""
    out = []
    if looks_like_probabilities(evalset.clean_logits):
        out.append("the model outputs probabilities (rows sum to 1), not logits: gradients are weak and "
                   "gradient attacks understate its vulnerability; export the model without the final softmax")
    if is_stochastic(model, evalset.x[:8].to(model.device)):
        out.append("the model is randomised (two forward passes of the same input differ): plain gradient attacks "
                   "are unreliable against it and success rates may be understated")
    return out


def run_attack_job(job: AttackJob, command: list[str], observer: Observer | None = None,
                   checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the job and return the report. ``checkpoint`` receives a partial report (``"partial": true``)
    after every finished cell, so a long run that dies keeps what it finished."""
    obs = observer or NullObserver()
    check_plan(job.plan)
    seed_everything(job.plan.seed)
    inputs = load_inputs(job.inputs)
    model, data = inputs.model, inputs.data
    plan = AttackPlan(**{**job.plan.__dict__, "device": str(model.device)})
    warnings = plan_warnings(plan, model.clip) + list(model.info.notes)
    for w in warnings:
        obs.warn(w)
    evalset = build_evaluation_set(model, data, job.n, plan.seed, plan.batch_size)
    for w in model_warnings(model, evalset):
        warnings.append(w)
        obs.warn(w)
    model_dict = inputs.model_section()
    data_dict = inputs.data_section(evalset)
    config = {
        "attacks": [a.value for a in plan.attacks], "targets": [t.value for t in plan.targets],
        "norm": plan.norm.value if plan.norm else None, "eps": plan.eps, "backend": plan.backend,
        "params": {k.value: v for k, v in plan.params.items()}, "n": job.n, "batch_size": plan.batch_size,
        "attack_defaults": _defaults(plan),
    }

    def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return build_report(command=command, seed=plan.seed, device=model.device, model=model_dict,
                            data=data_dict, config=config, results=rows, warnings=warnings)

    done: list[dict[str, Any]] = []

    def on_row(row: dict[str, Any]) -> None:
        done.append(row)
        if checkpoint is not None and len(done) < len(plan.cells()):
            checkpoint({**report(list(done)), "partial": True})

    run_attack_plan(model, evalset, plan, obs, on_row=on_row)
    return report(done)


def _defaults(plan: AttackPlan) -> dict[str, Any]:
    out = {}
    for name in plan.attacks:
        cls = get_attack_class(name, plan.backend)
        out[name.value] = {"kind": cls.kind.value, "norms": [n.value for n in cls.norms],
                           "default_eps": {n.value: e for n, e in cls.default_eps.items()}
                           if cls.kind is AttackKind.FIXED_EPS else None}
    return out
