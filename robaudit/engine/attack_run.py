"""Run every (attack, target) cell of an attack plan on an evaluation set and produce result rows.

Success is measured here, by the engine, on the model's own predictions for the returned
examples (never trusted from the attack), and only on correctly classified inputs: targeted
success means ``prediction == target``, untargeted ``prediction != label``. Before a result is
counted, every example is checked against the clip range and, for fixed-eps attacks, the
eps-ball; a violation is an internal error (exit 3), not a success.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import torch

from robaudit.attacks.base import (Attack, AttackKind, Criterion, Norm, TargetMode, nonfinite_rows,
                                   params_from_overrides)
from robaudit.attacks.registry import AttackName, get_attack_class
from robaudit.attacks.targets import compute_targets
from robaudit.engine.evaluation import EvaluationSet
from robaudit.engine.observer import NullObserver, Observer
from robaudit.errors import AttackFailure, ConfigError
from robaudit.metrics import perturbation_norms, summarize
from robaudit.models import Classifier
from robaudit.tolerance import bound_slack, clip_slack


@dataclass(frozen=True)
class AttackPlan:
    """What to run: attacks x target settings, with shared budget options."""

    attacks: tuple[AttackName, ...]
    targets: tuple[TargetMode, ...]
    norm: Norm | None = None
    """Norm for every attack; ``None`` uses each attack's own default norm."""
    eps: float | None = None
    """Budget for fixed-eps attacks; ``None`` uses each attack's documented default."""
    backend: str = "torch"
    params: dict[AttackName, dict[str, str]] = field(default_factory=dict)
    """Per-attack parameter overrides (``key -> value``)."""
    batch_size: int = 128
    seed: int = 0
    device: str | None = None
    examples: int = 0
    """Examples (clean / adversarial / perturbation images) kept per cell for the HTML report."""

    def cells(self) -> list[tuple[AttackName, TargetMode]]:
        return [(a, t) for a in self.attacks for t in self.targets]


def make_attack(name: AttackName, plan: AttackPlan) -> Attack:
    """Instantiate one attack from the plan (parameter overrides validated here)."""
    cls = get_attack_class(name, plan.backend)
    params = params_from_overrides(cls.Params, plan.params.get(name, {}), name.value)
    norm = plan.norm if plan.norm is not None else cls.norms[0]
    if norm not in cls.norms:
        return _Unsupported(cls, norm)  # type: ignore[return-value]
    eps = plan.eps if cls.kind is AttackKind.FIXED_EPS else None
    return cls(params, norm=norm, eps=eps)


class _Unsupported:
    """Marker for an attack that cannot run in the requested norm."""

    def __init__(self, cls: type[Attack], norm: Norm) -> None:
        self.cls = cls
        self.norm = norm


def run_attack_plan(model: Classifier, evalset: EvaluationSet, plan: AttackPlan,
                    observer: Observer | None = None,
                    on_row: Callable[[dict[str, Any]], None] | None = None,
                    examples: list[dict[str, Any]] | None = None,
                    adversarial: list[AdversarialSet] | None = None) -> list[dict[str, Any]]:
    """Run all cells of ``plan``; returns one result row per (attack, target), each also passed to
    ``on_row``. With ``plan.examples``, each cell that ran appends its first examples to ``examples``;
    each cell that ran appends all its examples to ``adversarial`` when given (before ``on_row``)."""
    obs = observer or NullObserver()
    # Validate every attack's configuration before spending time on any of them.
    attacks = {name: make_attack(name, plan) for name in plan.attacks}
    cells = plan.cells()
    obs.plan_started(len(cells))
    rows = []
    for name, mode in cells:
        label = f"{name.value} / {mode.value}"
        obs.cell_started(label)
        row = run_cell(model, evalset, attacks[name], name, mode, plan, examples,
                       on_batch=lambda k, label=label: obs.inputs_done(label, k, evalset.n),
                       adversarial=adversarial)
        rows.append(row)
        if on_row is not None:
            on_row(row)
        obs.cell_finished(label, row)
    return rows


def _base_row(name: AttackName, mode: TargetMode, attack: Attack | _Unsupported, plan: AttackPlan) -> dict[str, Any]:
    if isinstance(attack, _Unsupported):
        return {"attack": name.value, "backend": attack.cls.backend, "target": mode.value,
                "norm": attack.norm.value, "eps": None, "defences": [], "params": {}}
    return {"attack": name.value, "backend": attack.backend, "target": mode.value, "norm": attack.norm.value,
            "eps": attack.eps, "defences": [], "params": dataclasses.asdict(attack.params)}


def _skipped(row: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
    row.update({"status": status, "reason": reason, "n": 0, "n_success": 0, "success_rate": None,
                "l2_mean": None, "l2_median": None, "linf_mean": None, "linf_median": None, "linf_max": None,
                "l2_mean_all": None, "l2_median_all": None, "linf_mean_all": None, "linf_median_all": None,
                "l0_mean": None, "seconds": 0.0, "seconds_per_image": None,
                "forward_passes_per_image": None, "backward_passes_per_image": None})
    return row


def run_cell(model: Classifier, evalset: EvaluationSet, attack: Attack | _Unsupported, name: AttackName,
             mode: TargetMode, plan: AttackPlan, examples: list[dict[str, Any]] | None = None,
             on_batch: Callable[[int], None] | None = None,
             adversarial: list[AdversarialSet] | None = None) -> dict[str, Any]:
    """One (attack, target) cell: craft, verify bounds, measure success and distances (and append
    its first ``plan.examples`` examples to ``examples``, all of them to ``adversarial``);
    ``on_batch(k)``: ``k`` inputs attacked."""
    row = _base_row(name, mode, attack, plan)
    if isinstance(attack, _Unsupported):
        supported = ", ".join(n.value for n in attack.cls.norms)
        return _skipped(row, "unsupported", f"norm {attack.norm.value} not supported (supported: {supported})")
    if not attack.supports(mode):
        return _skipped(row, "unsupported", f"{name.value} does not support the {mode.value} setting")
    if attack.needs_gradients and not model.white_box:
        return _skipped(row, "skipped", "black-box model: only query-based attacks run")

    targets = compute_targets(mode, evalset.clean_logits, evalset.y)
    with torch.enable_grad():
        out = attack.generate(model, evalset.x, evalset.y, targets, clip=model.clip,
                              batch_size=plan.batch_size, seed=plan.seed, device=plan.device, on_batch=on_batch)
    x_adv = out.x_adv
    if x_adv.shape != evalset.x.shape:
        raise AttackFailure(f"attack {name.value} returned shape {tuple(x_adv.shape)}, expected {tuple(evalset.x.shape)}")
    dist = perturbation_norms(evalset.x, x_adv)
    verify_bounds(attack, evalset.x, x_adv, dist, model.clip)

    logits = model.predict(x_adv, batch_size=plan.batch_size)
    success = Criterion(evalset.y, targets).is_adversarial(logits)
    n = evalset.n
    n_success = int(success.sum())
    l2_s, linf_s = summarize(dist.l2[success]), summarize(dist.linf[success])
    l2_a, linf_a = summarize(dist.l2), summarize(dist.linf)
    row.update({
        "status": "ok", "reason": None, "n": n, "n_success": n_success, "success_rate": n_success / n,
        "l2_mean": l2_s["mean"], "l2_median": l2_s["median"],
        "linf_mean": linf_s["mean"], "linf_median": linf_s["median"], "linf_max": linf_s["max"],
        "l2_mean_all": l2_a["mean"], "l2_median_all": l2_a["median"],
        "linf_mean_all": linf_a["mean"], "linf_median_all": linf_a["median"],
        "l0_mean": summarize(dist.l0[success])["mean"],
        "seconds": out.seconds, "seconds_per_image": out.seconds / n,
        "forward_passes_per_image": out.forward_passes / n, "backward_passes_per_image": out.backward_passes / n,
        **outcome_counts(out, logits),
    })
    if examples is not None and plan.examples > 0:
        from robaudit.engine.cells import example_records

        samples = example_records(evalset.x, x_adv, model.clip, 0, plan.examples, evalset.indices, evalset.y,
                                  logits.argmax(dim=1), targets, success)
        examples.append({"cell_id": f"{name.value}/{mode.value}", "label": name.value, "attack": name.value,
                         "target": mode.value, "defences": [], "samples": samples})
    if adversarial is not None:
        adversarial.append(AdversarialSet(row=row, x_adv=x_adv.detach().float().cpu(),
                                          pred=logits.argmax(dim=1).cpu(), success=success.cpu(),
                                          targets=None if targets is None else targets.cpu()))
    return row


@dataclass(frozen=True)
class AdversarialSet:
    """Every example one cell returned (CPU tensors, in the evaluation set's order) and its row."""

    row: dict[str, Any]
    x_adv: torch.Tensor
    pred: torch.Tensor
    """The model's prediction on each example."""
    success: torch.Tensor
    """Counted as a success (targeted: ``pred == target``; untargeted: ``pred != label``)."""
    targets: torch.Tensor | None


COUNT_FIELDS = ("nonfinite_logits", "nonfinite_grads", "nonfinite_examples", "search_exhausted", "no_start")
"""A row's per-input counts of what went wrong inside the attack (summed over a cell's chunks)."""


def outcome_counts(out: Any, logits: torch.Tensor) -> dict[str, int]:
    """Every :data:`COUNT_FIELDS` count of ``out`` (an :class:`~robaudit.attacks.base.AttackOutput`)
    judged by ``logits``."""
    return {**nonfinite_fields(out, logits), "search_exhausted": out.search_exhausted, "no_start": out.no_start}


def nonfinite_fields(out: Any, logits: torch.Tensor) -> dict[str, int]:
    """The row's NaN/inf counts: the attack's forward and backward passes (``out``, an
    :class:`~robaudit.attacks.base.AttackOutput`) plus the judgement ``logits`` of its examples."""
    return {"nonfinite_logits": out.nonfinite_logits + int(nonfinite_rows(logits)),
            "nonfinite_grads": out.nonfinite_grads, "nonfinite_examples": out.nonfinite_examples}


def verify_bounds(attack: Attack, x: torch.Tensor, x_adv: torch.Tensor, dist: Any, clip: tuple[float, float]) -> None:
    """Refuse (exit 3) any example outside the clip range or, for fixed-eps attacks, the eps-ball."""
    if not torch.isfinite(x_adv).all():
        raise AttackFailure(f"attack {attack.name} returned non-finite values")
    lo, hi = clip
    slack = clip_slack(clip)
    if float(x_adv.min()) < lo - slack or float(x_adv.max()) > hi + slack:
        raise AttackFailure(f"attack {attack.name} left the clip range [{lo}, {hi}]")
    if attack.kind is AttackKind.FIXED_EPS and attack.eps is not None:
        measured = dist.linf if attack.norm is Norm.LINF else dist.l2 if attack.norm is Norm.L2 else None
        if measured is not None and float(measured.max()) > attack.eps + bound_slack(
                attack.eps, attack.norm.value, clip, x_adv[0].numel()):
            raise AttackFailure(
                f"attack {attack.name} exceeded its {attack.norm.value} budget: "
                f"{float(measured.max()):.6g} > eps {attack.eps:.6g}")


def check_plan(plan: AttackPlan) -> None:
    """Cheap validation before loading anything heavy."""
    if plan.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {plan.batch_size}")
    if plan.eps is not None and not (math.isfinite(plan.eps) and plan.eps >= 0):
        raise ConfigError(f"--eps must be a finite number >= 0, got {plan.eps}")
    why = []  # a run whose every cell is unsupported exits 0 with no result: a gate would read it as a pass
    for name in plan.attacks:
        cls = get_attack_class(name, plan.backend)
        if plan.norm is not None and plan.norm not in cls.norms:
            why.append(f"{name.value} does not support norm {plan.norm.value} "
                       f"(supported: {', '.join(n.value for n in cls.norms)})")
            continue
        if any(cls.supports(t) for t in plan.targets):
            return
        why.append(f"{name.value} does not support {', '.join(t.value for t in plan.targets)}")
    if why:
        raise ConfigError(f"nothing to run: {'; '.join(why)}")
