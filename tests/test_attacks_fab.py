"""FAB (Fast Adaptive Boundary): the box-constrained projection, known answers on an affine
model, and strength on the bundled demo model (the first 32 correctly classified images of the
first 200, as in test_attacks_minimization). Bounds were measured on that slice (numbers in the
constants' docstrings) and carry a margin; the module takes about 10 s on one thread.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robaudit.attacks.base import AttackKind, AttackOutput, Norm, params_from_overrides
from robaudit.attacks.deepfool import DeepFool
from robaudit.attacks.fab import FAB, FABParams, project_box_hyperplane
from robaudit.attacks.registry import AttackName, get_attack_class
from robaudit.errors import ConfigError

from .conftest import demo_correct

N_IMAGES = 32

FAST = FABParams(steps=20)
"""20 steps: on the slice nearly the median of the default 100 (0.130 against 0.125)."""
LINF_VS_DEEPFOOL = 0.86
"""FAB-Linf's median Linf over DeepFool-Linf's on the same images. Measured: 0.1295 / 0.1540 =
0.841 (20 steps); broken variants: the step from the original input dropped (``alpha_max`` 0, a
DeepFool with backward steps) 0.870, the projection ignoring the clip box 0.891."""
L2_VS_DEEPFOOL = 0.81
"""FAB-L2's median L2 over DeepFool-L2's. Measured: 1.390 / 1.780 = 0.781 (20 steps); with the
projection ignoring the clip box 0.827."""
TARGETED_LINF_MAX = 0.25
"""Median Linf of next-class targeted FAB (20 steps). Measured: 0.21 (CW-Linf: 0.194)."""

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning"),
              pytest.mark.usefixtures("one_thread")]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def demo() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    return demo_correct(N_IMAGES, pool=200)


@pytest.fixture(scope="module")
def fab_linf(demo) -> AttackOutput:
    model, x, y = demo
    return FAB(FAST).generate(model, x, y, seed=0)


def _pred(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def _dist(a: torch.Tensor, b: torch.Tensor, norm: Norm) -> torch.Tensor:
    d = (a - b).flatten(1)
    return d.abs().amax(dim=1) if norm is Norm.LINF else d.norm(dim=1)


def _in_range(x_adv: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> bool:
    return bool(torch.isfinite(x_adv).all()) and float(x_adv.min()) >= lo and float(x_adv.max()) <= hi


# --------------------------------------------------------------------------- contract
def test_registry_and_class_contract() -> None:
    assert get_attack_class(AttackName.FAB, "torch") is FAB
    assert get_attack_class(AttackName.FAB, "art") is FAB  # no ART implementation: falls back to ours
    assert FAB.name == "fab" and FAB.backend == "torch"
    assert FAB.kind is AttackKind.MINIMIZATION and FAB.needs_gradients
    assert FAB.norms == (Norm.LINF, Norm.L2) and FAB().norm is Norm.LINF
    assert FAB.supports_targeted and FAB.supports_untargeted
    with pytest.raises(dataclasses.FrozenInstanceError):
        FABParams().steps = 1  # type: ignore[misc]
    assert params_from_overrides(FABParams, {"steps": "7", "alpha-max": "0.2"}) == FABParams(steps=7, alpha_max=0.2)
    with pytest.raises(ConfigError):
        FAB(norm=Norm.L0)


@pytest.mark.parametrize("params", [FABParams(steps=0), FABParams(restarts=0), FABParams(nb_candidate=1),
                                    FABParams(alpha_max=1.5), FABParams(eta=0.9), FABParams(beta=1.0),
                                    FABParams(restart_scale=-1.0), FABParams(final_search=-1),
                                    FABParams(confirm_draws=-1)])
def test_invalid_params_are_config_errors(params) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(ConfigError):
        FAB(params).generate(model, torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long))


# --------------------------------------------------------------------------- the projection
def _lp_linf(p: np.ndarray, w: np.ndarray, r: float, lo: float, hi: float) -> float | None:
    """min ||d||_inf s.t. <w, d> = r, lo <= p + d <= hi, by scipy's LP solver (None: infeasible)."""
    from scipy.optimize import linprog

    d = p.size
    cost = np.r_[np.zeros(d), 1.0]
    a_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
    res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.r_[w, 0.0][None], b_eq=[r],
                  bounds=[(lo - v, hi - v) for v in p] + [(0, None)], method="highs")
    return float(res.fun) if res.status == 0 else None


def _qp_l2(p: np.ndarray, w: np.ndarray, r: float, lo: float, hi: float) -> float:
    """min ||d||_2 s.t. <w, d> = r and the box, by bisection on the KKT multiplier (d = clip(mu w))."""
    a, b = 0.0, 1.0
    while (w * np.clip(b * w * np.sign(r), lo - p, hi - p)).sum() * np.sign(r) < abs(r):
        b *= 2
    for _ in range(200):
        mid = (a + b) / 2
        if (w * np.clip(mid * w * np.sign(r), lo - p, hi - p)).sum() * np.sign(r) < abs(r):
            a = mid
        else:
            b = mid
    return float(np.linalg.norm(np.clip(b * w * np.sign(r), lo - p, hi - p)))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), dim=st.integers(1, 12), scale=st.floats(0.01, 3.0))
def test_projection_is_the_box_constrained_minimum(seed, dim, scale) -> None:
    """Against an LP (Linf) and the KKT bisection (L2) on random rows, the box often active: the
    solver meets the hyperplane exactly inside the box with the smallest norm, and a row the box
    cannot reach goes to the box corner that comes closest."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(3, dim, generator=g, dtype=torch.float64)
    w = torch.randn(3, dim, generator=g, dtype=torch.float64)
    w[0, 0] = 0.0  # a coordinate the hyperplane ignores never moves
    r = torch.randn(3, generator=g, dtype=torch.float64) * scale
    for norm in (Norm.LINF, Norm.L2):
        d = project_box_hyperplane(p, w, r, 0.0, 1.0, norm)
        assert float((p + d).min()) >= 0.0 and float((p + d).max()) <= 1.0
        assert float(d[0, 0]) == 0.0
        for i in range(3):
            pi, wi, ri = p[i].numpy(), w[i].numpy(), float(r[i])
            reach = (np.abs(wi) * np.where(np.sign(wi) * np.sign(ri) > 0, 1 - pi, pi)).sum()
            if reach < abs(ri) * (1 - 1e-9):  # infeasible: every moving coordinate at its bound
                corner = np.where(wi * np.sign(ri) > 0, 1.0, np.where(wi * np.sign(ri) < 0, 0.0, pi))
                assert np.allclose(pi + d[i].numpy(), corner, atol=1e-12)
                continue
            assert abs(float((w[i] * d[i]).sum()) - ri) <= 1e-9 * max(1.0, abs(ri))
            if norm is Norm.LINF:
                best = _lp_linf(pi, wi, ri, 0.0, 1.0)
                assert best is not None
                assert float(d[i].abs().max()) == pytest.approx(best, rel=1e-6, abs=1e-9)
            else:
                assert float(d[i].norm()) == pytest.approx(_qp_l2(pi, wi, ri, 0.0, 1.0), rel=1e-6, abs=1e-9)


# --------------------------------------------------------------------------- known answers
class _Affine(torch.nn.Module):
    """Two classes, logits ``(0, <w, x> + b)``: the boundary is a hyperplane."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(w.flatten().clone(), requires_grad=False)
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_affine_model_minimal_distance_is_found(norm) -> None:
    """With the box inactive the smallest perturbation to the hyperplane is ``|f| / ||w||_1`` (Linf)
    or ``|f| / ||w||_2`` (L2); FAB lands within 0.2% of it (measured 0.07%; the hit tolerance of
    FLIP_TOL costs about 0.02%). Without the final bisection it stays 0.56% out, where the
    iterates settle beyond the boundary under eta's overshoot."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 8, 8, generator=g) * 0.1
    x = 0.4 + 0.2 * torch.rand(6, 1, 8, 8, generator=g)
    f = (x.flatten(1) @ w.flatten())
    model = _Affine(w, b=float(-f.max()) - 0.5)  # every input in class 0, by 0.5 or more
    y = torch.zeros(6, dtype=torch.long)
    with torch.no_grad():
        gap = -model(x)[:, 1]
    expect = gap / (w.abs().sum() if norm is Norm.LINF else w.norm())
    # the box stays inactive: every pixel is in [0.4, 0.6] and moves by less than 0.4
    step = expect if norm is Norm.LINF else gap * w.abs().max() / w.norm() ** 2
    assert float(step.max()) < 0.4
    out = FAB(FABParams(steps=50), norm=norm).generate(model, x, y)
    assert bool((_pred(model, out.x_adv) == 1).all())
    got = _dist(out.x_adv, x, norm)
    assert torch.allclose(got, expect, rtol=2e-3), (got / expect)


def test_affine_model_box_active_linf_matches_the_lp() -> None:
    """Inputs near the top of the range with a boundary past what most pixels can move: the
    minimal Linf is the LP's (the box-constrained projection of the original input), not
    ``|f| / ||w||_1``, and FAB finds it within 0.6% (measured 0.37-0.48%). A projection that
    ignores the box never reaches two of the three boundaries."""
    g = torch.Generator().manual_seed(1)
    w = torch.rand(1, 4, 4, generator=g) + 0.1  # every pixel pushes towards class 1, up is outside the box
    w[0, 0, :2] = -w[0, 0, :2]  # two pixels push the other way
    x = torch.full((3, 1, 4, 4), 0.9)
    x[1, 0, 0] = 0.5
    x[2] = 0.93
    model = _Affine(w, b=-(0.9 * float(w.sum())) - 1.2)
    y = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        gap = (-model(x)[:, 1]).double()
    expect = torch.tensor([_lp_linf(xi.flatten().double().numpy(), w.flatten().double().numpy(), float(gi), 0.0, 1.0)
                           for xi, gi in zip(x, gap)], dtype=torch.float64)
    assert bool((expect > 1.5 * gap / w.abs().sum()).all())  # the box is active (LP: 0.28, 0.20, 0.31)
    out = FAB(FABParams(steps=50)).generate(model, x, y)
    assert bool((_pred(model, out.x_adv) == 1).all()) and _in_range(out.x_adv)
    assert torch.allclose(_dist(out.x_adv, x, Norm.LINF).double(), expect, rtol=6e-3)


# --------------------------------------------------------------------------- strength (demo model)
def test_untargeted_linf_flips_and_beats_deepfool(demo, fab_linf) -> None:
    model, x, y = demo
    adv = fab_linf.x_adv
    assert adv.shape == x.shape and _in_range(adv)
    success = _pred(model, adv) != y
    assert success.float().mean() >= 0.97
    assert bool((success == (_dist(adv, x, Norm.LINF) > 0)).all())  # what moved flips the label
    df = DeepFool(norm=Norm.LINF).generate(model, x, y)
    df_ok = _pred(model, df.x_adv) != y
    ours = float(_dist(adv, x, Norm.LINF)[success].median())
    theirs = float(_dist(df.x_adv, x, Norm.LINF)[df_ok].median())
    assert ours <= LINF_VS_DEEPFOOL * theirs, (ours, theirs)
    # passes: one forward + one backward per candidate (9) per step, one checking forward per step,
    # one forward per bisection step at the end
    assert fab_linf.backward_passes == N_IMAGES * 9 * FAST.steps
    assert fab_linf.forward_passes == N_IMAGES * (1 + 2 * FAST.steps + FAST.final_search)


def test_untargeted_l2_beats_deepfool(demo) -> None:
    model, x, y = demo
    out = FAB(FAST, norm=Norm.L2).generate(model, x, y)
    assert _in_range(out.x_adv)
    success = _pred(model, out.x_adv) != y
    assert success.float().mean() >= 0.97
    df = DeepFool().generate(model, x, y)
    df_ok = _pred(model, df.x_adv) != y
    ours = float(_dist(out.x_adv, x, Norm.L2)[success].median())
    theirs = float(_dist(df.x_adv, x, Norm.L2)[df_ok].median())
    assert ours <= L2_VS_DEEPFOOL * theirs, (ours, theirs)


def test_targeted_hits_the_target(demo) -> None:
    model, x, y = demo
    x, y = x[:16], y[:16]
    t = (y + 1) % 10
    out = FAB(FAST).generate(model, x, y, t)
    assert _in_range(out.x_adv)
    pred = _pred(model, out.x_adv)
    moved = _dist(out.x_adv, x, Norm.LINF) > 0
    assert moved.float().mean() >= 0.9
    assert bool((pred[moved] == t[moved]).all())  # never settles for a mere misclassification
    assert float(_dist(out.x_adv, x, Norm.LINF)[moved].median()) < TARGETED_LINF_MAX


def test_misclassified_and_never_fooled_inputs_come_back_unchanged(demo) -> None:
    model, x, y = demo
    x, y = x[:6], y[:6]
    wrong = (_pred(model, x) + 1) % 10  # labels the model already disagrees with
    out = FAB(FABParams(steps=3)).generate(model, x, wrong)
    assert torch.equal(out.x_adv, x)
    assert out.backward_passes == 0  # dropped before any step

    class _Flat(torch.nn.Module):  # class 0 everywhere: no gradient, nothing to find
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.tensor([1.0, 0.0]).expand(z.shape[0], 2) + 0 * z.flatten(1)[:, :1]

    zeros = torch.zeros(3, dtype=torch.long)
    for norm in (Norm.LINF, Norm.L2):
        out = FAB(FABParams(steps=3, restarts=2), norm=norm).generate(_Flat(), x[:3], zeros)
        assert torch.equal(out.x_adv, x[:3])


def test_restarts_are_seeded_and_never_worse(demo) -> None:
    model, x, y = demo
    x, y = x[:8], y[:8]
    params = FABParams(steps=10, restarts=2, final_search=0)
    one = FAB(dataclasses.replace(params, restarts=1)).generate(model, x, y, seed=3, batch_size=5)
    a = FAB(params).generate(model, x, y, seed=3, batch_size=5)
    b = FAB(params).generate(model, x, y, seed=3, batch_size=5)
    c = FAB(params).generate(model, x, y, seed=4, batch_size=5)
    assert torch.equal(a.x_adv, b.x_adv)
    assert (a.forward_passes, a.backward_passes) == (b.forward_passes, b.backward_passes)
    assert not torch.equal(a.x_adv, c.x_adv)  # the restart draws its start from the seed
    # the first run is the same as without restarts, and the result keeps each sample's smallest
    assert bool((_dist(a.x_adv, x, Norm.LINF) <= _dist(one.x_adv, x, Norm.LINF)).all())


def test_other_clip_range(demo) -> None:
    """Inputs in [-1, 1] (the model rescales): the same attack, twice the distances."""
    model, x, y = demo
    x, y = x[:8], y[:8]

    class Rescaled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.inner((z + 1.0) * 0.5)

    params = FABParams(steps=10)
    base = FAB(params).generate(model, x, y)
    out = FAB(params).generate(Rescaled(model), x * 2 - 1, y, clip=(-1.0, 1.0))
    assert _in_range(out.x_adv, -1.0, 1.0)
    assert bool((_pred(model, (out.x_adv + 1) * 0.5) != y).all())
    assert torch.allclose(_dist(out.x_adv, x * 2 - 1, Norm.LINF), 2 * _dist(base.x_adv, x, Norm.LINF), rtol=1e-3, atol=1e-4)


class _LuckyDraw(torch.nn.Module):
    """A stand-in for a randomised defence: the first no-grad draw after each gradient pass (FAB's
    check of its new iterate) reverses the logits, so it calls every input adversarial; any
    further draw classifies as the model does."""

    def __init__(self, base: torch.nn.Module, randomized: bool) -> None:
        super().__init__()
        self.base = base
        self.randomized = randomized
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if torch.is_grad_enabled() and x.requires_grad:
            self.armed = True
            return out
        if self.armed:
            self.armed = False
            return -out
        return out


def test_hits_against_a_randomised_model_hold_on_fresh_draws(demo) -> None:
    model, x, y = demo
    x, y = x[:8], y[:8]
    params = FABParams(steps=10)
    lucky = FAB(params).generate(_LuckyDraw(model, randomized=False), x, y)
    # not randomised: the lucky draw is trusted, and the "examples" do not fool the model
    assert float((_pred(model, lucky.x_adv) != y).float().mean()) <= 0.25
    out = FAB(params).generate(_LuckyDraw(model, randomized=True), x, y)
    fooled = _pred(model, out.x_adv) != y
    moved = _dist(out.x_adv, x, Norm.LINF) > 0
    assert bool((fooled == moved).all()) and float(fooled.float().mean()) >= 0.75


class _GlitchOnce(torch.nn.Module):
    """The model, except that its first gradient pass returns NaN logits for every input."""

    def __init__(self, base: torch.nn.Module) -> None:
        super().__init__()
        self.base = base
        self.glitched = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if x.requires_grad and not self.glitched:
            self.glitched = True
            return out * float("nan")
        return out


def test_a_nan_step_does_not_end_the_search(demo) -> None:
    """One pass of NaN logits made every iterate NaN for the rest of the run (and each restart's
    start with it): nothing was fooled. The rows step back towards x and the search goes on."""
    model, x, y = demo
    x, y = x[:8], y[:8]
    out = FAB(FABParams(steps=10, restarts=2)).generate(_GlitchOnce(model), x, y)
    assert bool(torch.isfinite(out.x_adv).all()) and _in_range(out.x_adv, 0.0, 1.0)
    assert float((_pred(model, out.x_adv) != y).float().mean()) >= 0.75
