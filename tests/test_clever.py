"""CLEVER: sampling, fits, known answers on (nearly) linear models, reproducibility, the report
section, the CLI, targeted settings, defence stacks and the audit cell (all fast, tiny budgets)."""

from __future__ import annotations

import json
import math
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robaudit.attacks.base import TargetMode
from robaudit.clever import (CleverNorm, CleverParams, clever_score, estimate, fit_reverse_weibull, sample_ball,
                             sample_delta)
from robaudit.models.interface import ModelInfo
from robaudit.models.wrappers import TorchClassifier
from robaudit.report.schema import validation_errors

from .conftest import DEMO, robaudit_cli

NORMS = list(CleverNorm)
DUAL = {CleverNorm.L1: math.inf, CleverNorm.L2: 2.0, CleverNorm.LINF: 1.0}


def _norm(v: torch.Tensor, norm: CleverNorm) -> torch.Tensor:
    return torch.linalg.vector_norm(v.flatten(1).double(), ord={"l1": 1, "l2": 2, "linf": math.inf}[norm.value], dim=1)


# --- sampling -------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(norm=st.sampled_from(NORMS), d=st.integers(1, 40), radius=st.floats(1e-3, 20.0),
       lo=st.floats(-2.0, 0.5), span=st.floats(0.1, 3.0), seed=st.integers(0, 2**31))
def test_sampled_points_stay_in_the_ball_and_the_clip_range(norm, d, radius, lo, span, seed):
    hi = lo + span
    g = torch.Generator().manual_seed(seed)
    center = lo + span * torch.rand(1, d, generator=g)
    pts = sample_ball(center, 64, radius, norm, (lo, hi), g)
    assert pts.shape == (64, 1, d)
    tol = 1e-6 * (1 + abs(lo) + abs(hi))  # the bounds are rounded to float32
    assert float(pts.min()) >= lo - tol and float(pts.max()) <= hi + tol
    assert float(_norm(pts - center, norm).max()) <= radius * (1 + 1e-5) + 1e-6


@pytest.mark.parametrize("norm", NORMS)
def test_samples_are_uniform_in_the_ball(norm):
    """For the uniform distribution on a d-ball in any norm, (||delta|| / r)^d is uniform on [0, 1];
    and every orthant is equally likely (symmetry)."""
    from scipy import stats

    d, n, r = 3, 4000, 2.0
    g = torch.Generator().manual_seed(1)
    delta = sample_delta(n, d, r, norm, g, dtype=torch.float64)
    u = (_norm(delta, norm) / r) ** d
    assert stats.kstest(u.numpy(), "uniform").pvalue > 0.01
    orthant = ((delta > 0).long() * torch.tensor([1, 2, 4])).sum(1)
    counts = torch.bincount(orthant, minlength=8).numpy()
    assert stats.chisquare(counts).pvalue > 0.01


# --- reverse Weibull fits -------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_weibull_fit_recovers_the_endpoint_of_bounded_maxima(scale):
    rng = np.random.default_rng(0)
    maxima = rng.uniform(0, 3.0 * scale, size=(50, 100)).max(axis=1)  # true supremum 3 * scale
    fit = fit_reverse_weibull(maxima)
    assert fit.method == "weibull" and fit.location >= maxima.max()
    assert fit.location == pytest.approx(3.0 * scale, rel=0.01)
    assert fit.p_value is not None and fit.p_value > 0.05 and not fit.poor(0.05)


def test_weibull_fit_of_reverse_weibull_samples():
    from scipy import stats

    data = stats.weibull_max.rvs(4.0, loc=7.0, scale=0.5, size=200, random_state=3)
    fit = fit_reverse_weibull(data)
    assert fit.method == "weibull"
    assert fit.location == pytest.approx(7.0, rel=0.03)


def test_weibull_degenerate_cases_are_explicit():
    const = fit_reverse_weibull(np.full(50, 2.5))
    assert const.method == "constant" and const.location == 2.5 and not const.poor(0.05)
    bad = fit_reverse_weibull(np.array([1.0, float("nan"), 2.0]))
    assert bad.method == "max-observed" and bad.poor(0.05)
    assert clever_score(2.0, 4.0, 10.0) == 0.5
    assert clever_score(2.0, 0.1, 1.0) == 1.0  # capped at the radius
    assert clever_score(-1.0, 4.0, 1.0) == 0.0  # misclassified
    assert clever_score(2.0, 0.0, 3.0) == 3.0  # flat margin


# --- known answers on linear models ---------------------------------------------------------


def _classifier(net: torch.nn.Module, shape: tuple[int, int, int], k: int) -> TorchClassifier:
    info = ModelInfo(path="test", format="torchscript", sha256="0" * 64, input_shape=shape, num_classes=k,
                     white_box=True)
    return TorchClassifier(info, net)


class _NearlyLinear(torch.nn.Module):
    """``W x + b + eps * sin(V x)``: the margin gradient varies by about ``eps ||v||`` over the ball."""

    def __init__(self, w: torch.Tensor, v: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.lin.weight.copy_(w)
            self.lin.bias.zero_()
        self.register_buffer("v", v)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)
        return self.lin(z) + self.eps * torch.sin(z @ self.v.T)


def _linear_setup(eps: float = 0.0):
    g = torch.Generator().manual_seed(0)
    k, shape = 4, (1, 6, 6)
    d = 36
    w = torch.randn(k, d, generator=g)
    v = torch.randn(k, d, generator=g)
    model = _classifier(_NearlyLinear(w, v, eps), shape, k)
    x = (0.5 + 0.02 * torch.randn(3, *shape, generator=g)).clamp(0, 1)
    y = model(x).argmax(1)
    return model, w, x, y


def _closed_form(model, w, x, y, norm: CleverNorm) -> np.ndarray:
    """min_j g_j(x0) / ||w_y - w_j||_dual: the Lipschitz bound of a linear margin, which for L2 and
    Linf is also the true minimal distortion (the hyperplane's closest point is inside [0, 1])."""
    logits = model(x).detach()
    out = []
    for i in range(x.shape[0]):
        c = int(y[i])
        vals = []
        for j in range(w.shape[0]):
            if j == c:
                continue
            g0 = float(logits[i, c] - logits[i, j])
            vals.append(g0 / float(torch.linalg.vector_norm(w[c] - w[j], ord=DUAL[norm])))
        out.append(min(vals))
    return np.array(out)


@pytest.mark.parametrize("norm", NORMS)
def test_linear_model_known_answer(norm):
    model, w, x, y = _linear_setup()
    classes = [[j for j in range(4) if j != int(c)] for c in y]
    run = estimate(model, x, y, classes, [0, 1, 2], norm, 5.0, CleverParams(nb_batches=10, batch_size=20),
                   seed=0, clip=(0.0, 1.0))
    scores = np.array([e.untargeted().score for e in run.inputs])
    expected = _closed_form(model, w, x, y, norm)
    assert scores == pytest.approx(expected, rel=1e-4)
    assert all(c.fit.method == "constant" for e in run.inputs for c in e.classes)  # a constant gradient norm
    if norm is not CleverNorm.L1:  # the minimal L2 / Linf adversarial perturbation, checked by construction
        i = 0
        c = int(y[i])
        logits = model(x).detach()[i]
        def bound(j: int) -> float:
            return float(logits[c] - logits[j]) / float(torch.linalg.vector_norm(w[c] - w[j], ord=DUAL[norm]))

        j = min((j for j in range(4) if j != c), key=bound)
        u = (w[c] - w[j]).view(1, 1, 6, 6)
        step = u / u.norm() ** 2 if norm is CleverNorm.L2 else u.sign() / u.abs().sum()
        x_adv = x[i : i + 1] - (1 + 1e-3) * float(logits[c] - logits[j]) * step
        assert 0.0 <= float(x_adv.min()) and float(x_adv.max()) <= 1.0
        assert int(model(x_adv).argmax(1)) != c
        assert float(_norm(x_adv - x[i : i + 1], norm)) == pytest.approx(expected[i], rel=2e-3)


@pytest.mark.parametrize("norm", [CleverNorm.L2, CleverNorm.LINF])
def test_nearly_linear_model_goes_through_the_weibull_fit(norm):
    model, w, x, y = _linear_setup(eps=0.01)
    classes = [[j for j in range(4) if j != int(c)] for c in y]
    run = estimate(model, x, y, classes, [0, 1, 2], norm, 1.0, CleverParams(nb_batches=30, batch_size=50),
                   seed=0, clip=(0.0, 1.0))
    scores = np.array([e.untargeted().score for e in run.inputs])
    assert scores == pytest.approx(_closed_form(model, w, x, y, norm), rel=0.05)
    assert sum(c.fit.method == "weibull" for e in run.inputs for c in e.classes) >= 6


# --- the demo model: reproducibility, radius, targets ---------------------------------------


@pytest.fixture(scope="module")
def demo():
    from robaudit.data import load_dataset
    from robaudit.engine.evaluation import build_evaluation_set
    from robaudit.models.loader import load_model

    model = load_model(str(DEMO / "mnist_cnn.pt"), device="cpu")
    data = load_dataset(str(DEMO / "mnist_demo.npz"))
    return model, build_evaluation_set(model, data, 4, 0, 64)


def _run(demo, *, seed=0, point_batch=None, radius=5.0, norm=CleverNorm.L2, idx=slice(0, 2)):
    model, ev = demo
    y = ev.y[idx]
    classes = [[j for j in range(10) if j != int(c)][:3] for c in y]  # three classes keep the fits cheap
    return estimate(model, ev.x[idx], y, classes, [int(i) for i in ev.indices[idx]], norm, radius,
                    CleverParams(nb_batches=4, batch_size=8, point_batch=point_batch), seed=seed, clip=model.clip)


def _scores(run):
    return [[c.score for c in e.classes] for e in run.inputs]


def test_same_seed_same_scores_whatever_the_grouping(demo):
    a = _run(demo)
    assert _scores(_run(demo)) == _scores(a)  # bit-identical
    b = _run(demo, point_batch=8)  # one batch per pass instead of all inputs in one
    assert np.allclose(_scores(b), _scores(a), rtol=1e-5)
    alone = _run(demo, idx=slice(1, 2))  # an input's points do not depend on the other inputs
    assert np.allclose(_scores(alone)[0], _scores(a)[1], rtol=1e-5)
    assert not np.allclose(_scores(_run(demo, seed=1)), _scores(a))


def test_clean_margins_behind_a_randomised_stack_agree_across_norms(demo):
    """Behind TVM, g(x0) is judged on one seeded draw: the same in every norm (it was a fresh draw
    per norm, so an input could be correct in the L2 row and misclassified in the Linf row)."""
    from robaudit.defences import defend_model

    model, ev = demo
    defended = defend_model(model, "tvm")
    margins = {}
    for norm, radius in ((CleverNorm.L2, 2.0), (CleverNorm.LINF, 0.1), (CleverNorm.L1, 10.0)):
        defended.stack.reseed(norm.value.__hash__() % 1000)  # whatever ran before must not matter
        run = estimate(defended, ev.x[:4], ev.y[:4], [[j for j in range(10) if j != int(c)][:2] for c in ev.y[:4]],
                       [int(i) for i in ev.indices[:4]], norm, radius,
                       CleverParams(nb_batches=2, batch_size=4), seed=3, clip=model.clip)
        margins[norm] = [[c.g0 for c in e.classes] for e in run.inputs]
    assert margins[CleverNorm.L2] == margins[CleverNorm.LINF] == margins[CleverNorm.L1]


def test_scores_never_exceed_the_radius(demo):
    for norm, radius in ((CleverNorm.L2, 0.05), (CleverNorm.LINF, 0.002)):
        run = _run(demo, norm=norm, radius=radius)
        scores = [c.score for e in run.inputs for c in e.classes]
        assert max(scores) <= radius and min(scores) >= 0
        assert any(s == radius for s in scores)


# --- the job, the report section, targets, defences -----------------------------------------


def _job(**kw):
    from robaudit.engine.clever_job import CleverJob
    from robaudit.engine.session import InputOptions

    base = dict(inputs=InputOptions(model="demo:mnist", data="demo:mnist", device="cpu"), n=3,
                params=CleverParams(nb_batches=5, batch_size=10), seed=0)
    base.update(kw)
    return CleverJob(**base)


@pytest.fixture(scope="module")
def report():
    from robaudit.engine.clever_job import run_clever_job

    job = _job(norms=(CleverNorm.L2, CleverNorm.LINF, CleverNorm.L1), targets=tuple(TargetMode), compare=True)
    return run_clever_job(job, ["robaudit", "clever"])


def test_report_section_shape_and_schema(report):
    assert validation_errors(report) == []
    assert report["kind"] == "clever"
    sec = report["clever"]
    expected = {(n.value, t.value) for n in CleverNorm for t in TargetMode}
    assert {(r["norm"], r["target"]) for r in sec["rows"]} == expected
    n = report["data"]["n_evaluated"]
    for row in sec["rows"]:
        assert row["status"] == "ok" and row["n"] == n == len(row["inputs"])
        scores = [i["score"] for i in row["inputs"]]
        assert row["min"] == min(scores) and row["mean"] == pytest.approx(np.mean(scores))
        assert row["median"] == pytest.approx(float(np.median(scores)))
        assert row["n_poor_fit"] == sum(i["poor_fit"] for i in row["inputs"])
        for i in row["inputs"]:
            assert 0 <= i["score"] <= row["radius"]
            assert i["fit"] in ("weibull", "constant", "max-observed") and "p_value" in i
    # the comparison: L2 (deepfool untargeted only, cw-l2) and Linf (cw-linf); none for L1
    comp = {(c["norm"], c["target"]): [a["attack"] for a in c["attacks"]] for c in sec["comparison"]}
    assert comp[("l2", "untargeted")] == ["deepfool", "cw-l2"] and comp[("l2", "next-class")] == ["cw-l2"]
    assert comp[("linf", "least-likely")] == ["cw-linf"] and not any(k[0] == "l1" for k in comp)
    for c in sec["comparison"]:
        for a in c["attacks"]:
            assert 0 <= a["n_violations"] <= a["n_success"] <= c["n"]
        flagged = sum(i["violation"] for i in c["inputs"])
        assert flagged == c["best"]["n_violations"]
    assert {r["attack"] for r in report["results"]} == {"deepfool", "cw-l2", "cw-linf"}
    assert sec["correlation"] == []  # one stack: nothing to correlate
    assert len({tuple(i["index"] for i in r["inputs"]) for r in sec["rows"]}) == 1  # the same inputs everywhere


def test_targeted_scores_use_the_attack_targets(report):
    from robaudit.attacks.targets import compute_targets  # noqa: F401 - the rule the rows must follow

    rows = {(r["norm"], r["target"]): r for r in report["clever"]["rows"]}
    for norm in ("l2", "linf", "l1"):
        unt = rows[(norm, "untargeted")]["inputs"]
        for mode in ("least-likely", "next-class"):
            tgt = rows[(norm, mode)]["inputs"]
            for u, t in zip(unt, tgt):
                assert t["class"] != t["label"] and t["score"] >= u["score"] - 1e-12
                if mode == "next-class":
                    assert t["class"] == (t["label"] + 1) % 10


def test_report_renders_in_every_format(report):
    from robaudit.cli_audit import ReportFormat, render

    md = render(report, ReportFormat.markdown)
    assert "**CLEVER**" in md and "violations" in md
    assert "<h2>CLEVER</h2>" in render(report, ReportFormat.html)
    from robaudit.report.clever_render import clever_tables

    assert len(clever_tables(report)) == 2
    assert "CLEVER scores" in render(report, ReportFormat.table)  # `robaudit report` shows the section


def test_defence_stacks_are_scored_and_correlated():
    from robaudit.defences import parse_stacks
    from robaudit.engine.clever_job import run_clever_job

    assert parse_stacks(["ss", "none", "ss+jpeg"]) == [(), ("ss",), ("ss", "jpeg")]
    stacks = tuple(parse_stacks(["ss+jpeg"]))
    rep = run_clever_job(_job(norms=(CleverNorm.L2,), stacks=stacks, compare=True, n=2), ["robaudit", "clever"])
    assert validation_errors(rep) == []
    rows = rep["clever"]["rows"]
    assert [r["defences"] for r in rows] == [[], ["ss", "jpeg"]]
    assert all(r["status"] == "ok" and r["n"] > 0 for r in rows)
    assert {tuple(r["defences"]) for r in rep["results"]} == {(), ("ss", "jpeg")}
    corr = rep["clever"]["correlation"]
    assert {c["attack"] for c in corr} == {"deepfool", "cw-l2", "best"}
    assert all(c["stacks"] == ["none", "ss+jpeg"] for c in corr)


# --- CLI and audit ------------------------------------------------------------------------


def test_cli_end_to_end_and_exit_codes(tmp_path):
    out = tmp_path / "c.json"
    res = robaudit_cli("clever", "demo:mnist", "--data", "demo:mnist", "-n", "2", "--nb-batches", "4",
                       "--batch-size", "8", "--norm", "l2,linf", "--target", "untargeted,next-class",
                       "--radius", "l2=2,linf=0.2", "--no-compare", "--format", "json", "--out", str(out), "-q")
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    written = json.loads(out.read_text())
    assert validation_errors(written) == [] and printed["clever"]["rows"] == written["clever"]["rows"]
    assert {r["radius"] for r in written["clever"]["rows"]} == {2.0, 0.2}
    bad = robaudit_cli("clever", "demo:mnist", "--data", "demo:mnist", "--nb-batches", "1",
                       "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "nb-batches" in bad.stderr and "Traceback" not in bad.stderr
    bad = robaudit_cli("clever", "demo:mnist", "--data", "demo:mnist", "--norm", "l2", "--radius", "linf=0.3",
                       "--out", str(tmp_path / "x"))  # a radius for a norm that does not run was ignored
    assert bad.returncode == 2 and "a radius for linf, which --norm (l2) does not run" in bad.stderr


def test_audit_profile_with_a_clever_section(tmp_path):
    from robaudit.config import parse_profile
    from robaudit.engine.audit import AuditJob, run_audit, strip_timing
    from robaudit.engine.session import InputOptions

    raw = {"seed": 1, "samples": 6, "batch_size": 4, "examples": 0, "attacks": {"fgsm": {"eps": 0.1}},
           "targets": ["untargeted", "next-class"],
           "clever": {"inputs": 3, "batches": 4, "batch_size": 8, "radius": 2.0, "norm": "l2"}}
    profile = parse_profile(raw, source="test")
    job = AuditJob(models=("demo:mnist",), inputs=InputOptions(model="", data="demo:mnist", device="cpu"),
                   profile=profile, out=tmp_path / "a")
    result = run_audit(job, ["robaudit", "audit"])
    (_, rep), = result.reports
    assert validation_errors(rep) == []
    assert all(r["attack"] == "fgsm" for r in rep["results"])
    rows = rep["clever"]["rows"]
    assert [(r["target"], r["n"]) for r in rows] == [("untargeted", 3), ("next-class", 3)]
    assert rows[0]["cell_id"] == "m0/clever/clever/-/none"
    again = run_audit(AuditJob(models=job.models, inputs=job.inputs, profile=profile, out=tmp_path / "a",
                               resume=True), ["robaudit", "audit"])
    assert again.resumed_cells == 3
    assert strip_timing(again.reports[0][1])["clever"] == strip_timing(rep)["clever"]


def test_an_audit_clever_section_without_a_radius_takes_the_norms_default(tmp_path):
    """The profile's radius defaulted to 5 for every norm: a Linf ball of radius 5 covers the whole
    [0, 1] cube, so the audit's Linf scores differed from `robaudit clever`'s (radius 0.3)."""
    from robaudit.config import parse_profile
    from robaudit.engine.audit import AuditJob, run_audit
    from robaudit.engine.clever_cell import clever_radius
    from robaudit.engine.session import InputOptions

    raw = {"seed": 1, "samples": 4, "batch_size": 4, "examples": 0, "attacks": {},
           "clever": {"inputs": 2, "batches": 3, "batch_size": 4, "norm": "linf"}}
    profile = parse_profile(raw, source="test")
    assert clever_radius(profile, (0.0, 1.0)) == pytest.approx(0.3)
    assert clever_radius(profile, (0.0, 255.0)) == pytest.approx(76.5)
    job = AuditJob(models=("demo:mnist",), inputs=InputOptions(model="", data="demo:mnist", device="cpu"),
                   profile=profile, out=tmp_path / "a")
    (_, rep), = run_audit(job, ["robaudit", "audit"]).reports
    assert validation_errors(rep) == []
    assert rep["clever"]["config"]["radius"] == {"linf": pytest.approx(0.3)}
    assert all(r["radius"] == pytest.approx(0.3) and 0 < r["mean"] <= 0.3 for r in rep["clever"]["rows"])
    from robaudit.cli_audit import ReportFormat, render

    md = render(rep, ReportFormat.markdown)  # no attack ran: the header must not say one did
    assert "classified correctly." in md and "attacks ran on" not in md
    given = parse_profile({**raw, "clever": {**raw["clever"], "radius": 0.1}}, source="test")
    assert clever_radius(given, (0.0, 255.0)) == 0.1


def test_norm_and_radius_parsing():
    from robaudit.cli_clever import parse_radius
    from robaudit.errors import ConfigError

    assert CleverNorm.parse_list("all") == NORMS
    assert CleverNorm.parse_list("linf, 2") == [CleverNorm.LINF, CleverNorm.L2]
    assert parse_radius("3") == {n: 3.0 for n in CleverNorm}
    assert parse_radius("l2=2,inf=0.1") == {CleverNorm.L2: 2.0, CleverNorm.LINF: 0.1}
    for bad in ("-1", "l2=x", "l5=1", "inf", "l2=nan", "l2=2,l2=0.5", "l2=2,2=1", "3,l2=0.5"):
        with pytest.raises(ConfigError):
            parse_radius(bad)
    with pytest.raises(ConfigError, match="unknown CLEVER norm"):
        CleverNorm.parse_list("l2,l3")


def test_clever_format_none_prints_nothing_and_writes_the_report(tmp_path):
    """`audit` and `defend eval` took --format none, `clever` refused it."""
    out = tmp_path / "c.json"
    proc = robaudit_cli("clever", "demo:mnist", "--data", "demo:mnist", "-n", "2", "--nb-batches", "3", "-b", "8",
                        "--no-compare", "--format", "none", "-q", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and json.loads(out.read_text())["clever"]["rows"]
