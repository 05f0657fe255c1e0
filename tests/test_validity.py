"""Validity warnings over result rows (robaudit.report.validity): pure functions, synthetic rows (fast)."""

from __future__ import annotations

from typing import Any

import pytest

from robaudit.report.validity import (
    black_box_warnings,
    convergence_warnings,
    eps_monotonicity_warnings,
    evaluation_warnings,
    nonfinite_warnings,
    registry_black_box,
    success_within,
    tolerance,
)


def row(attack: str, sr: float, *, eps: float | None = None, norm: str = "linf", n: int = 100,
        target: str = "untargeted", label: str | None = None, params: dict[str, Any] | None = None,
        median: float | None = None, linf_max: float | None = None, **extra: Any) -> dict[str, Any]:
    k = round(sr * n)
    return {
        "attack": attack, "backend": "torch", "target": target, "norm": norm, "eps": eps, "defences": [],
        "params": params or {}, "status": "ok", "reason": None, "n": n, "n_success": k, "success_rate": sr,
        "l2_median": median if norm == "l2" else None, "linf_median": median if norm == "linf" else None,
        "linf_max": linf_max, "forward_passes_per_image": 10.0, "backward_passes_per_image": 10.0,
        **({"label": label} if label else {}), **extra,
    }


def _bb(r: dict[str, Any]) -> bool:
    return r["attack"] == "hopskipjump"


def test_tolerance_is_two_inputs_and_two_points():
    assert tolerance(1000) == 0.02 and tolerance(50) == 0.04 and tolerance(0) == 1.0


def test_a_consistent_evaluation_has_no_warnings():
    rows = [
        row("fgsm", 0.3, eps=0.1), row("pgd", 0.5, eps=0.1, label="pgd-a", params={"steps": 10}),
        row("pgd", 0.9, eps=0.3, label="pgd-b", params={"steps": 10}),
        row("pgd", 0.51, eps=0.1, label="pgd-c", params={"steps": 40}),  # within tolerance: converged
        row("cw-l2", 1.0, norm="l2", median=1.2, params={"max_iter": 50}),
        row("hopskipjump", 1.0, norm="l2", median=1.5),  # weaker than the white-box attack: fine
        {**row("jsma", 0.0), "status": "skipped", "success_rate": None, "n": 0},
    ]
    assert evaluation_warnings(rows, _bb) == []


def test_nonfinite_counts_are_reported_with_their_denominators():
    rows = [row("pgd", 0.4, eps=0.1, nonfinite_logits=12, nonfinite_grads=30, nonfinite_examples=3),
            row("fgsm", 0.2, eps=0.1, nonfinite_logits=0, nonfinite_grads=0, nonfinite_examples=0)]
    (w,) = nonfinite_warnings(rows)
    assert w.startswith("non-finite values in pgd / untargeted: ")
    assert "NaN/inf logits in 12 of 1100 forward passes" in w  # 10 per image + the judgement of 100
    assert "NaN/inf input gradients in 30 of 1000 backward passes" in w
    assert "3 of 100 adversarial examples came back NaN/inf and count as failures" in w
    assert evaluation_warnings(rows, _bb) == [w]


def test_black_box_beats_white_box_at_a_fixed_eps():
    hsj = row("hopskipjump", 0.95, median=0.04, linf_max=0.08)
    pgd = row("pgd", 0.30, eps=0.1)
    (w,) = black_box_warnings([hsj, pgd], _bb)
    assert w.startswith("unreliable evaluation: the black-box attack hopskipjump / untargeted beats every white-box")
    assert ("at linf eps 0.1 (it breaks at least 95% of the inputs within that budget, "
            "the best gradient attack 30%)") in w
    assert black_box_warnings([hsj, row("pgd", 0.94, eps=0.1)], _bb) == []  # within tolerance
    assert black_box_warnings([hsj, pgd, row("apgd", 0.97, eps=0.1)], _bb) == []  # one white-box attack is as strong
    # a white-box attack at a smaller eps also counts: its examples are inside the larger budget too
    assert black_box_warnings([hsj, pgd, row("bim", 0.97, eps=0.05)], _bb) == []
    # other norm, target or defence stack: not comparable
    assert black_box_warnings([hsj, row("pgd", 0.3, eps=0.1, norm="l2")], _bb) == []
    assert black_box_warnings([hsj, row("pgd", 0.3, eps=0.1, target="next-class")], _bb) == []
    assert black_box_warnings([hsj, {**pgd, "defences": ["jpeg"]}], _bb) == []


def test_black_box_lower_bound_from_the_median():
    hsj = row("hopskipjump", 0.8, norm="l2", median=0.5)  # 80 successes, at least 40 within 0.5
    assert success_within(hsj, 1.0) == 0.4 and success_within(hsj, 0.4) == 0.0
    assert len(black_box_warnings([hsj, row("fgsm", 0.2, eps=1.0, norm="l2")], _bb)) == 1
    assert black_box_warnings([hsj, row("fgsm", 0.45, eps=1.0, norm="l2")], _bb) == []
    assert success_within(row("pgd", 0.5, eps=0.1), 0.2) == 0.5 and success_within(row("pgd", 0.5, eps=0.3), 0.2) == 0


def test_black_box_beats_white_box_minimisation_attacks():
    hsj = row("hopskipjump", 1.0, norm="l2", median=0.8)
    cw, df = row("cw-l2", 1.0, norm="l2", median=1.5), row("deepfool", 1.0, norm="l2", median=1.2)
    (w,) = black_box_warnings([hsj, cw, df], _bb)
    assert ("median l2 distance 0.8 over the 100% of inputs it broke, the best gradient attack deepfool / "
            "untargeted 1.2 over 100%") in w
    assert black_box_warnings([hsj, cw, row("deepfool", 1.0, norm="l2", median=0.85)], _bb) == []
    # a white-box attack that found nothing has no median: beaten when the black-box one succeeds
    failed = {**row("cw-l2", 0.0, norm="l2"), "l2_median": None}
    assert len(black_box_warnings([hsj, failed], _bb)) == 1


def test_a_black_box_attack_that_broke_fewer_inputs_is_not_compared_by_median():
    """QA: HopSkipJump broke 3 of 5 digits with median L2 1.68, C&W all 5 with median 1.95; on the 3
    both broke C&W was closer every time (its median covered the two hardest inputs too)."""
    cw = row("cw-l2", 1.0, norm="l2", median=1.95, n=5)
    assert black_box_warnings([row("hopskipjump", 0.6, norm="l2", median=1.678, n=5), cw], _bb) == []
    # as many successes and a median 14% smaller: still flagged
    assert len(black_box_warnings([row("hopskipjump", 1.0, norm="l2", median=1.678, n=5), cw], _bb)) == 1


def test_a_white_box_attack_that_broke_only_easy_inputs_is_still_beaten():
    """QA: DeepFool broke 5% of the inputs (one easy digit, tiny median), HopSkipJump 95%; the small
    median of the one easy success must not switch the warning off."""
    df = row("deepfool", 0.05, norm="l2", median=0.3, n=100)
    (w,) = black_box_warnings([row("hopskipjump", 0.95, norm="l2", median=1.9, n=100), df], _bb)
    assert "over the 95% of inputs it broke" in w and "deepfool / untargeted 0.3 over 5%" in w
    # within the tolerance (2 points at n = 100) the medians decide again: one point more, larger median
    assert black_box_warnings([row("hopskipjump", 0.06, norm="l2", median=1.9, n=100), df], _bb) == []


def test_registry_decides_which_attacks_are_black_box():
    assert registry_black_box({"attack": "hopskipjump", "backend": "torch"})
    assert registry_black_box({"attack": "hopskipjump", "backend": "art"})
    assert not registry_black_box({"attack": "pgd", "backend": "torch"})
    assert not registry_black_box({"attack": "no-such-attack", "backend": "torch"})


def test_success_must_be_monotone_in_eps():
    small = row("pgd", 0.60, eps=0.05, label="pgd-small", params={"steps": 10})
    big = row("pgd", 0.40, eps=0.1, label="pgd-big", params={"steps": 10})
    (w,) = eps_monotonicity_warnings([big, small])
    assert w.startswith("unreliable evaluation: success is not monotone in eps for pgd / untargeted: ")
    assert "60% at linf eps 0.05 (pgd-small / untargeted) but 40% at eps 0.1 (pgd-big / untargeted)" in w
    assert eps_monotonicity_warnings([small, {**big, "success_rate": 0.59}]) == []  # within tolerance
    assert eps_monotonicity_warnings([small, {**big, "params": {"steps": 40}}]) == []  # not the same attack
    assert eps_monotonicity_warnings([small, {**big, "target": "next-class"}]) == []


def test_more_iterations_doing_better_means_not_converged():
    few = row("bim", 0.30, eps=0.1, label="bim-10", params={"steps": 10, "loss": "ce"})
    many = row("bim", 0.60, eps=0.1, label="bim-100", params={"steps": 100, "loss": "ce"})
    (w,) = convergence_warnings([many, few])
    assert w.startswith("unreliable evaluation: more iterations do better for bim-10 / untargeted -> "
                        "bim-100 / untargeted (steps 10 -> 100: success 30% -> 60%)")
    assert convergence_warnings([few, {**many, "success_rate": 0.31}]) == []
    assert convergence_warnings([few, {**many, "params": {"steps": 100, "loss": "dlr"}}]) == []  # another loss
    assert convergence_warnings([few, {**many, "eps": 0.2}]) == []  # another budget: the eps check's business
    # several budget parameters: the larger run must not have fewer of any
    a = row("pgd", 0.3, eps=0.1, params={"steps": 10, "restarts": 5})
    b = row("pgd", 0.6, eps=0.1, params={"steps": 100, "restarts": 1})
    assert convergence_warnings([a, b]) == []


def test_minimisation_attack_converging_to_smaller_distances():
    few = row("cw-l2", 1.0, norm="l2", median=2.0, label="cw-fast", params={"max_iter": 10, "confidence": 0.0})
    many = row("cw-l2", 1.0, norm="l2", median=1.0, label="cw-slow", params={"max_iter": 100, "confidence": 0.0})
    (w,) = convergence_warnings([few, many])
    assert "(max_iter 10 -> 100: success 100% -> 100%, median l2 distance 2 -> 1)" in w
    assert convergence_warnings([few, {**many, "l2_median": 1.9}]) == []


@pytest.mark.parametrize("status", ["skipped", "unsupported"])
def test_rows_that_did_not_run_are_ignored(status):
    rows = [row("pgd", 0.6, eps=0.05), {**row("pgd", 0.1, eps=0.1), "status": status}]
    assert evaluation_warnings(rows, _bb) == []
