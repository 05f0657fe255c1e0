"""Gradient attacks (FGSM, BIM, PGD, APGD; torch and ART backends) and their shared helpers.

Unit and property tests of the loss and norm helpers run everywhere. The attack tests use the
bundled demo model and data (``robaudit/demo``) on a fixed slice of 64 correctly classified
images and skip cleanly when those files are absent. Budgets are kept small so the whole
module runs in well under a minute on two cores.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robaudit.attacks._losses import (
    LossName,
    attack_loss,
    cross_entropy,
    cw_loss,
    dlr_loss,
    loss_and_input_grad,
    margin,
    targeted_dlr_loss,
)
from robaudit.attacks._steps import ascent_step, l2_norm, project, random_init
from robaudit.attacks.apgd import APGD, APGDParams, ArtAPGD, checkpoints
from robaudit.attacks.base import Attack, AttackKind, AttackParams, Criterion, Norm, params_from_overrides
from robaudit.attacks.bim import BIM, ArtBIM, BIMParams
from robaudit.attacks.fgsm import FGSM, ArtFGSM
from robaudit.attacks.pgd import PGD, ArtPGD, PGDParams
from robaudit.attacks.registry import AttackName, get_attack_class
from robaudit.errors import ConfigError

from .conftest import demo_correct

N_IMAGES = 64
FGSM_FLOOR = 0.85
"""FGSM at eps 0.3 breaks 62 of the 64 (96.9%) on the demo model; the floor leaves a safe margin."""

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]

TORCH_ATTACKS: list[type[Attack]] = [FGSM, BIM, PGD, APGD]
ART_ATTACKS: list[type[Attack]] = [ArtFGSM, ArtBIM, ArtPGD, ArtAPGD]

# Small budgets for the constraint and determinism tests (the assertions do not depend on them).
CHEAP: dict[type[Attack], AttackParams] = {
    FGSM: FGSM.Params(),
    BIM: BIMParams(steps=4),
    PGD: PGDParams(steps=4),
    APGD: APGDParams(n_iter=5),
    ArtFGSM: FGSM.Params(),
    ArtBIM: BIMParams(steps=3),
    ArtPGD: PGDParams(steps=3),
    ArtAPGD: APGDParams(n_iter=3),
}
BUDGET = {Norm.LINF: 0.1, Norm.L2: 1.0}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The demo model and the first 64 demo images it classifies correctly, as (N, 1, 28, 28) in [0, 1]."""
    return demo_correct(N_IMAGES)


def _pred(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def _success(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None) -> float:
    pred = _pred(model, x_adv)
    hit = pred == targets if targets is not None else pred != y
    return float(hit.float().mean())


def _next_class(y: torch.Tensor) -> torch.Tensor:
    return (y + 1) % 10


class _Tiny(torch.nn.Module):
    """A small differentiable classifier whose parameters require grad (as models may)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(16, 5, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.flatten(1)) @ self.w


# --------------------------------------------------------------------------- class contract


@pytest.mark.parametrize("cls", TORCH_ATTACKS + ART_ATTACKS, ids=lambda c: c.__name__)
def test_class_contract(cls: type[Attack]) -> None:
    backend = "art" if cls in ART_ATTACKS else "torch"
    assert get_attack_class(AttackName(cls.name), backend) is cls
    assert cls.backend == backend
    assert cls.kind is AttackKind.FIXED_EPS
    assert cls.norms == (Norm.LINF, Norm.L2)
    assert cls.default_eps == {Norm.LINF: 8 / 255, Norm.L2: 0.5}
    assert cls.needs_gradients and cls.supports_targeted and cls.supports_untargeted
    assert dataclasses.is_dataclass(cls.Params) and issubclass(cls.Params, AttackParams)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cls.Params().steps = 3  # type: ignore[misc, attr-defined]
    assert cls().eps == 8 / 255 and cls(norm=Norm.L2).eps == 0.5
    assert cls.__doc__ and "Examples::" in cls.__doc__


def test_params_defaults_and_validation() -> None:
    assert dataclasses.asdict(BIMParams()) == {"steps": 40, "rel_stepsize": 0.1, "loss": "ce", "early_stop": True}
    pgd = PGDParams()
    assert (pgd.steps, pgd.restarts, pgd.random_start, pgd.early_stop) == (40, 1, True, False)
    assert pgd.step_fraction == pytest.approx(2.5 / 40)
    apgd = APGDParams()
    assert (apgd.n_iter, apgd.restarts, apgd.loss, apgd.momentum, apgd.rho) == (100, 1, "ce", 0.75, 0.75)
    assert params_from_overrides(PGDParams, {"steps": "7", "early-stop": "true"}) == PGDParams(steps=7, early_stop=True)
    for bad in ({"steps": "0"}, {"loss": "hinge"}, {"restarts": "0"}):
        with pytest.raises(ConfigError):
            params_from_overrides(PGDParams, bad)
    with pytest.raises(ConfigError):
        APGDParams(momentum=0.0)
    with pytest.raises(ConfigError):
        BIM(norm=Norm.L0)


def test_apgd_checkpoints_follow_the_paper() -> None:
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    for n in (1, 5, 37, 1000):
        cps = checkpoints(n)
        assert cps == sorted(set(cps)) and 1 <= cps[0] and cps[-1] <= n


# --------------------------------------------------------------------------- losses


def test_losses_by_hand() -> None:
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 5.0, 1.0]])
    y = torch.tensor([0, 1])
    t = torch.tensor([3, 2])
    assert torch.allclose(margin(z, y), torch.tensor([2.0, -3.0]))
    assert torch.allclose(cross_entropy(z, y), torch.nn.functional.cross_entropy(z, y, reduction="none"))
    assert torch.allclose(cw_loss(z, y, confidence=1.0), torch.tensor([2.0, -1.0]))  # clamped at -kappa
    assert torch.allclose(cw_loss(z, y, t, confidence=10.0), torch.tensor([4.0, -3.0]))
    # DLR: -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-2.0 / 3.0, 3.0 / 4.0]))
    # targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    assert torch.allclose(targeted_dlr_loss(z, y, t), torch.tensor([-4.0 / 3.5, 3.0 / 4.5]))
    crit_u, crit_t = Criterion(y), Criterion(y, t)
    assert torch.allclose(attack_loss(LossName.MARGIN, z, crit_u), -margin(z, y))
    assert torch.allclose(attack_loss(LossName.CE, z, crit_t), -cross_entropy(z, t))
    assert torch.allclose(attack_loss(LossName.DLR, z, crit_t), targeted_dlr_loss(z, y, t))
    with pytest.raises(ConfigError):
        targeted_dlr_loss(z[:, :3], y, torch.tensor([2, 2]))
    assert LossName.parse("CW") is LossName.MARGIN


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.1, 10.0), st.floats(-5.0, 5.0))
def test_dlr_is_invariant_to_logit_shift_and_scale(seed: int, scale: float, shift: float) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(8, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=g)
    t = (y + 1) % 10
    assert torch.allclose(dlr_loss(z * scale + shift, y), dlr_loss(z, y), atol=1e-6)
    assert torch.allclose(targeted_dlr_loss(z * scale + shift, y, t), targeted_dlr_loss(z, y, t), atol=1e-6)


def test_input_gradient_leaves_parameter_grads_alone() -> None:
    model = _Tiny()
    x = torch.rand(6, 1, 4, 4)
    crit = Criterion(torch.zeros(6, dtype=torch.long))
    logits, values, grad = loss_and_input_grad(model, x, crit, LossName.CE)
    assert grad.shape == x.shape and not grad.requires_grad and not logits.requires_grad
    assert model.w.grad is None
    # each sample's gradient is its own loss's gradient
    x0 = x[:1].clone().requires_grad_(True)
    (g0,) = torch.autograd.grad(cross_entropy(model(x0), crit.labels[:1]).sum(), x0)
    assert torch.allclose(grad[:1], g0, atol=1e-6)
    for cls in TORCH_ATTACKS:
        cls(CHEAP[cls], eps=0.2).generate(model, x, crit.labels)
    assert model.w.grad is None


# --------------------------------------------------------------------------- norm helpers


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([Norm.LINF, Norm.L2]), st.floats(0.0, 3.0))
def test_random_init_and_project_stay_in_ball_and_range(seed: int, norm: Norm, eps: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(5, 1, 6, 6, generator=g)
    tol = eps + 1e-6
    start = random_init(x, eps, norm, g, (0.0, 1.0))
    far = project(x, x + 10 * torch.randn(x.shape, generator=g), eps, norm, (0.0, 1.0))
    stepped = project(x, ascent_step(x, torch.randn(x.shape, generator=g), torch.full((5,), 2.0), norm),
                      eps, norm, (0.0, 1.0))
    for z in (start, far, stepped):
        d = (z - x).flatten(1)
        assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
        dist = d.abs().amax(1) if norm is Norm.LINF else d.norm(dim=1)
        assert bool((dist <= tol).all())


def test_steps_have_the_right_length() -> None:
    g = torch.Generator().manual_seed(1)
    x, grad = torch.zeros(3, 1, 5, 5), torch.randn(3, 1, 5, 5, generator=g)
    assert torch.allclose((ascent_step(x, grad, 0.25, Norm.LINF) - x).abs(), torch.full_like(x, 0.25))
    assert torch.allclose(l2_norm(ascent_step(x, grad, torch.tensor([1.0, 2.0, 3.0]), Norm.L2) - x),
                          torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(ascent_step(x, torch.zeros_like(x), 1.0, Norm.L2), x)  # zero gradient: no NaN


# --------------------------------------------------------------------------- attacks on the demo model


def test_fgsm_success_floor(demo) -> None:
    model, x, y = demo
    out = FGSM(eps=0.3).generate(model, x, y)
    assert (out.forward_passes, out.backward_passes) == (N_IMAGES, N_IMAGES)
    assert _success(model, out.x_adv, y) >= FGSM_FLOOR
    # a tiny budget barely moves anything: success must grow with eps
    assert _success(model, FGSM(eps=0.02).generate(model, x, y).x_adv, y) < _success(model, out.x_adv, y)


@pytest.mark.parametrize("cls,params", [(PGD, PGDParams(steps=10)), (APGD, APGDParams(n_iter=10))],
                         ids=["pgd", "apgd"])
def test_untargeted_linf_eps03_breaks_nearly_all(demo, cls: type[Attack], params: AttackParams) -> None:
    model, x, y = demo
    out = cls(params, norm=Norm.LINF, eps=0.3).generate(model, x, y, seed=0)
    assert _success(model, out.x_adv, y) >= 0.95
    assert float((out.x_adv - x).abs().max()) <= 0.3 + 1e-6


@pytest.mark.parametrize("cls,params", [(FGSM, FGSM.Params()), (BIM, BIMParams(steps=20)),
                                        (PGD, PGDParams(steps=10)), (APGD, APGDParams(n_iter=10))],
                         ids=["fgsm", "bim", "pgd", "apgd"])
def test_targeted_means_argmax_equals_target(demo, cls: type[Attack], params: AttackParams) -> None:
    model, x, y = demo
    x, y = x[:32], y[:32]
    t = _next_class(y)
    out = cls(params, eps=0.3).generate(model, x, y, t, seed=0)
    hit = _pred(model, out.x_adv) == t
    if cls is FGSM:  # one step rarely lands in a chosen class; it must still beat doing nothing
        assert float(hit.float().mean()) > 0.0
    else:
        assert float(hit.float().mean()) >= 0.9
        # "targeted success" is hitting the target, not merely leaving the label
        assert _success(model, out.x_adv, y) >= float(hit.float().mean())


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2], ids=["linf", "l2"])
@pytest.mark.parametrize("cls", TORCH_ATTACKS + ART_ATTACKS, ids=lambda c: c.__name__)
def test_every_output_is_inside_the_ball_and_range(demo, cls: type[Attack], norm: Norm) -> None:
    model, x, y = demo
    n = 16
    eps = BUDGET[norm]
    out = cls(CHEAP[cls], norm=norm, eps=eps).generate(model, x[:n], y[:n], seed=3, batch_size=8)
    d = (out.x_adv - x[:n]).flatten(1)
    dist = d.abs().amax(1) if norm is Norm.LINF else d.norm(dim=1)
    assert out.x_adv.shape == x[:n].shape and out.x_adv.dtype == torch.float32
    assert bool((dist <= eps + 1e-6).all()), float(dist.max())
    assert float(out.x_adv.min()) >= 0.0 and float(out.x_adv.max()) <= 1.0
    assert float(dist.max()) > 0.2 * eps  # it did move


@pytest.mark.parametrize("cls", TORCH_ATTACKS, ids=lambda c: c.__name__)
def test_each_iterate_stays_inside(demo, cls: type[Attack]) -> None:
    """Not only the (projected) output: every point the model is queried at is inside too."""
    model, x, y = demo
    x, y = x[:8], y[:8]
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            seen.append(z.detach().clone())
            return self.m(z)

    attack = cls(CHEAP[cls], norm=Norm.L2, eps=1.0)
    attack.run(Spy(), x, Criterion(y), torch.Generator().manual_seed(0))
    assert seen
    for z in seen:  # sub-batches (early exit, restarts) hold some of the rows: match each to its nearest input
        assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
        assert float(torch.cdist(z.flatten(1), x.flatten(1)).amin(1).max()) <= 1.0 + 1e-5


@pytest.mark.parametrize("cls", [PGD, APGD, BIM], ids=lambda c: c.__name__)
def test_same_seed_same_result(demo, cls: type[Attack]) -> None:
    model, x, y = demo
    x, y = x[:8], y[:8]
    attack = cls(CHEAP[cls], eps=0.1)
    a = attack.generate(model, x, y, seed=7).x_adv
    b = attack.generate(model, x, y, seed=7).x_adv
    assert torch.equal(a, b)
    if cls is not BIM:  # random start: another seed starts elsewhere
        assert not torch.equal(a, attack.generate(model, x, y, seed=8).x_adv)


def test_bim_early_exit_saves_backward_passes(demo) -> None:
    model, x, y = demo
    steps = 20
    full = BIM(BIMParams(steps=steps, early_stop=False), eps=0.3).generate(model, x, y)
    early = BIM(BIMParams(steps=steps, early_stop=True), eps=0.3).generate(model, x, y)
    assert full.backward_passes == steps * N_IMAGES == full.forward_passes
    assert early.backward_passes <= 0.5 * steps * N_IMAGES
    assert early.forward_passes == early.backward_passes
    # stopping early does not lose successes: each stopped sample was adversarial when it stopped
    assert _success(model, early.x_adv, y) >= _success(model, full.x_adv, y) - 1 / N_IMAGES


def test_pgd_early_stop_and_restarts(demo) -> None:
    model, x, y = demo
    base = PGDParams(steps=5)
    fixed = PGD(base, eps=0.3).generate(model, x, y)
    assert fixed.backward_passes == 5 * N_IMAGES  # fixed budget, one checking forward per sample
    assert fixed.forward_passes == 6 * N_IMAGES
    early = PGD(dataclasses.replace(base, early_stop=True), eps=0.3).generate(model, x, y)
    assert early.backward_passes < fixed.backward_passes
    two = PGD(dataclasses.replace(base, restarts=2), eps=0.3).generate(model, x, y)
    # the second restart only runs on samples the first did not break
    assert two.backward_passes <= fixed.backward_passes + 5 * round(N_IMAGES * (1 - _success(model, fixed.x_adv, y)))
    assert _success(model, two.x_adv, y) >= _success(model, fixed.x_adv, y)


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "next-class"])
def test_apgd_early_stop_same_success_fewer_passes(demo, targeted) -> None:
    model, x, y = demo
    t = (y + 1) % 10 if targeted else None
    base = APGDParams(n_iter=10)
    full = APGD(base, eps=0.3).generate(model, x, y, t, seed=1)
    early = APGD(dataclasses.replace(base, early_stop=True), eps=0.3).generate(model, x, y, t, seed=1)
    assert full.backward_passes == full.forward_passes == 11 * N_IMAGES
    assert early.forward_passes == early.backward_passes < 0.7 * full.backward_passes
    # the same random start and per-sample trajectory until a sample breaks: the same samples break
    # (up to one, for batch-size-dependent float rounding in the model's kernels)
    assert _success(model, full.x_adv, y, t) > 0.5
    assert abs(_success(model, early.x_adv, y, t) - _success(model, full.x_adv, y, t)) <= 1 / N_IMAGES
    assert float((early.x_adv - x).abs().amax()) <= 0.3 + 1e-6


def test_zero_eps_returns_the_inputs(demo) -> None:
    model, x, y = demo
    for cls in TORCH_ATTACKS + [ArtFGSM, ArtAPGD]:
        out = cls(CHEAP[cls], eps=0.0).generate(model, x[:4], y[:4])
        assert torch.equal(out.x_adv, x[:4]), cls.__name__


@pytest.mark.parametrize("torch_cls,art_cls,params,points", [
    (FGSM, ArtFGSM, FGSM.Params(), 0.02),
    (PGD, ArtPGD, PGDParams(steps=5), 0.08),
], ids=["fgsm", "pgd"])
def test_torch_and_art_backends_agree(demo, torch_cls, art_cls, params, points: float) -> None:
    model, x, y = demo
    eps = 0.15  # below saturation, so the comparison is informative
    ours = _success(model, torch_cls(params, eps=eps).generate(model, x, y, seed=1).x_adv, y)
    ref = _success(model, art_cls(params, eps=eps).generate(model, x, y, seed=1).x_adv, y)
    assert abs(ours - ref) <= points, (ours, ref)


def test_apgd_dlr_and_l2(demo) -> None:
    model, x, y = demo
    x, y = x[:16], y[:16]
    dlr = APGD(APGDParams(n_iter=10, loss="dlr"), eps=0.3).generate(model, x, y, seed=0)
    assert _success(model, dlr.x_adv, y) >= 0.9
    assert dlr.backward_passes == 11 * 16
    l2 = APGD(APGDParams(n_iter=10), norm=Norm.L2, eps=3.0).generate(model, x, y, seed=0)
    assert _success(model, l2.x_adv, y) >= 0.8
    assert float((l2.x_adv - x).flatten(1).norm(dim=1).max()) <= 3.0 + 1e-5



def test_art_backends_count_only_the_attacks_own_passes():
    """QA 11: the ART adapter asked the counted model for its class count, one forward pass per batch
    more than the attack made (ART FGSM on 20 images in batches of 5: 24 forward passes)."""
    from robaudit.attacks.fgsm import ArtFGSM, FGSM

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    x, y = torch.rand(20, 1, 28, 28), torch.randint(0, 10, (20,))
    art = ArtFGSM(ArtFGSM.Params(), eps=0.1).generate(net, x, y, batch_size=5)
    ours = FGSM(FGSM.Params(), eps=0.1).generate(net, x, y, batch_size=5)
    assert art.forward_passes == ours.forward_passes == 20
