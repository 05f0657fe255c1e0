"""Minimisation attacks: CW-L2, CW-Linf and DeepFool (torch and ART backends).

The strength tests use the bundled demo model and data (``robaudit/demo``) on the first 32
correctly classified images of the first 200, and skip cleanly when those files are absent.
Bounds were measured on that slice (numbers in the constants' docstrings) and carry a margin.
Each expensive attack runs once per module (fixtures), so the module takes about 20 s on two
cores.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robaudit.attacks.base import AttackKind, AttackOutput, Criterion, Norm, params_from_overrides
from robaudit.attacks.cw_l2 import CWL2, ArtCWL2, CWL2Params, cw_margin, cw_success
from robaudit.attacks.cw_linf import CWLinf, ArtCWLinf, CWLinfParams
from robaudit.attacks.deepfool import DeepFool, ArtDeepFool, DeepFoolParams
from robaudit.attacks.registry import AttackName, get_attack_class
from robaudit.errors import ConfigError

from .conftest import demo_correct

DEMO = Path(__file__).resolve().parents[1] / "robaudit" / "demo"
N_IMAGES = 32

CWL2_MEDIAN_MAX = 1.6
"""Measured median L2 of untargeted CW-L2 on the slice: 1.39 (DeepFool: 1.79)."""
CWL2_TARGETED_MEDIAN_MAX = 2.6
"""Measured median L2 of next-class targeted CW-L2: 2.26."""
CWLINF_MEDIAN_MAX = 0.15
"""Measured median Linf of untargeted CW-Linf: 0.123."""
CWLINF_TARGETED_MEDIAN_MAX = 0.23
"""Measured median Linf of next-class targeted CW-Linf: 0.194."""

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

CHEAP_CWL2 = CWL2Params(binary_search_steps=3, max_iter=10)
CHEAP_CWLINF = CWLinfParams(search_steps=3, max_iter=5)
CHEAP_DF = DeepFoolParams(max_iter=5)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def demo() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    return demo_correct(N_IMAGES, pool=200)


def _next_class(y: torch.Tensor) -> torch.Tensor:
    return (y + 1) % 10


@pytest.fixture(scope="module")
def cwl2_untargeted(demo) -> AttackOutput:
    model, x, y = demo
    return CWL2().generate(model, x, y, seed=0)


@pytest.fixture(scope="module")
def cwl2_targeted(demo) -> AttackOutput:
    model, x, y = demo
    return CWL2().generate(model, x, y, _next_class(y), seed=0)


@pytest.fixture(scope="module")
def deepfool_l2(demo) -> AttackOutput:
    model, x, y = demo
    return DeepFool().generate(model, x, y, seed=0)


def _pred(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def _l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1)


def _linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().amax(dim=1)


def _in_range(x_adv: torch.Tensor) -> bool:
    return bool(torch.isfinite(x_adv).all()) and float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


# --------------------------------------------------------------------------- class contracts
@pytest.mark.parametrize(
    ("name", "torch_cls", "art_cls"),
    [(AttackName.CW_L2, CWL2, ArtCWL2), (AttackName.CW_LINF, CWLinf, ArtCWLinf),
     (AttackName.DEEPFOOL, DeepFool, ArtDeepFool)],
)
def test_registry_and_class_contract(name, torch_cls, art_cls) -> None:
    assert get_attack_class(name, "torch") is torch_cls
    assert get_attack_class(name, "art") is art_cls
    for cls in (torch_cls, art_cls):
        assert cls.name == name.value
        assert cls.kind is AttackKind.MINIMIZATION
        assert cls.needs_gradients
        assert dataclasses.is_dataclass(cls.Params)
        params = cls.Params()
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(params, dataclasses.fields(params)[0].name, 1)
    assert torch_cls.backend == "torch" and art_cls.backend == "art"


def test_norms_and_support_flags() -> None:
    assert CWL2.norms == (Norm.L2,) and CWLinf.norms == (Norm.LINF,)
    assert DeepFool.norms == (Norm.L2, Norm.LINF) and ArtDeepFool.norms == (Norm.L2,)
    assert CWL2.supports_targeted and CWLinf.supports_targeted
    assert not DeepFool.supports_targeted and not ArtDeepFool.supports_targeted
    with pytest.raises(ConfigError):
        CWL2(norm=Norm.LINF)


def test_params_overrides_convert_strings() -> None:
    p = params_from_overrides(CWL2Params, {"binary-search-steps": "4", "learning_rate": "0.2", "abort_early": "no"})
    assert p == CWL2Params(binary_search_steps=4, learning_rate=0.2, abort_early=False)
    with pytest.raises(ConfigError):
        params_from_overrides(CWLinfParams, {"tau": "1"})


# --------------------------------------------------------------------------- margin helper
def test_cw_margin_values() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    classes = torch.tensor([0, 2])
    assert torch.allclose(cw_margin(logits, classes, targeted=False), torch.tensor([1.0, -4.0]))
    assert torch.allclose(cw_margin(logits, classes, targeted=True), torch.tensor([-1.0, 4.0]))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=4, max_size=4, unique=True),
       st.integers(0, 3), st.booleans())
def test_cw_margin_sign_matches_criterion(values, cls, targeted) -> None:
    logits = torch.tensor([values])
    classes = torch.tensor([cls])
    crit = Criterion(labels=classes, targets=classes if targeted else None)
    m = cw_margin(logits, classes, targeted)
    if abs(float(m)) > 1e-4:  # away from ties the margin's sign is the criterion
        assert bool(crit.is_adversarial(logits)[0]) == bool(m[0] < 0)
    assert bool(cw_success(logits, crit, 0.0)[0]) == bool(crit.is_adversarial(logits)[0])


# --------------------------------------------------------------------------- strength (demo model)
def test_cwl2_untargeted_strong(demo, cwl2_untargeted) -> None:
    model, x, y = demo
    adv = cwl2_untargeted.x_adv
    assert adv.shape == x.shape and _in_range(adv)
    success = _pred(model, adv) != y
    assert success.float().mean() >= 0.98
    assert float(_l2(adv, x)[success].median()) < CWL2_MEDIAN_MAX
    assert cwl2_untargeted.forward_passes > 0 and cwl2_untargeted.backward_passes > 0


def test_cwl2_reports_inputs_its_search_gave_up_on_while_still_escalating(demo, cwl2_untargeted) -> None:
    """With too few rounds from a tiny c, every failure is a search still raising c (counted, so the
    report can say the attack was under-budgeted); with the defaults nothing is left that way."""
    model, x, y = demo
    assert cwl2_untargeted.search_exhausted == 0
    short = CWL2(params_from_overrides(CWL2Params, {"binary_search_steps": 2, "initial_const": 1e-4,
                                                    "max_iter": 10}))
    out = short.generate(model, x, y, seed=0)
    failed = int((_pred(model, out.x_adv) == y).sum())
    assert failed > 0 and out.search_exhausted == failed
    from robaudit.report.validity import exhausted_search_warnings

    row = {"label": "cw-l2", "target": "untargeted", "n": len(y), "search_exhausted": failed}
    assert exhausted_search_warnings([row])[0].startswith(f"under-budgeted attack: cw-l2 / untargeted: {failed} of")
    assert exhausted_search_warnings([{**row, "search_exhausted": 0}]) == []


class _LeftHalf(torch.nn.Module):
    """Looks at the left half of the image only: the right half gets exactly zero gradient."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros_like(x)
        keep[..., : x.shape[-1] // 2] = 1.0
        return self.net(x * keep)


def test_cwl2_leaves_pixels_it_does_not_move_exact(demo) -> None:
    """The tanh change of variables round-trips every pixel with an error of up to 5e-7: the L0 of the
    examples counted nearly every pixel as changed. Pixels the optimiser never moves must come back exact."""
    model, x, y = demo
    masked = _LeftHalf(model)
    keep = _pred(masked, x[:20]) == y[:20]
    xs, ys = x[:20][keep], y[:20][keep]
    out = CWL2(CWL2Params(binary_search_steps=2, max_iter=20)).generate(masked, xs, ys, seed=0)
    right = (out.x_adv - xs)[..., xs.shape[-1] // 2:]
    assert (_pred(masked, out.x_adv) != ys).any()
    assert torch.count_nonzero(right) == 0


def test_cwl2_targeted_hits_target(demo, cwl2_targeted) -> None:
    model, x, y = demo
    t = _next_class(y)
    adv = cwl2_targeted.x_adv
    assert _in_range(adv)
    success = _pred(model, adv) == t
    assert success.float().mean() >= 0.95
    assert float(_l2(adv, x)[success].median()) < CWL2_TARGETED_MEDIAN_MAX


def test_cwl2_confidence_margin_is_met(demo) -> None:
    model, x, y = demo
    x, y = x[:6], y[:6]
    out = CWL2(CWL2Params(confidence=2.0, binary_search_steps=4, max_iter=30)).generate(model, x, y)
    with torch.no_grad():
        m = cw_margin(model(out.x_adv), y, targeted=False)
    found = _l2(out.x_adv, x) > 0
    assert found.float().mean() >= 0.75
    assert bool((m[found] <= -2.0 + 1e-4).all())


def test_deepfool_untargeted_and_cw_is_smaller(demo, deepfool_l2, cwl2_untargeted) -> None:
    model, x, y = demo
    adv = deepfool_l2.x_adv
    assert _in_range(adv)
    df_success = _pred(model, adv) != y
    assert df_success.float().mean() >= 0.95
    cw_success_ = _pred(model, cwl2_untargeted.x_adv) != y
    df_median = float(_l2(adv, x)[df_success].median())
    cw_median = float(_l2(cwl2_untargeted.x_adv, x)[cw_success_].median())
    assert df_median >= cw_median * 0.9, (df_median, cw_median)


def test_deepfool_linf_variant(demo) -> None:
    model, x, y = demo
    out = DeepFool(norm=Norm.LINF).generate(model, x, y)
    assert _in_range(out.x_adv)
    success = _pred(model, out.x_adv) != y
    assert success.float().mean() >= 0.95
    assert float(_linf(out.x_adv, x)[success].median()) < 0.3


def test_cwlinf_untargeted(demo) -> None:
    model, x, y = demo
    out = CWLinf().generate(model, x, y)
    assert _in_range(out.x_adv)
    success = _pred(model, out.x_adv) != y
    assert success.float().mean() >= 0.95
    assert float(_linf(out.x_adv, x)[success].median()) < CWLINF_MEDIAN_MAX


def test_cwlinf_targeted_hits_target(demo) -> None:
    model, x, y = demo
    t = _next_class(y)
    out = CWLinf().generate(model, x, y, t)
    assert _in_range(out.x_adv)
    pred = _pred(model, out.x_adv)
    success = pred == t
    assert success.float().mean() >= 0.95
    # a targeted attack must not settle for a mere misclassification
    moved = _linf(out.x_adv, x) > 0
    assert bool((pred[moved] == t[moved]).all())
    assert float(_linf(out.x_adv, x)[success].median()) < CWLINF_TARGETED_MEDIAN_MAX


def test_already_misclassified_inputs_are_returned_unchanged(demo) -> None:
    model, x, y = demo
    x, y = x[:4], y[:4]
    wrong = _pred(model, x)  # label every input with a class it is not: the prediction is "wrong"
    wrong_labels = (wrong + 1) % 10
    for attack in (CWL2(CHEAP_CWL2), CWLinf(CHEAP_CWLINF), DeepFool(CHEAP_DF)):
        out = attack.generate(model, x, wrong_labels)
        assert torch.equal(out.x_adv, x), attack.name


def test_other_clip_range(demo) -> None:
    """Inputs in [-1, 1] (the model rescales): results stay in range and still fool it."""
    model, x, y = demo
    x, y = x[:8], y[:8]

    class Rescaled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.inner((z + 1.0) * 0.5)

    wrapped = Rescaled(model)
    z = x * 2.0 - 1.0
    for attack in (CWL2(CWL2Params(binary_search_steps=4)), CWLinf(), DeepFool()):
        out = attack.generate(wrapped, z, y, clip=(-1.0, 1.0))
        assert float(out.x_adv.min()) >= -1.0 and float(out.x_adv.max()) <= 1.0
        assert (_pred(wrapped, out.x_adv) != y).float().mean() >= 0.85, attack.name


# --------------------------------------------------------------------------- determinism, errors
@pytest.mark.parametrize("attack", [CWL2(CHEAP_CWL2), CWLinf(CHEAP_CWLINF), DeepFool(CHEAP_DF)],
                         ids=["cw-l2", "cw-linf", "deepfool"])
def test_same_seed_same_output(demo, attack) -> None:
    model, x, y = demo
    x, y = x[:8], y[:8]
    a = attack.generate(model, x, y, seed=3, batch_size=5)
    b = attack.generate(model, x, y, seed=3, batch_size=5)
    assert torch.equal(a.x_adv, b.x_adv)
    assert (a.forward_passes, a.backward_passes) == (b.forward_passes, b.backward_passes)


@pytest.mark.parametrize("cls", [DeepFool, ArtDeepFool])
def test_deepfool_rejects_targets(demo, cls) -> None:
    model, x, y = demo
    with pytest.raises(ConfigError):
        cls().generate(model, x[:2], y[:2], _next_class(y[:2]))


@pytest.mark.parametrize(
    "params",
    [CWL2Params(binary_search_steps=0), CWL2Params(learning_rate=0.0), CWLinfParams(initial_eps=0.0),
     CWLinfParams(max_iter=0), DeepFoolParams(nb_candidate=1)],
)
def test_invalid_params_are_config_errors(demo, params) -> None:
    model, x, y = demo
    cls = {CWL2Params: CWL2, CWLinfParams: CWLinf, DeepFoolParams: DeepFool}[type(params)]
    with pytest.raises(ConfigError):
        cls(params).generate(model, x[:2], y[:2])


# --------------------------------------------------------------------------- ART references
def test_art_references_run_and_stay_in_range(demo) -> None:
    model, x, y = demo
    x, y = x[:2], y[:2]
    attacks = [
        ArtCWL2(ArtCWL2.Params(binary_search_steps=1, max_iter=2)),
        ArtCWLinf(ArtCWLinf.Params(max_iter=2)),
        ArtDeepFool(ArtDeepFool.Params(max_iter=20)),
    ]
    outs = [attack.generate(model, x, y) for attack in attacks]
    for attack, out in zip(attacks, outs):
        assert out.x_adv.shape == x.shape and _in_range(out.x_adv), attack.name
    assert (_pred(model, outs[-1].x_adv) != y).float().mean() >= 0.75


def test_deepfool_flips_clear_float_noise_and_hold_on_the_plain_network() -> None:
    """DeepFool used to stop at margins of 1e-6, where a recomputation of the same network could
    undo the flip; now every success clears FLIP_TOL (1e-4) of the logit scale, on the prepared copies
    and on the plain network alike."""
    from robaudit.attacks._losses import margin
    from robaudit.models import load_model

    model = load_model(DEMO / "mnist_cnn.pt", device="cpu")
    assert model.grad_copy is not None and model.infer_copy is not None
    plain = load_model(DEMO / "mnist_cnn.pt", device="cpu")
    plain.drop_copies()
    with np.load(DEMO / "mnist_demo.npz") as d:
        x = torch.from_numpy(d["x"][:120]).permute(0, 3, 1, 2).float() / 255.0
        y = torch.from_numpy(d["y"][:120]).long()
    ok = model.predict(x).argmax(1) == y
    x, y = x[ok][:96], y[ok][:96]
    out = DeepFool().generate(model, x, y, seed=0)
    for judge in (model, plain):
        logits = judge.predict(out.x_adv)
        m = -margin(logits, y)  # > 0: adversarial
        assert float((m > 0).float().mean()) >= 0.97
        scale = logits.abs().amax(1).clamp_min(1.0)
        assert bool((m[m > 0] > 0.9e-4 * scale[m > 0]).all()), float((m[m > 0] / scale[m > 0]).min())


class _FirstDrawWrong(torch.nn.Module):
    """A stand-in for a randomised defence whose first draw is unlucky: the first forward pass
    reverses the logits (calling every input adversarial); every later one is the model's."""

    def __init__(self, base: torch.nn.Module, randomized: bool) -> None:
        super().__init__()
        self.base = base
        self.randomized = randomized
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.base(x)
        return -out if self.calls == 1 else out


@pytest.mark.parametrize("name, overrides", [
    ("fab", {"steps": 10}), ("cw-linf", {"search_steps": 3, "max_iter": 10}), ("cw-l2", {"binary_search_steps": 4, "max_iter": 50}),
    ("deepfool", {}), ("jsma", {}),
])
def test_already_adversarial_is_confirmed_on_fresh_draws(demo, name, overrides) -> None:
    """Minimisation attacks return an input already adversarial unchanged. Against a randomised
    model that must hold on fresh draws too: one unlucky draw at the start left every input
    unattacked (0 of 8 fooled)."""
    model, x, y = demo
    x, y = x[:8], y[:8]
    cls = get_attack_class(AttackName(name), "torch")
    params = params_from_overrides(cls.Params, overrides)
    out = cls(params).generate(_FirstDrawWrong(model, randomized=True), x, y, seed=0)
    assert float((_pred(model, out.x_adv) != y).float().mean()) >= 0.75
    # a deterministic model's first answer is trusted: nothing is attacked
    trusted = cls(params).generate(_FirstDrawWrong(model, randomized=False), x, y, seed=0)
    assert torch.equal(trusted.x_adv, x)
