"""Attack-as-Defense detection: costs, detectors, the detector file, metrics and the CLI (demo model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robaudit.attacks.registry import AttackName
from robaudit.detect.costs import default_cost_params, measure_costs
from robaudit.detect.detectors import (EnsembleDetector, KNNDetector, ThresholdDetector, ZScoreDetector,
                                       detector_class, detector_from_dict)
from robaudit.detect.interface import CostName, CostParams, DetectorFileError, DetectorKind, DetectorMismatch
from robaudit.detect.metrics import auroc, rates
from robaudit.detect.squeeze import SqueezeParams, bit_depth, median_filter, squeeze_scores
from robaudit.detect.store import DetectorFile, load_detector_file
from robaudit.engine.detect_job import DetectCommon, EvalJob, craft, run_eval_job
from robaudit.engine.evaluation import build_evaluation_set
from robaudit.engine.session import InputOptions, load_inputs
from robaudit.errors import ConfigError

DEMO = InputOptions(model="demo:mnist", data="demo:mnist", device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo(one_thread):
    inp = load_inputs(DEMO)
    ev = build_evaluation_set(inp.model, inp.data, 24, 0, 64)
    return inp.model, ev


def _small(name: CostName) -> CostParams:
    p = default_cost_params(name, (1, 28, 28))
    return CostParams(p.name, max_iter=60, eps=p.eps, step=p.step * 5 if p.eps else p.step, threshold=p.threshold)


def test_costs_deterministic_with_seed(demo):
    model, ev = demo
    params = [_small(c) for c in CostName]
    a = measure_costs(model, ev.x[:8], params, batch_size=5, seed=3)
    b = measure_costs(model, ev.x[:8], params, batch_size=5, seed=3)
    for c in CostName:
        np.testing.assert_array_equal(a.costs[c.value], b.costs[c.value])
        assert a.costs[c.value].min() >= 0 and a.costs[c.value].max() <= 60
    # batching does not change BIM/JSMA costs (deterministic, per-sample early exit)
    c = measure_costs(model, ev.x[:8], params[:3], batch_size=8, seed=3)
    for name in ("bim-linf", "bim-l2", "jsma"):
        np.testing.assert_array_equal(a.costs[name], c.costs[name])


def test_costs_do_not_depend_on_batching_order_or_batch_mates(demo):
    """The boundary cost's noise came from one generator per batch (seeded with the batch number) and
    was drawn for the whole batch: the same DeepFool examples on LeNet-5 cost [141 0 0 0 200 0 200 149]
    in batches of 8 and [169 0 188 0 0 122 200 85] one by one. Each input now has its own stream."""
    model, ev = demo
    params = [_small(c) for c in CostName]
    x = ev.x[:8]
    cr = craft(model, x, ev.y[:8], AttackName.DEEPFOOL)
    keys = np.arange(100, 100 + cr.x.shape[0])
    # keyed by content (every cost kind), and by dataset index (only the boundary cost is random)
    for xs, idx, which in ((cr.x, None, params), (cr.x, keys, params[3:])):

        def kw(sel):
            return {} if idx is None else {"indices": idx[sel]}

        ref = measure_costs(model, xs, which, batch_size=8, seed=3, **kw(slice(None)))
        for bs in (1, 3):
            got = measure_costs(model, xs, which, batch_size=bs, seed=3, **kw(slice(None)))
            for c in ref.costs:
                np.testing.assert_array_equal(got.costs[c], ref.costs[c], err_msg=f"{c} bs {bs}")
        rev = measure_costs(model, xs.flip(0), which, batch_size=8, seed=3, **kw(slice(None, None, -1)))
        half = measure_costs(model, xs[:4], which, batch_size=8, seed=3, **kw(slice(0, 4)))  # other batch-mates
        for c in map(CostName, ref.costs):
            np.testing.assert_array_equal(rev.costs[c.value][::-1], ref.costs[c.value], err_msg=f"{c.value} reversed")
            np.testing.assert_array_equal(half.costs[c.value], ref.costs[c.value][:4], err_msg=f"{c.value} half")
    assert len(set(ref.costs["boundary"].tolist())) > 1, "the test needs costs that are not all at the cap"
    # the boundary attack is random: other seeds or other keys move some costs
    assert any(not np.array_equal(measure_costs(model, cr.x, params[3:], batch_size=8, seed=seed,
                                                indices=k).costs["boundary"], ref.costs["boundary"])
               for seed, k in ((4, keys), (5, keys), (3, keys + 1), (3, keys + 2)))


def test_early_exit_saves_passes(demo):
    model, ev = demo
    p = _small(CostName.BIM_LINF)
    r = measure_costs(model, ev.x[:8], [p], batch_size=8)
    # one forward pass per iteration a sample is alive, plus the pass that sees it flip
    assert r.forward_passes["bim-linf"] == int((r.costs["bim-linf"] + 1).sum())
    assert r.forward_passes["bim-linf"] < 8 * (p.max_iter + 1) or (r.costs["bim-linf"] == p.max_iter).all()


def test_benign_costs_exceed_adversarial(demo):
    model, ev = demo
    p = default_cost_params(CostName.BIM_LINF, model.info.input_shape)
    benign = measure_costs(model, ev.x, [p]).costs["bim-linf"]
    cr = craft(model, ev.x, ev.y, AttackName.BIM, mode="early")
    assert cr.x.shape[0] >= 0.8 * ev.n
    adv = measure_costs(model, cr.x, [p]).costs["bim-linf"]
    assert np.median(benign) > 5 * max(np.median(adv), 1)
    assert auroc(-benign, -adv) > 0.95


def _features(rng, n, cost_name="bim-linf", shift=0.0):
    return {cost_name: rng.gamma(4.0, 40.0, n) + shift, "bim-l2": rng.gamma(3.0, 50.0, n) + shift,
            "squeeze": rng.random(n)}


def test_detectors_json_roundtrip():
    rng = np.random.default_rng(0)
    benign, adv = _features(rng, 80), _features(rng, 40)
    adv = {k: v / 10 for k, v in adv.items()}
    z = ZScoreDetector.fit("bim-linf", benign["bim-linf"], 0.05)
    knn = KNNDetector.fit(["bim-linf", "bim-l2"], benign, adv, k=5)
    th = ThresholdDetector.fit(benign["squeeze"], 0.1)
    ens = EnsembleDetector([z, ZScoreDetector.fit("bim-l2", benign["bim-l2"], 0.05), th], k=2)
    probe = _features(rng, 30)
    for det in (z, knn, th, ens):
        back = detector_from_dict(json.loads(json.dumps(det.to_dict())))
        assert type(back) is type(det)
        np.testing.assert_allclose(back.score(probe), det.score(probe))
        np.testing.assert_array_equal(back.flag(probe), det.flag(probe))


def test_every_detector_kind_is_registered():
    for kind in DetectorKind:
        assert detector_class(kind).kind is kind


def test_zscore_threshold_and_transform():
    rng = np.random.default_rng(1)
    skewed = rng.lognormal(4.0, 0.8, 2000)
    det = ZScoreDetector.fit("c", skewed, 0.05)
    assert det.transform in ("log", "yeo-johnson")
    assert abs(det.flag({"c": skewed}).mean() - 0.05) < 0.02
    assert det.fit_info["rule"] in ("normal", "empirical") and "fit_fpr" in det.fit_info
    normal = rng.normal(200, 20, 2000)
    det = ZScoreDetector.fit("c", normal, 0.05)
    assert det.transform == "none"
    assert det.threshold_cost() == pytest.approx(200 - 1.645 * 20, abs=3)
    # the file names a Yeo-Johnson lambda only when that transform is used (in both places)
    assert det.to_dict()["lambda"] is None and det.fit_info["lambda"] is None
    yj = next(ZScoreDetector.fit("c", c, 0.05) for c in (skewed, rng.gamma(0.7, 50.0, 2000), rng.weibull(0.6, 2000))
              if ZScoreDetector.fit("c", c, 0.05).transform == "yeo-johnson")
    assert yj.to_dict()["lambda"] == yj.fit_info["lambda"] != 0.0
    back = detector_from_dict(json.loads(json.dumps(yj.to_dict())))
    np.testing.assert_allclose(back.score({"c": skewed}), yj.score({"c": skewed}))
    with pytest.raises(ConfigError):
        ZScoreDetector.fit("c", normal, 0.7)


def _capped_costs(rng, n, cap=500, left=False):
    """Skewed costs with a point mass at the cap (inputs that never flip within max_iter)."""
    raw = rng.lognormal(4.8, 1.0, n)
    if left:  # most of the mass near the cap, a long tail of cheap inputs (MNIST-like)
        raw = np.where(rng.random(n) < 0.3, cap, cap - rng.lognormal(4.0, 1.0, n))
    return np.clip(np.round(raw), 0, cap)


@pytest.mark.parametrize("left", [False, True])
def test_zscore_calibrated_on_skewed_capped_costs(left):
    rng = np.random.default_rng(7)
    train, held_out = _capped_costs(rng, 400, left=left), _capped_costs(rng, 20000, left=left)
    assert (train == 500).mean() > 0.02  # a point mass at the cap
    det = ZScoreDetector.fit("c", train, 0.05)
    info = det.fit_info
    assert info["rule"] in ("normal", "empirical") and info["point_mass_at_max"] is not None
    assert abs(info["fit_fpr"] - 0.05) <= 0.02
    assert 0.02 <= det.flag({"c": held_out}).mean() <= 0.09
    back = detector_from_dict(json.loads(json.dumps(det.to_dict())))
    np.testing.assert_array_equal(back.flag({"c": held_out}), det.flag({"c": held_out}))
    assert back.fit_info["rule"] == info["rule"]
    # the threshold in cost units agrees with the flags
    thr = det.threshold_cost()
    assert (det.flag({"c": held_out}) == (held_out < thr)).mean() > 0.999


def test_zscore_all_benign_at_cap_flags_any_cheaper_input():
    from robaudit.detect.detectors import EnsembleDetector, fit_warnings

    det = ZScoreDetector.fit("c", np.full(100, 500.0), 0.05)
    assert det.fit_info["fit_fpr"] == 0.0
    assert det.flag({"c": np.array([499.0, 500.0, 3.0])}).tolist() == [True, False, True]
    # no spread: not a "normal" fit with Shapiro p = 1, but a degenerate one, said so
    assert det.fit_info["rule"] == "constant" and det.fit_info["shapiro_p"] is None
    assert fit_warnings(det) == [det.fit_info["warning"]] and "every one of the 100 benign c costs is 500" in \
        det.fit_info["warning"]
    spread = ZScoreDetector.fit("d", np.arange(100.0), 0.05)
    assert fit_warnings(spread) == [] and fit_warnings(EnsembleDetector([spread, det], 1)) == fit_warnings(det)


@pytest.mark.parametrize(("benign", "fpr"), [([30, 90] + [100] * 8, 0.05), (list(range(10, 50)) + [200] * 10, 0.01),
                                           ([7, 8] + [50] * 6, 0.05)])
def test_zscore_on_few_benign_costs_flags_anything_cheaper_than_them(benign, fpr):
    """With fewer benign costs than 1 / fpr the closest rate is 0: the threshold must hug the
    cheapest benign cost, not fall half-way to the next one (for [30, 90, 100 x 8] that was 0,
    which flags no cost at all)."""
    det = ZScoreDetector.fit("c", np.array(benign, float), fpr)
    cheapest = min(benign)
    assert det.fit_info["rule"] == "empirical" and det.fit_info["fit_fpr"] == 0.0
    assert det.flag({"c": np.array([1.0, cheapest - 1.0])}).all()
    assert not det.flag({"c": np.array(benign, float)}).any()
    assert cheapest - 1 <= det.threshold_cost() <= cheapest


def test_knn_needs_both_classes():
    rng = np.random.default_rng(2)
    f = _features(rng, 10)
    with pytest.raises(ConfigError):
        KNNDetector(["bim-linf"], f["bim-linf"][:, None], np.zeros(10, np.int64))


def test_knn_refuses_a_k_whose_vote_can_never_flag():
    rng = np.random.default_rng(3)
    benign, adv = _features(rng, 20), {k: v / 10 for k, v in _features(rng, 5).items()}  # adversarial: cheap
    with pytest.raises(ConfigError, match="-k 50 is too large .* use -k 9 or less"):
        KNNDetector.fit(["bim-linf"], benign, adv, k=50)
    with pytest.raises(ConfigError, match="-k 10 is too large"):  # 6 adversarial neighbours are needed, 5 exist
        KNNDetector.fit(["bim-linf"], benign, adv, k=10)
    with pytest.raises(ConfigError, match="-k must be >= 1"):
        KNNDetector.fit(["bim-linf"], benign, adv, k=0)
    knn = KNNDetector.fit(["bim-linf"], benign, adv, k=9)
    assert knn.k == 9 and knn.flag(adv).any()  # the largest allowed k can still flag


def test_knn_verdict_does_not_depend_on_training_order():
    """Integer costs tie often; scikit-learn's k-NN kept the first k tied points in training order
    (benign first), so reordering the training data changed scores and verdicts."""
    # six training points at the query's cost (3 benign, 3 adversarial): with k = 5 sklearn took 3 + 2
    # in this order (score 0.4, benign) and 2 + 3 reversed (0.6, adversarial); all six vote now
    benign = {"bim-linf": np.array([10.0, 10.0, 10.0, 300.0, 320.0, 340.0])}
    adv = {"bim-linf": np.array([10.0, 10.0, 10.0, 1.0, 2.0])}
    knn = KNNDetector.fit(["bim-linf"], benign, adv, k=5)
    query = {"bim-linf": np.array([10.0, 1.0, 330.0])}
    rev = KNNDetector(knn.costs, knn.train[::-1], knn.labels[::-1], knn.k)
    for det in (knn, rev):
        # at 1: itself, 2, then the six tied at 10 (5 of 8 adversarial); at 330: three benign, then the six
        np.testing.assert_allclose(det.score(query), [0.5, 5 / 8, 1 / 3])
    rng = np.random.default_rng(5)  # many ties: small integer costs in two dimensions
    b = {"bim-linf": rng.integers(5, 12, 60).astype(float), "jsma": rng.integers(3, 9, 60).astype(float)}
    a = {"bim-linf": rng.integers(0, 7, 40).astype(float), "jsma": rng.integers(0, 5, 40).astype(float)}
    knn = KNNDetector.fit(["bim-linf", "jsma"], b, a, k=7)
    probe = {"bim-linf": rng.integers(0, 12, 200).astype(float), "jsma": rng.integers(0, 9, 200).astype(float)}
    ref = knn.score(probe)
    for s in range(3):
        perm = np.random.default_rng(s).permutation(knn.labels.size)
        np.testing.assert_array_equal(KNNDetector(knn.costs, knn.train[perm], knn.labels[perm], 7).score(probe), ref)
    assert knn.to_dict()["ties"] and detector_from_dict(json.loads(json.dumps(knn.to_dict()))).score(probe).tolist() \
        == ref.tolist()


def test_auroc_matches_sklearn_on_fixed_example():
    from sklearn.metrics import roc_auc_score

    benign = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.2])
    adv = np.array([0.9, 0.4, 0.65, 0.8, 0.7])
    y = np.r_[np.zeros(benign.size), np.ones(adv.size)]
    assert auroc(benign, adv) == pytest.approx(roc_auc_score(y, np.r_[benign, adv]), abs=1e-12)
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert np.isnan(auroc(np.array([]), adv))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=30), st.lists(st.integers(0, 20), min_size=1, max_size=30))
def test_auroc_matches_sklearn_property(benign, adv):
    from sklearn.metrics import roc_auc_score

    b, a = np.array(benign, float), np.array(adv, float)
    y = np.r_[np.zeros(b.size), np.ones(a.size)]
    assert auroc(b, a) == pytest.approx(roc_auc_score(y, np.r_[b, a]), abs=1e-12)


def test_rates():
    r = rates(np.array([True, False, False, False]), np.array([True, True, False, True]))
    assert r == {"tpr": 0.75, "fpr": 0.25, "accuracy": 0.75, "balanced_accuracy": 0.75, "n_adversarial": 4,
                 "n_benign": 4}


def test_balanced_accuracy_does_not_track_the_larger_side():
    """Accuracy over 2x more adversarial than benign inputs mostly tracked the detection rate: a
    detector flagging everything scored 0.67 (and one flagging nothing 0.33) though it tells nothing."""
    benign, adv = np.zeros(50, bool), np.ones(100, bool)
    everything = rates(~benign, adv)
    assert everything["accuracy"] == pytest.approx(2 / 3) and everything["balanced_accuracy"] == 0.5
    assert rates(benign, ~adv)["balanced_accuracy"] == 0.5
    r = rates(np.r_[np.ones(5, bool), np.zeros(45, bool)], np.r_[np.ones(80, bool), np.zeros(20, bool)])
    assert r["balanced_accuracy"] == pytest.approx((0.8 + 0.9) / 2) and (r["n_benign"], r["n_adversarial"]) == (50, 100)
    assert np.isnan(rates(benign[:0], adv)["balanced_accuracy"])


def test_squeezers(demo):
    x = torch.tensor([[[[0.1, 0.6], [0.4, 0.9]]]])
    assert bit_depth(x, 1, (0.0, 1.0)).tolist() == [[[[0.0, 1.0], [0.0, 1.0]]]]
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 2] = 1.0  # an isolated pixel disappears under a median filter
    assert median_filter(img, 3).abs().sum() == 0
    assert median_filter(torch.rand(2, 3, 8, 8), 2).shape == (2, 3, 8, 8)
    model, ev = demo
    s = squeeze_scores(model, ev.x[:4], SqueezeParams(1, 2))
    assert s.shape == (4,) and (s >= 0).all() and (s <= 2).all()


@pytest.mark.parametrize("window", [2, 3])
def test_squeeze_median_filter_equals_scipy(window):
    """The squeezer's median took the lower middle value for even windows, reflected without
    repeating the edge and shifted the window down/right: it differed from scipy's
    ``median_filter(mode='reflect')`` (the paper's code, and robaudit's spatial-smoothing defence)."""
    from scipy.ndimage import median_filter as scipy_median

    x = torch.rand(3, 2, 9, 8, generator=torch.Generator().manual_seed(window))
    ref = scipy_median(x.numpy(), size=(1, 1, window, window), mode="reflect")
    np.testing.assert_array_equal(median_filter(x, window).numpy(), ref)


def _dfile(sha="a" * 64):
    z = ZScoreDetector("bim-linf", 5.0, 0.5, 1.645, "log")
    return DetectorFile(model_sha256=sha, costs=[default_cost_params(CostName.BIM_LINF, (1, 28, 28))], detector=z,
                        input_shape=(1, 28, 28), squeeze=SqueezeParams(1, 2), model_path="m.pt", fit={"n": 3})


def test_detector_file_roundtrip_and_version(tmp_path):
    path = _dfile().save(tmp_path / "d.json")
    back = load_detector_file(path)
    assert back.to_dict() == _dfile().to_dict()
    raw = json.loads(path.read_text())
    assert "pickle" not in path.read_text() and raw["version"] == 1
    raw["version"] = 99
    (tmp_path / "v.json").write_text(json.dumps(raw))
    with pytest.raises(DetectorFileError, match="version"):
        load_detector_file(tmp_path / "v.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DetectorFileError):
        load_detector_file(tmp_path / "bad.json")


def test_detector_refuses_another_model(tmp_path):
    from typer.testing import CliRunner

    from robaudit.cli_detect import detect_app

    dfile = _dfile("0" * 64)
    with pytest.raises(DetectorMismatch):
        dfile.check_model("1" * 64)
    # end to end: a detector fitted on the demo model refuses the demo CIFAR model
    runner = CliRunner()
    res = runner.invoke(detect_app, ["fit", "demo:mnist", "--data", "demo:mnist", "-n", "12", "--max-iter", "30",
                                     "--device", "cpu", "--out", str(tmp_path / "d.json"), "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(detect_app, ["score", "demo:cifar10", "--data", "demo:cifar10", "-n", "3", "--device", "cpu",
                                     "--detector", str(tmp_path / "d.json"), "--out", str(tmp_path / "s.json")])
    assert isinstance(res.exception, DetectorMismatch)
    assert "sha256" in str(res.exception)
    res = runner.invoke(detect_app, ["score", "demo:mnist", "--data", "demo:mnist", "-n", "4", "--device", "cpu",
                                     "--detector", str(tmp_path / "d.json"), "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["kind"] == "detect" and len(report["inputs"]) == 4
    assert report["robaudit_version"] and report["device"].startswith("cpu") and report["libraries"]["torch"]
    assert report["data"]["sha256"] and report["seed"] == 0
    assert {"bim-linf", "score", "adversarial"} <= set(report["inputs"][0])


def test_score_reads_unlabelled_images_and_fit_refuses_what_it_would_ignore(tmp_path):
    from typer.testing import CliRunner

    from robaudit.cli_detect import detect_app
    from robaudit.errors import ConfigError
    from robaudit.report.writer import read_report

    runner = CliRunner()
    det = tmp_path / "d.json"
    res = runner.invoke(detect_app, ["fit", "demo:mnist", "--data", "demo:mnist", "-n", "12", "--max-iter", "30",
                                     "--device", "cpu", "--out", str(det), "-q"])
    assert res.exit_code == 0, res.output
    from .conftest import DEMO as DEMO_DIR

    demo = np.load(str(DEMO_DIR / "mnist_demo.npz"), allow_pickle=False)
    np.savez(tmp_path / "suspicious.npz", images=demo["x"][:5])  # inputs to screen have no labels
    score = tmp_path / "s.json"
    res = runner.invoke(detect_app, ["score", "demo:mnist", "--data", str(tmp_path / "suspicious.npz"), "--x-key",
                                     "images", "--device", "cpu", "--detector", str(det), "--out", str(score)])
    assert res.exit_code == 0, res.output
    assert len(json.loads(score.read_text())["inputs"]) == 5
    quiet = runner.invoke(detect_app, ["score", "demo:mnist", "--data", str(tmp_path / "suspicious.npz"), "--x-key",
                                       "images", "--device", "cpu", "--detector", str(det), "--out",
                                       str(tmp_path / "q.json"), "-q"])
    assert quiet.exit_code == 0 and quiet.stdout == f"{tmp_path / 'q.json'}\n"  # -q: the path, no table
    assert json.loads((tmp_path / "q.json").read_text())["inputs"] == json.loads(score.read_text())["inputs"]
    with pytest.raises(Exception, match="detect score"):  # `report` says what the file is
        read_report(score)
    with pytest.raises(Exception, match="is a detector file written by `robaudit detect fit`, not a report"):
        read_report(det)
    for extra in (["--cost", "bim-linf,bim-l2"], ["--craft", "foo"], ["-k", "0", "--detector", "knn"],
                  ["-k", "7"], ["--attack", "fgsm"]):  # -k and --attack do nothing for a z-score detector
        res = runner.invoke(detect_app, ["fit", "demo:mnist", "--data", "demo:mnist", "-n", "12", "--max-iter", "30",
                                         "--device", "cpu", "--out", str(tmp_path / "x.json"), "-q", *extra])
        assert isinstance(res.exception, ConfigError), res.output
    assert not (tmp_path / "x.json").exists()


def test_eval_with_a_detector_file_is_judged_on_inputs_it_was_not_fitted_on(tmp_path):
    """`detect eval --detector` scored the detector's own fit inputs (in-sample FPR, and k-NN TPR on
    its training examples) and printed the eval's default target FPR instead of the detector's."""
    from typer.testing import CliRunner

    from robaudit.cli_detect import detect_app

    runner = CliRunner()
    det = tmp_path / "d.json"
    base = ["demo:mnist", "--data", "demo:mnist", "--device", "cpu"]  # eval runs the file's cost attacks
    res = runner.invoke(detect_app, ["fit", *base, "--max-iter", "60", "-n", "12", "--fpr", "0.2", "--out", str(det),
                                     "-q"])
    assert res.exit_code == 0, res.output
    fit = json.loads(det.read_text())["fit"]
    assert len(fit["indices"]) == fit["n"] and fit["data_sha256"]
    same = runner.invoke(detect_app, ["eval", *base, "-n", "12", "-a", "fgsm", "--detector", str(det),
                                      "--out", str(tmp_path / "e.json")])
    assert isinstance(same.exception, ConfigError) and "are ones the detector was fitted on" in str(same.exception)
    fpr = runner.invoke(detect_app, ["eval", *base, "-n", "30", "-a", "fgsm", "--detector", str(det), "--fpr", "0.1",
                                     "--out", str(tmp_path / "e.json")])
    assert isinstance(fpr.exception, ConfigError) and "--fpr" in str(fpr.exception)
    res = runner.invoke(detect_app, ["eval", *base, "-n", "30", "-a", "fgsm", "--detector", str(det),
                                     "--out", str(tmp_path / "e.json"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["config"]["target_fpr"] == 0.2  # the detector's, not eval's default 0.05
    overlap = len(set(fit["indices"]) & set(report_indices(tmp_path, base)))
    assert overlap > 0, "the test needs inputs shared with the fit"
    assert report["benign"]["n_test"] == report["benign"]["n"] - overlap
    assert any(w.startswith(f"{overlap} of the {report['benign']['n']} benign inputs are ones the detector")
               for w in report["warnings"])
    assert report["attacks"]["fgsm"]["n_adversarial_test"] < report["attacks"]["fgsm"]["n_adversarial"]
    assert report["attacks"]["fgsm"]["settings"]["attack"] == "fgsm" and report["robaudit_version"]
    assert "eps" in report["attacks"]["fgsm"]["settings"] or "eps_max" in report["attacks"]["fgsm"]["settings"]
    for kind in ("zscore", "knn"):  # squeeze only feeds an ensemble or the squeeze detector
        craft = ["-a", "fgsm"] if kind == "knn" else []  # (--attack with zscore is refused on its own)
        res = runner.invoke(detect_app, ["fit", *base, "--max-iter", "60", "-n", "12", "--detector", kind, "--squeeze",
                                         *craft,
                                         "--out", str(tmp_path / "x.json"), "-q"])
        assert isinstance(res.exception, ConfigError) and "--squeeze" in str(res.exception)


def test_eval_with_a_detector_file_refuses_cost_and_max_iter(tmp_path):
    """`detect eval --detector FILE` silently ran the file's cost attacks whatever --cost and --max-iter
    said; like --fpr, they are now refused with a one-line usage error."""
    from typer.testing import CliRunner

    from robaudit.cli_detect import detect_app

    runner = CliRunner()
    det = tmp_path / "d.json"
    _dfile(load_inputs(DEMO).model.info.sha256).save(det)
    base = ["eval", "demo:mnist", "--data", "demo:mnist", "-n", "30", "-a", "fgsm", "--device", "cpu", "--detector",
            str(det), "--out", str(tmp_path / "e.json")]
    for extra, word in ((["--cost", "jsma"], "--cost"), (["--cost", "bim-linf"], "--cost"),
                        (["--max-iter", "30"], "--max-iter")):
        res = runner.invoke(detect_app, [*base, *extra])
        assert isinstance(res.exception, ConfigError) and str(res.exception).startswith(f"{word} sets the cost attacks")
        assert "\n" not in str(res.exception) and res.exit_code != 0
    assert not (tmp_path / "e.json").exists()


def test_knn_fit_keeps_only_examples_the_model_misclassifies(tmp_path):
    """`detect fit --detector knn --adversarial ADV.npz` trained on every image of the file, failed
    attacks included, ignoring `attack --save-adv`'s success masks (and, without --x-key, read the
    file's clean `x` as the adversarial inputs)."""
    from typer.testing import CliRunner

    from robaudit.cli import app
    from robaudit.cli_detect import detect_app

    runner = CliRunner()
    adv = tmp_path / "adv.npz"
    res = runner.invoke(app, ["attack", "demo:mnist", "--data", "demo:mnist", "-a", "fgsm", "-t", "untargeted",
                              "--eps", "0.08", "-n", "30", "--seed", "1", "--device", "cpu", "-q",
                              "--out", str(tmp_path / "r.json"), "--save-adv", str(adv)])
    assert res.exit_code == 0, res.output
    with np.load(adv) as z:
        x, y, index, x_adv, success = z["x"], z["y"], z["index"], z["adv_fgsm_untargeted"], z["success_fgsm_untargeted"]
    assert 0 < success.sum() < success.size, "the test needs failed and successful examples"
    base = ["fit", "demo:mnist", "--data", "demo:mnist", "--detector", "knn", "-k", "1", "-n", "40", "--max-iter",
            "30", "--device", "cpu"]
    res = runner.invoke(detect_app, [*base, "--adversarial", str(adv), "--out", str(tmp_path / "k.json")])
    assert res.exit_code == 0, res.output
    fit = json.loads((tmp_path / "k.json").read_text())["fit"]
    n_ok, n_failed = int(success.sum()), int((~success).sum())
    assert fit["adversarial"]["n"] == n_ok and fit["adversarial"]["n_read"] == success.size
    assert fit["adversarial"]["dropped"]["unsuccessful"] == n_failed
    assert fit["adversarial"]["arrays"] == ["adv_fgsm_untargeted"]
    warning = next(w for w in fit["warnings"] if "were dropped" in w)
    assert warning.startswith(f"{n_failed} of the {success.size} adversarial training inputs of {adv}")
    assert f"warning: {n_failed} of the {success.size}" in res.output  # on the console too
    # the sources of the examples, checked against --data with the file's clean inputs
    assert fit["adversarial"]["indices"] == sorted(index[success].tolist()) and fit["adversarial"]["data_sha256"]
    # a plain .npz: labels decide (clean inputs are not adversarial), and nothing adversarial is refused
    np.savez(tmp_path / "mixed.npz", x=np.concatenate([x_adv[success], x[:5]]),
             y=np.concatenate([y[success], y[:5]]))
    res = runner.invoke(detect_app, [*base, "--adversarial", str(tmp_path / "mixed.npz"), "--out",
                                     str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    fit = json.loads((tmp_path / "m.json").read_text())["fit"]
    assert fit["adversarial"]["n"] == n_ok and fit["adversarial"]["dropped"]["correctly_classified"] == 5
    assert "indices" not in fit["adversarial"]  # no index array: no sources
    np.savez(tmp_path / "clean.npz", x=x, y=y)
    res = runner.invoke(detect_app, [*base, "--adversarial", str(tmp_path / "clean.npz"), "--out",
                                     str(tmp_path / "c.json")])
    assert isinstance(res.exception, ConfigError) and "none of the" in str(res.exception)
    assert "is adversarial to this model" in str(res.exception) and "\n" not in str(res.exception)
    assert not (tmp_path / "c.json").exists()


def test_fit_overlap_leaves_out_the_sources_of_knn_training_examples():
    """A k-NN detector trained on examples made from benign inputs S: `detect eval --detector` on data
    holding S scored examples crafted from S again, next to its own training examples."""
    from types import SimpleNamespace

    from robaudit.engine.detect_job import _fit_overlap

    ev = SimpleNamespace(n=6, indices=np.array([1, 3, 5, 7, 9, 11]))
    fit = {"data": "d", "data_sha256": "s", "seed": 0, "indices": [3, 4],
           "adversarial": {"indices": [7, 8, 11], "data_sha256": "s"}}
    mask, (warning,) = _fit_overlap(fit, "d", "s", ev, 1)
    assert mask.tolist() == [False, True, False, True, False, True]
    assert warning.startswith("3 of the 6 benign inputs are ones the detector was fitted on (2 of them as the sources")
    other = {**fit, "adversarial": {"indices": [7, 8, 11], "data_sha256": "another"}}  # sources in other data
    assert _fit_overlap(other, "d", "s", ev, 1)[0].tolist() == [False, True, False, False, False, False]
    everything = {**fit, "adversarial": {"indices": [1, 5, 7, 9, 11], "data_sha256": "s"}}
    with pytest.raises(ConfigError, match="sources of its adversarial training examples"):
        _fit_overlap(everything, "d", "s", ev, 1)


def report_indices(tmp_path, base):
    """Dataset indices of the evaluation set `detect eval -n 30` builds (as the eval job does)."""
    from robaudit.engine.evaluation import build_evaluation_set
    from robaudit.engine.session import load_inputs

    inputs = load_inputs(DEMO)
    return [int(i) for i in build_evaluation_set(inputs.model, inputs.data, 30, 0, 128).indices]


def test_eval_report(tmp_path):
    job = EvalJob(common=DetectCommon(inputs=DEMO, n=12, max_iter=120, costs=(CostName.BIM_LINF, CostName.JSMA)),
                  attacks=(AttackName.FGSM, AttackName.BIM), squeeze=True)
    report = run_eval_job(job, ["robaudit", "detect", "eval"])
    assert report["schema_version"] and report["kind"] == "detect"
    assert set(report["auroc"]) == {"fgsm", "bim"}
    assert {"bim-linf", "jsma", "squeeze", "bim-linf+squeeze"} <= set(report["auroc"]["bim"])
    assert report["auroc"]["bim"]["bim-linf"] > 0.9
    assert report["latency"]["bim-linf"]["benign_forward_per_input"] > 1
    json.dumps(report, allow_nan=False)
    # the per-input costs are in the report, and the AUROCs recompute from them
    benign = report["benign"]["inputs"]
    assert len(benign) == report["benign"]["n"] and sum(r["held_out"] for r in benign) == report["benign"]["n_test"]
    for a in ("fgsm", "bim"):
        adv = report["attacks"][a]["inputs"]
        assert len(adv) == report["attacks"][a]["n_adversarial"]
        assert {r["index"] for r in adv} <= {r["index"] for r in benign}
        for f in ("bim-linf", "jsma"):
            got = auroc(-np.array([r[f] for r in benign]), -np.array([r[f] for r in adv]))
            assert got == pytest.approx(report["auroc"][a][f])
        got = auroc(np.array([r["squeeze"] for r in benign]), np.array([r["squeeze"] for r in adv]))
        assert got == pytest.approx(report["auroc"][a]["squeeze"])
    if not report["benign"].get("n_misclassified"):  # the demo gets these 12 right: render the rates anyway
        report["benign"].update(n_misclassified=3, flag_rate_misclassified={"bim-linf": 2 / 3, "jsma": 1.0})
    _renders_as_an_audit(tmp_path, report)


def test_eval_judges_threshold_scores_on_held_out_inputs_and_reports_misclassified_ones(tmp_path):
    """The A2D+squeeze ensemble's AUROC used every benign input, half of which its members' thresholds
    were fitted on; and the benign inputs the model misclassifies (left out of the FPR) were never
    scored, though a deployed detector sees them."""
    from typer.testing import CliRunner

    from robaudit.cli_detect import detect_app
    from robaudit.data import select

    out = tmp_path / "e.json"
    res = CliRunner().invoke(detect_app, ["eval", "demo:mnist", "--data", "demo:mnist", "-n", "30", "--seed", "0",
                                          "-a", "fgsm", "--craft", "full", "--max-iter", "60", "--squeeze",
                                          "--device", "cpu", "--out", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    benign = report["benign"]
    held = {k: np.array([r[k] for r in benign["inputs"] if r["held_out"]]) for k in ("bim-linf", "squeeze")}
    every = {k: np.array([r[k] for r in benign["inputs"]]) for k in ("bim-linf", "squeeze")}
    adv = {k: np.array([r[k] for r in report["attacks"]["fgsm"]["inputs"]]) for k in ("bim-linf", "squeeze")}
    ens = detector_from_dict(report["thresholds"]["bim-linf+squeeze"])
    assert report["auroc"]["fgsm"]["bim-linf+squeeze"] == pytest.approx(auroc(ens.score(held), ens.score(adv)))
    assert auroc(ens.score(every), ens.score(adv)) != pytest.approx(auroc(ens.score(held), ens.score(adv))), \
        "the test needs an in-sample AUROC that differs"
    # raw columns keep every benign input
    assert report["auroc"]["fgsm"]["squeeze"] == pytest.approx(auroc(every["squeeze"], adv["squeeze"]))
    # rates carry their class counts and the balanced accuracy
    r = report["detection"]["fgsm"]["bim-linf"]
    assert (r["n_benign"], r["n_adversarial"]) == (benign["n_test"], report["attacks"]["fgsm"]["n_adversarial"])
    assert r["balanced_accuracy"] == pytest.approx((r["tpr"] + 1 - r["fpr"]) / 2)
    # the sampled inputs the model gets wrong: counted, scored, flag rate per detector
    inputs = load_inputs(DEMO)
    wrong = sorted(set(select(inputs.data, 30, 0).tolist()) - {r["index"] for r in benign["inputs"]})
    assert benign["n_misclassified"] == len(wrong) == 2
    assert [r["index"] for r in benign["misclassified_inputs"]] == wrong
    feats = {k: np.array([r[k] for r in benign["misclassified_inputs"]]) for k in ("bim-linf", "squeeze")}
    assert set(benign["flag_rate_misclassified"]) == set(report["thresholds"])
    for name, rate in benign["flag_rate_misclassified"].items():
        assert rate == pytest.approx(detector_from_dict(report["thresholds"][name]).flag(feats).mean())
    words = " ".join(res.output.split())  # headers wrap on a narrow terminal; names never are cut
    assert "bal." in words and "wrong" in words and "bim-linf+squeeze" in words
    none = run_eval_job(EvalJob(common=DetectCommon(inputs=DEMO, n=30, seed=1, max_iter=30),
                                attacks=(AttackName.FGSM,)), [])
    assert none["benign"]["n_misclassified"] == 0 and none["benign"]["flag_rate_misclassified"] is None


def _detect_profile(batch_size, costs, squeeze=False, attack="fgsm: {}"):
    from robaudit.config.profile import parse_profile
    from robaudit.config.yaml_load import load_yaml

    return parse_profile(load_yaml(f"""\
seed: 3
batch_size: {batch_size}
attacks: {{}}
detect:
  costs: [{costs}]
  attacks: {{{attack}}}
  craft: full
  squeeze: {str(squeeze).lower()}
  max_iter: 60
"""))


def test_detect_cell_costs_do_not_depend_on_chunking_and_ensembles_are_judged_held_out(demo):
    """An audit's detection cell seeded its cost attacks per chunk (batch_size inputs), so the boundary
    cost of an input moved with the profile's batch size; and it scored A2D+squeeze ensembles on every
    benign input, half of which their thresholds were fitted on."""
    from robaudit.detect.metrics import auroc
    from robaudit.engine.cells import Cell, CellKind
    from robaudit.engine.detect_cell import detect_cell_entry, run_detect_chunk

    from types import SimpleNamespace

    model, ev = demo
    cell = Cell(CellKind.DETECT, 0, "detect")
    # benign MNIST inputs all sit at the boundary cost's cap: give the cell DeepFool examples instead
    cr = craft(model, ev.x[:12], ev.y[:12], AttackName.DEEPFOOL)
    near = SimpleNamespace(x=cr.x, y=ev.y[:12][cr.source_index], n=int(cr.x.shape[0]),
                           indices=np.asarray(ev.indices)[:12][cr.source_index])
    by_bs = {}
    for bs in (12, 5):
        prof = _detect_profile(bs, "boundary")
        chunks = [run_detect_chunk(model, near, cell, prof, k, "cpu") for k in range(-(-near.n // bs))]
        by_bs[bs] = [v for c in chunks for v in c["benign"]["boundary"]]
    assert len(set(by_bs[12])) > 2, "the test needs costs that are not all at the cap"
    assert by_bs[12] == by_bs[5]
    # A2D+squeeze: the ensemble's AUROC over the held-out half; rows carry balanced accuracy
    prof = _detect_profile(ev.n, "bim-linf", squeeze=True, attack="cw-l2: {confidence: 8}")  # partly detected
    rec = run_detect_chunk(model, ev, cell, prof, 0, "cpu")
    entry = detect_cell_entry(cell, prof, ev.n, model, [rec])
    benign = {k: np.asarray(v, float) for k, v in rec["benign"].items()}
    adv = {k: np.asarray(v, float) for k, v in rec["attacks"]["cw-l2"]["features"].items()}
    held = {k: v[1::2] for k, v in benign.items()}
    ens = detector_from_dict(entry["thresholds"]["bim-linf+squeeze"])
    row = next(r for r in entry["rows"] if r["cost"] == "bim-linf+squeeze")
    assert row["auroc"] == pytest.approx(auroc(ens.score(held), ens.score(adv)))
    assert auroc(ens.score(benign), ens.score(adv)) != pytest.approx(row["auroc"]), "needs a different in-sample AUROC"
    for r in entry["rows"]:
        assert r["balanced_accuracy"] == pytest.approx((r["detection_rate"] + 1 - r["fpr"]) / 2)


def _renders_as_an_audit(tmp_path, report):
    """QA: `report` refused `detect eval` reports, so a reviewer could not hand one over as HTML or
    gate it in CI. It now reads them as an audit with one detection cell, numbers unchanged."""
    from robaudit.cli_audit import ReportFormat, apply_gates, render
    from robaudit.report import read_report
    from robaudit.report.gates import parse_gate
    from robaudit.report.writer import write_json_atomic

    path = write_json_atomic(tmp_path / "eval.json", report)
    audit = read_report(path)  # validated against the audit schema
    (entry,) = audit["detection"]
    rows = {(r["attack"], r["cost"]): r for r in entry["rows"]}
    assert set(rows) == {(a, f) for a in report["auroc"] for f in report["auroc"][a]}
    for (a, f), r in rows.items():
        assert r["auroc"] == report["auroc"][a][f] and r["n_adversarial"] == report["attacks"][a]["n_adversarial"]
        assert (r["detection_rate"], r["fpr"]) == (report["detection"][a][f]["tpr"], report["detection"][a][f]["fpr"])
    # ROC curves of the raw scores (ensembles have no per-input score in the report)
    assert {(c["attack"], c["cost"]) for c in entry["roc"]} == {(a, f) for a in report["auroc"]
                                                               for f in ("bim-linf", "jsma", "squeeze")}
    html = render(audit, ReportFormat.html)
    assert html.count("<h3>detect-eval</h3>") == 1 and "ROC: fgsm" in html and "ROC: bim" in html
    worst = min(report["auroc"]["bim"].values())
    (ok,) = apply_gates(audit, [parse_gate(f"detect bim auroc >= {worst - 0.001:.4f}")])
    above = f">= {worst + 0.001:.4f}" if worst + 0.001 <= 1.0 else "> 1.0"  # a gate the worst row cannot pass
    (bad,) = apply_gates(audit, [parse_gate(f"detect bim auroc {above}")])
    assert ok.passed and not bad.passed and bad.value == pytest.approx(worst)
    md = render(audit, ReportFormat.markdown)
    assert "| fgsm" in md
    n_mis, rates = report["benign"].get("n_misclassified"), report["benign"].get("flag_rate_misclassified")
    if n_mis:  # QA 12: the terminal table's "wrong" rates were missing from Markdown and HTML
        said = f"the model misclassifies (not in the FPR) flagged at: {', '.join(f'{k} {v:.3f}' for k, v in rates.items())}"
        assert said in md and said in html
    # QA 14: a damaged report was an internal error (exit 3) or rendered with its rows blanked
    # ("fgsm produced no adversarial example", which a gate repeated); now exit 2 with what is wrong
    from robaudit.errors import DataLoadError

    damage = {
        "auroc.fgsm.bim-linf is a string": lambda r: r["auroc"]["fgsm"].__setitem__("bim-linf", "x"),
        "benign is a string": lambda r: r.__setitem__("benign", "oops"),
        "auroc is gone": lambda r: r.pop("auroc"),
        "attacks is gone": lambda r: r.pop("attacks"),
        "auroc.bim is gone": lambda r: r["auroc"].pop("bim"),
        "data.n_selected is a string": lambda r: r["data"].__setitem__("n_selected", "q"),
    }
    for what, hurt in damage.items():
        bad = json.loads(json.dumps(report))
        hurt(bad)
        with pytest.raises(DataLoadError, match="is not a valid `detect eval` report"):
            read_report(write_json_atomic(tmp_path / "bad.json", bad))


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError):
        CostName.parse_list("bim-linf,pgd")
    with pytest.raises(ConfigError):
        DetectorKind.parse("svm")
    with pytest.raises(ConfigError):
        CostParams(CostName.BIM_LINF, max_iter=0, eps=0.3, step=0.001)


def test_eval_param_sets_crafting_attack_parameters_and_records_them(tmp_path):
    """`detect eval -p ATTACK.NAME=VALUE` reaches the crafting attack (high-confidence C&W needs it)
    and the report records every crafting attack's settings."""
    from typer.testing import CliRunner

    from robaudit.cli_detect import detect_app
    from robaudit.errors import ConfigError

    runner = CliRunner()
    base = ["eval", "demo:mnist", "--data", "demo:mnist", "-n", "12", "--max-iter", "30", "--device", "cpu"]
    res = runner.invoke(detect_app, [*base, "-a", "bim", "-p", "bim.steps=7",
                                     "--out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "e.json").read_text())["attacks"]["bim"]["settings"]
    assert settings["params"]["steps"] == 7 and settings["params"]["early_stop"] is True  # crafting keeps BIM-A
    res = runner.invoke(detect_app, [*base, "-a", "fgsm", "-p", "cw-l2.confidence=8", "--out", str(tmp_path / "x.json")])
    assert isinstance(res.exception, ConfigError) and "not in --attack" in str(res.exception)
