"""The ``attack`` job: inputs -> evaluation set -> attack plan -> report (a plain dict)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import numpy as np

from robaudit.attacks.base import AttackKind, Norm
from robaudit.attacks.registry import get_attack_class
from robaudit.engine.attack_run import AdversarialSet, AttackPlan, check_plan, run_attack_plan
from robaudit.engine.evaluation import EvaluationSet, build_evaluation_set
from robaudit.engine.observer import NullObserver, Observer
from robaudit.engine.session import InputOptions, load_inputs, seed_everything
from robaudit.models import Classifier
from robaudit.models.checks import (GradientCheck, batch_dependent, gradient_check, is_stochastic,
                                    looks_like_probabilities)
from robaudit.report import build_report
from robaudit.report.adversarial_npz import adversarial_arrays
from robaudit.report.validity import evaluation_warnings


@dataclass(frozen=True)
class AttackJob:
    inputs: InputOptions
    plan: AttackPlan
    n: int | None = None
    """How many inputs to sample (``None``: all)."""


def default_eps_warnings(defaulted: list[str], clip: tuple[float, float]) -> list[str]:
    """Default budgets (8/255 Linf, 0.5 L2, ...) are for pixels in [0, 1]; on another clip range they are
    a different, usually tiny, budget. ``defaulted``: the fixed-eps attacks left at their default eps."""
    span = clip[1] - clip[0]
    if not defaulted or abs(span - 1.0) <= 1e-6:
        return []
    return [f"{', '.join(defaulted)} ran at default eps meant for pixels in [0, 1], but the clip range is "
            f"[{clip[0]:g}, {clip[1]:g}]: give the budget in this range (e.g. --eps {8 / 255 * span:.4g} for "
            f"8/255 of it under linf)"]


def plan_warnings(plan: AttackPlan, clip: tuple[float, float],
                  input_shape: tuple[int, ...] | None = None) -> list[str]:
    """Warnings about the budget: an eps no attack uses, or one that allows replacing the whole input."""
    if plan.eps is None:
        return default_eps_warnings([n.value for n in plan.attacks
                                     if get_attack_class(n, plan.backend).kind is AttackKind.FIXED_EPS], clip)
    norms = set()
    for name in plan.attacks:
        cls = get_attack_class(name, plan.backend)
        norm = plan.norm if plan.norm is not None else cls.norms[0]
        if cls.kind is AttackKind.FIXED_EPS and norm in cls.norms:
            norms.add(norm)
    if not norms:
        return [f"--eps {plan.eps:g} is ignored: none of the attacks run has an eps budget "
                "(minimisation attacks report the distance they need)"]
    out = []
    span = clip[1] - clip[0]
    if Norm.LINF in norms and plan.eps >= span:
        out.append(f"eps {plan.eps:g} is not below the input range {span:g}: under linf every input can be replaced "
                   f"entirely (did you mean {plan.eps:g}/255 = {plan.eps / 255:.4g}?)")
    if Norm.L2 in norms and input_shape:
        diameter = span * math.sqrt(math.prod(input_shape))
        if plan.eps >= diameter:
            out.append(f"eps {plan.eps:g} is at least the largest possible L2 distance between two inputs "
                       f"({diameter:.4g}): every input can be replaced entirely")
    return out


def class_count_warning(data: Any, num_classes: int) -> str | None:
    """An image folder whose class folders, numbered in sorted name order, are not one per model class:
    from the first missing (or extra) class on, every label is some other class's."""
    names = tuple(getattr(data, "class_names", ()) or ())
    if getattr(data, "format", None) != "folder" or not names or all(n.isascii() and n.isdigit() for n in names):
        return None
    if len(names) == num_classes:
        return None
    shown = ", ".join(f"{n}={i}" for i, n in enumerate(names[:12])) + (", ..." if len(names) > 12 else "")
    return (f"the image folder has {len(names)} class folders but the model has {num_classes} classes: labels are "
            f"numbered by sorted folder name ({shown}), so after a missing or extra class every label names "
            "another class and accuracy and success rates are meaningless; add the missing class folders (an empty "
            "one keeps the numbering) or name the folders by label (0, 1, ...)")


RANGE_FRACTION = 1 / 8
"""Images whose pixels span less than this fraction of the input range get a warning."""


def range_warning(data: Any, clip: tuple[float, float]) -> str | None:
    """A warning when the images use a sliver of the input range: 12-bit pixels stored as uint16 (scaled
    by 65535, so they top out at 0.062) or floats divided by 255 twice (0.0039). They load without
    error, and the model then sees near-black images: low accuracy, and eps and distances measured
    against a range the images do not use."""
    x = getattr(data, "x", None)
    lo, hi = float(clip[0]), float(clip[1])
    if x is None or getattr(x, "size", 0) == 0 or hi <= lo:
        return None
    bottom, top = float(np.min(x)), float(np.max(x))
    if top - bottom >= RANGE_FRACTION * (hi - lo):
        return None
    return (f"the images span only [{bottom:.4g}, {top:.4g}] of the input range [{lo:g}, {hi:g}] "
            f"({(top - bottom) / (hi - lo):.1%} of it): pixels scaled twice (divided by 255 again?) or 12-bit "
            "data stored as uint16 (scaled by 65535)? rescale them to the input range, or eps and distances "
            "are measured against a range the images do not use")


def model_warnings(model: Classifier, evalset: EvaluationSet, data: Any = None) -> list[str]:
    """Validity flags about the model itself (results are still reported, but flagged); with ``data``,
    also about how the data's labels meet the model's classes."""
    out = []
    mismatch = class_count_warning(data, model.num_classes) if data is not None else None
    if mismatch:
        out.append(mismatch)
    narrow = range_warning(data, model.clip) if data is not None else None
    if narrow:
        out.append(narrow)
    if evalset.n_requested is not None and evalset.n_requested > evalset.n_selected:
        out.append(f"{evalset.n_requested} inputs were asked for (-n or samples) but the data holds "
                   f"{evalset.n_selected}: all of them were used")
    if evalset.n_nonfinite:
        out.append(f"the model returns NaN/inf logits for {evalset.n_nonfinite} of the {evalset.n_selected} sampled "
                   "clean inputs: they count as misclassified and are not attacked; the model is numerically "
                   "unstable and its results are unreliable")
    classes = model.num_classes
    if classes > 1 and evalset.n_selected >= 2 * classes and evalset.clean_accuracy <= 1.0 / classes:
        out.append(f"clean accuracy {evalset.clean_accuracy:.1%} is no better than chance (1/{classes} = "
                   f"{1 / classes:.1%}): check that the model and the data belong together (a TorchScript model "
                   f"does not declare its input shape, so e.g. 28x28 gray digits run through a 32x32 RGB network)"
                   f"{evalset.label_hint}")
    if evalset.normalize_hint:
        out.append(f"clean accuracy {evalset.clean_accuracy:.1%} with --mean/--std; {evalset.normalize_hint}")
    if looks_like_probabilities(evalset.clean_logits):
        out.append("the model outputs probabilities (rows sum to 1), not logits: gradients are weak and "
                   "gradient attacks understate its vulnerability; export the model without the final softmax")
    probe = evalset.x[:8].to(model.device)
    if is_stochastic(model, probe):
        out.append("the model is randomised (two forward passes of the same input differ): plain gradient attacks "
                   "are unreliable against it and success rates may be understated")
    elif batch_dependent(model, probe):
        out.append("the model's output for an input depends on the other inputs in its batch (batch-norm "
                   "statistics in training mode?): results depend on the batch size; export the model in eval mode")
    check = _gradient_check(model, probe, evalset.y[:8]) if model.white_box else None
    if check is not None:
        where = [f"the {what} of {k} of {check.n} clean inputs checked" for what, k in
                 (("logits", check.nonfinite_logits), ("input gradients", check.nonfinite_grads)) if k]
        if where:
            out.append(f"NaN/inf in {' and in '.join(where)}: gradient attacks cannot follow them and their "
                       "results are unreliable")
        if check.zero_grads:
            out.append(f"gradient masking suspected: the input gradient of the logit margin is exactly zero for "
                       f"{check.zero_grads} of {check.n} clean inputs checked, so gradient attacks have nothing to "
                       "follow and understate the model's vulnerability; try hopskipjump (decision-based)")
    return out


def _gradient_check(model: Classifier, x: Any, y: Any) -> GradientCheck | None:
    """:func:`gradient_check` one input at a time (the least memory, and no batch effects).

    Stops at the first error (out of memory, or a model that fails): the attacks meet the same
    error and report it properly. ``None`` when not even one input could be checked.
    """
    done = []
    for i in range(int(x.shape[0])):
        try:
            done.append(gradient_check(model, x[i : i + 1], y[i : i + 1]))
        except Exception:  # noqa: BLE001 - a check must not fail the run in a way the attack would not
            break
    if not done:
        return None
    return GradientCheck(n=len(done), nonfinite_logits=sum(c.nonfinite_logits for c in done),
                         nonfinite_grads=sum(c.nonfinite_grads for c in done),
                         zero_grads=sum(c.zero_grads for c in done))


def run_attack_job(job: AttackJob, command: list[str], observer: Observer | None = None,
                   checkpoint: Callable[[dict[str, Any]], None] | None = None,
                   save_adversarial: Callable[[dict[str, np.ndarray]], None] | None = None) -> dict[str, Any]:
    """Run the job and return the report. ``checkpoint`` receives a partial report (``"partial": true``)
    after every finished cell, so a long run that dies keeps what it finished. ``save_adversarial``
    receives the arrays of every example crafted so far (:func:`adversarial_arrays`) after each
    cell that ran, before the report's checkpoint."""
    obs = observer or NullObserver()
    check_plan(job.plan)
    seed_everything(job.plan.seed)
    inputs = load_inputs(job.inputs)
    model, data = inputs.model, inputs.data
    check_plan_for_model(job.plan, model.num_classes)
    plan = AttackPlan(**{**job.plan.__dict__, "device": str(model.device)})
    warnings = plan_warnings(plan, model.clip, model.info.input_shape) + list(model.info.notes)
    for w in warnings:
        obs.warn(w)
    evalset = build_evaluation_set(model, data, job.n, plan.seed, plan.batch_size)
    for w in model_warnings(model, evalset, data):
        warnings.append(w)
        obs.warn(w)
    model_dict = inputs.model_section()
    data_dict = inputs.data_section(evalset)
    config = {
        "attacks": [a.value for a in plan.attacks], "targets": [t.value for t in plan.targets],
        "norm": plan.norm.value if plan.norm else None, "eps": plan.eps, "backend": plan.backend,
        "params": {k.value: v for k, v in plan.params.items()}, "n": job.n, "batch_size": plan.batch_size,
        "examples": plan.examples,
        "attack_defaults": _defaults(plan),
    }

    examples: list[dict[str, Any]] = []

    def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
        out = build_report(command=command, seed=plan.seed, device=model.device, model=model_dict,
                           data=data_dict, config=config, results=rows,
                           warnings=warnings + evaluation_warnings(rows))
        if examples:
            out["examples"] = list(examples)
        return out

    done: list[dict[str, Any]] = []
    adversarial: list[AdversarialSet] | None = [] if save_adversarial is not None else None
    saved = 0

    def on_row(row: dict[str, Any]) -> None:
        nonlocal saved
        done.append(row)
        if save_adversarial is not None and adversarial and len(adversarial) > saved:
            saved = len(adversarial)
            save_adversarial(adversarial_arrays(evalset.x, evalset.y, evalset.indices, adversarial, model.clip,
                                                {"model": model_dict.get("path"), "data": data_dict.get("path"),
                                                 "seed": plan.seed}))
        cells = plan.cells()
        if checkpoint is not None and len(done) < len(cells):
            unfinished = [f"{a.value}/{t.value}" for a, t in cells[len(done):]]
            checkpoint({**report(list(done)), "partial": True, "unfinished": unfinished})

    run_attack_plan(model, evalset, plan, obs, on_row=on_row, examples=examples, adversarial=adversarial)
    return report(done)


def check_plan_for_model(plan: AttackPlan, num_classes: int) -> None:
    """What :func:`check_plan` cannot see before the model is loaded: every attack's ``loss`` must
    suit the model's number of classes (DLR: 3, targeted DLR: 4) in every cell it will run, so a bad
    plan exits 2 before any cell runs instead of after a partial report."""
    from robaudit.attacks._losses import check_attack_loss

    for name in plan.attacks:
        cls = get_attack_class(name, plan.backend)
        if plan.norm is not None and plan.norm not in cls.norms:
            continue  # the cell is reported unsupported, the loss never runs
        check_attack_loss(cls, plan.params.get(name, {}), name.value, plan.targets, num_classes)


def _defaults(plan: AttackPlan) -> dict[str, Any]:
    out = {}
    for name in plan.attacks:
        cls = get_attack_class(name, plan.backend)
        out[name.value] = {"kind": cls.kind.value, "norms": [n.value for n in cls.norms],
                           "default_eps": {n.value: e for n, e in cls.default_eps.items()}
                           if cls.kind is AttackKind.FIXED_EPS else None}
    return out
