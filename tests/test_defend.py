"""`robaudit defend`: profiles with threat models, the defended audit, and fast adversarial training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robaudit.config.profile import parse_profile
from robaudit.defences.adv_training import (EpochRecord, FastAtConfig, NullTrainObserver, cyclic_lr, pgd_accuracy,
                                            train_fast_at)
from robaudit.engine.cells import Cell, CellKind, expand
from robaudit.errors import ConfigError

from .conftest import robaudit_cli


# --- profiles and the plan ------------------------------------------------------------------

def _profile(**extra: object) -> object:
    raw = {"attacks": ["fgsm"], "targets": ["untargeted", "next-class"], **extra}
    return parse_profile(raw, source="t.yaml")


def test_threat_models_parse_and_default() -> None:
    assert _profile().threat_models == ("adaptive",)
    assert _profile(threat_models="both").threat_models == ("adaptive", "transfer")
    assert _profile(threat_models=["transfer", "adaptive"]).threat_models == ("adaptive", "transfer")
    with pytest.raises(ConfigError, match="threat_models: unknown threat model 'blind'"):
        _profile(threat_models=["blind"])
    with pytest.raises(ConfigError, match="eot_samples: must be between 1 and 1000"):
        _profile(eot_samples=0)
    with pytest.raises(ConfigError, match="defence_params.blur: unknown defence"):
        _profile(defence_params={"blur": {"k": 1}})


def test_plan_runs_undefended_once_and_each_stack_per_threat_model() -> None:
    prof = _profile(defences={"combinations_of": ["ss", "jpeg", "tvm"]}, threat_models="both")
    cells = [c for c in expand(prof, 1) if c.kind is CellKind.ATTACK]
    # 1 undefended + 7 stacks x 2 threat models, each x 1 attack x 2 targets
    assert len(cells) == (1 + 7 * 2) * 2
    ids = [c.id for c in cells]
    assert len(set(ids)) == len(ids)
    assert "m0/attack/fgsm/untargeted/none" in ids
    assert "m0/attack/fgsm/untargeted/ss+jpeg" in ids
    assert "m0/attack/fgsm/untargeted/ss+jpeg@transfer" in ids
    assert not any(i.endswith("none@transfer") for i in ids)
    none = next(c for c in cells if not c.defences)
    assert none.threat_model == "none"
    assert Cell(CellKind.ATTACK, 0, "fgsm", "untargeted", ("tvm",), None, "transfer").threat_model == "transfer"


# --- fast adversarial training ---------------------------------------------------------------

def test_cyclic_lr_is_triangular() -> None:
    lrs = [cyclic_lr(i, 100, 1.0, 0.4) for i in range(101)]
    assert lrs[0] == 0.0 and lrs[40] == pytest.approx(1.0) and lrs[100] == 0.0
    assert all(a <= b for a, b in zip(lrs[:40], lrs[1:41]))
    assert all(a >= b for a, b in zip(lrs[40:], lrs[41:]))


@pytest.mark.parametrize("kw, msg", [({"eps": 0.0}, "--eps must be finite and > 0"),
                                     ({"eps": float("inf")}, "--eps must be finite"), ({"eps": 0.3, "epochs": 0}, "--epochs"),
                                     ({"eps": 0.3, "optimizer": "rmsprop"}, "adam or sgd")])
def test_config_refuses_bad_values(kw: dict[str, object], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        FastAtConfig(**kw)  # type: ignore[arg-type]


def _demo(n: int = 600) -> tuple[object, torch.Tensor, torch.Tensor]:
    from robaudit.engine.session import InputOptions, load_inputs

    inputs = load_inputs(InputOptions(model="demo:mnist", data="demo:mnist", device="cpu"))
    x = torch.from_numpy(inputs.data.x[:n]).float()
    y = torch.from_numpy(inputs.data.y[:n]).long()
    return inputs.model, x, y


class _StopAfter(NullTrainObserver):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def epoch_finished(self, record: EpochRecord) -> None:
        if record.epoch >= self.epochs:
            raise KeyboardInterrupt


def test_training_improves_robustness_writes_a_loadable_model_and_resumes_exactly(tmp_path: Path) -> None:
    from robaudit.models.loader import load_model

    model, x, y = _demo(1000)
    cfg = FastAtConfig(eps=0.2, epochs=4, batch_size=50, lr_max=3e-3, val_size=100, val_pgd_steps=5, seed=3)
    x, y, x_test, y_test = x[:-150], y[:-150], x[-150:], y[-150:]
    _, before = pgd_accuracy(model, x_test, y_test, 0.2, 10, (0.0, 1.0), 150, 0)

    # interrupted after epoch 1, then resumed: identical weights to an uninterrupted run
    out = tmp_path / "adv.pt"
    with pytest.raises(KeyboardInterrupt):
        train_fast_at(model, x, y, cfg, out, _StopAfter(2))
    assert (tmp_path / "adv.pt.ckpt").exists() and not out.exists()
    model, _, _ = _demo(1)  # a rerun of the command loads the model file afresh
    resumed = train_fast_at(model, x, y, cfg, out)
    assert resumed.resumed_from == 2 and [h.epoch for h in resumed.history] == [1, 2, 3, 4]

    model2, _, _ = _demo()
    out2 = tmp_path / "adv2.pt"
    fresh = train_fast_at(model2, x, y, cfg, out2)
    assert fresh.resumed_from == 0
    a, b = load_model(str(out), device="cpu"), load_model(str(out2), device="cpu")
    with torch.no_grad():
        assert torch.equal(a(x_test), b(x_test))
    assert a.info.format == "torchscript" and a.num_classes == 10

    # measured: PGD-10 accuracy at eps 0.2 from 6% to 43%, clean accuracy 96.7% (150 held-out images)
    clean, after = pgd_accuracy(a, x_test, y_test, 0.2, 10, (0.0, 1.0), 150, 0)
    assert after >= before + 0.25 and clean >= 0.9, (before, after, clean)


def test_checkpoint_of_other_settings_is_refused(tmp_path: Path) -> None:
    model, x, y = _demo(300)
    out = tmp_path / "m.pt"
    train_fast_at(model, x, y, FastAtConfig(eps=0.1, epochs=1, batch_size=100, val_size=50, val_pgd_steps=2), out)
    with pytest.raises(ConfigError, match=r"other settings or data \(eps 0.1 there, 0.2 here\)"):
        train_fast_at(model, x, y, FastAtConfig(eps=0.2, epochs=1, batch_size=100, val_size=50, val_pgd_steps=2), out)
    with pytest.raises(ConfigError, match=r"\(300 training images there, 250 here\)"):
        train_fast_at(model, x[:250], y[:250], FastAtConfig(eps=0.1, epochs=1, batch_size=100, val_size=50,
                                                           val_pgd_steps=2), out)


def test_checkpoint_of_another_model_or_other_images_is_refused(tmp_path: Path) -> None:
    """Same settings and image count, but another starting model or other images: a checkpoint of
    that run must not be resumed (it would silently write the other run's weights)."""
    model, x, y = _demo(300)
    cfg = FastAtConfig(eps=0.1, epochs=2, batch_size=100, val_size=50, val_pgd_steps=2)
    out = tmp_path / "m.pt"
    with pytest.raises(KeyboardInterrupt):
        train_fast_at(model, x, y, cfg, out, _StopAfter(1))
    # each call starts from a fresh copy of the model file, as a rerun of the command does
    other_images = torch.flip(x, dims=[0]), torch.flip(y, dims=[0])
    with pytest.raises(ConfigError, match="another model or trained on other images"):
        train_fast_at(_demo(1)[0], *other_images, cfg, out)
    other_model, _, _ = _demo(1)
    with torch.no_grad():
        next(iter(other_model.parameters())).add_(0.01)
    with pytest.raises(ConfigError, match="another model or trained on other images"):
        train_fast_at(other_model, x, y, cfg, out)
    assert train_fast_at(_demo(1)[0], x, y, cfg, out).resumed_from == 1  # the same run still resumes


def test_training_without_validation_writes_the_last_epoch(tmp_path: Path) -> None:
    from robaudit.models.loader import load_model

    model, x, y = _demo(300)
    out = tmp_path / "m.pt"
    result = train_fast_at(model, x, y, FastAtConfig(eps=0.1, epochs=2, batch_size=100, val_size=0), out)
    assert result.best_epoch == 2 and result.history[-1].val_pgd_accuracy is None
    trained = load_model(str(out), device="cpu")
    fresh, _, _ = _demo(1)
    with torch.no_grad():
        assert not torch.equal(trained(x[:20]), fresh(x[:20]))  # not the untouched input model


def test_defend_train_cli(tmp_path: Path) -> None:
    out = tmp_path / "fast.pt"
    res = robaudit_cli("defend", "train", "demo:mnist", "--data", "demo:mnist", "--eps", "0.1", "--epochs", "1",
                       "-n", "300", "--val-size", "100", "--out", str(out), "-q")
    assert res.returncode == 0, res.stderr
    log = json.loads((tmp_path / "fast.pt.json").read_text())
    assert log["best_epoch"] == 1 and len(log["history"]) == 1
    assert 0.0 <= log["history"][0]["val_pgd_accuracy"] <= 1.0
    again = robaudit_cli("defend", "train", "demo:mnist", "--data", "demo:mnist", "--eps", "0.1", "--epochs", "1",
                         "-n", "300", "--val-size", "100", "--out", str(out), "-q")  # -q still says it resumed
    assert again.returncode == 0 and "resumed from fast.pt.ckpt after epoch 1" in again.stderr, again.stderr
    bad = robaudit_cli("defend", "train", "demo:mnist", "--data", "demo:mnist", "--eps", "-1", "--out", str(out))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--eps must be finite and > 0" in bad.stderr
    huge = robaudit_cli("defend", "train", "demo:mnist", "--data", "demo:mnist", "--eps", "5", "--out", str(out))
    assert huge.returncode == 2 and "is not below the input range 1" in huge.stderr, huge.stderr
    onnx = robaudit_cli("defend", "train", "demo:mnist-onnx", "--data", "demo:mnist", "--eps", "0.1",
                        "--out", str(out))
    assert onnx.returncode == 2 and "TorchScript" in onnx.stderr


# --- defend eval (an audit over defence stacks) ---------------------------------------------

def test_defend_eval_all_combinations_both_threat_models_and_resume(tmp_path: Path) -> None:
    from robaudit.engine.audit import strip_timing
    from robaudit.report.schema import validation_errors

    out = tmp_path / "d"
    args = ("defend", "eval", "demo:mnist", "--data", "demo:mnist", "--defences", "all-combinations",
            "--threat-model", "both", "--attack", "fgsm", "--eps", "0.3", "-n", "40", "--batch-size", "20",
            "--eot-samples", "2", "--format", "none", "-q")
    res = robaudit_cli(*args, "--out", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert validation_errors(report) == []
    stacks = [tuple(e["defences"]) for e in report["defences"]]
    assert stacks == [(), ("ss",), ("jpeg",), ("tvm",), ("ss", "jpeg"), ("ss", "tvm"), ("jpeg", "tvm"),
                      ("ss", "jpeg", "tvm")]
    rows = report["results"]
    assert len(rows) == 1 + 7 * 2
    assert {(tuple(r["defences"]), r["threat_model"]) for r in rows} == (
        {((), "none")} | {(s, t) for s in stacks[1:] for t in ("adaptive", "transfer")})
    by = {(tuple(r["defences"]), r["threat_model"]): r for r in rows}
    entry = {tuple(e["defences"]): e for e in report["defences"]}
    for key, row in by.items():
        # success is measured on the inputs the defended model classifies correctly
        assert row["status"] == "ok" and row["n"] == entry[key[0]]["n_correct"]
        assert row["linf_max"] <= 0.3 + 1e-6
    assert entry[()]["clean_accuracy_change"] == 0.0
    assert entry[("tvm",)]["randomized"] and entry[("tvm",)]["eot_samples"] == 2
    # how adaptive attacks take gradients, in the report and every rendering (QA: BPDA was never named)
    assert entry[("ss", "jpeg")]["eot_samples"] is None and not entry[("ss", "jpeg")]["randomized"]
    assert entry[("ss", "jpeg")]["adaptive_gradient"] == "BPDA (ss, jpeg)"
    assert entry[("jpeg", "tvm")]["adaptive_gradient"] == "BPDA (jpeg, tvm), EOT 2"
    assert entry[()]["adaptive_gradient"] is None
    # TVM's pixel dropout costs clean accuracy on MNIST (measured: 79% vs 96% on 100 demo images)
    assert entry[("tvm",)]["clean_accuracy"] < entry[()]["clean_accuracy"] - 0.05
    # BPDA: an adaptive FGSM through the median filter is not weaker than the transferred one
    assert by[(("ss",), "adaptive")]["success_rate"] >= by[(("ss",), "transfer")]["success_rate"] - 0.05
    assert "defence" in (out / "summary.md").read_text()
    from robaudit.report.html import report_html

    html = report_html(report)
    assert "<h2>Defence stacks</h2>" in html and "ss+jpeg (transfer)" in html and "tvm (adaptive)" in html
    assert "BPDA (jpeg, tvm), EOT 2" in html and "adaptive gradient" in html
    # an example behind TVM whose judging draw misclassified the clean input says why it is no success
    flagged = [s for e in report["examples"] for s in e["samples"] if s.get("clean_misclassified_on_draw")]
    assert all(not s["success"] for s in flagged)
    assert html.count("the judging draw misclassified the clean input") == len(flagged)

    again = robaudit_cli(*args, "--out", str(out), "--resume")
    assert again.returncode == 0, again.stderr
    assert strip_timing(json.loads((out / "report.json").read_text())) == strip_timing(report)
    fresh = robaudit_cli(*args, "--out", str(tmp_path / "e"))
    assert fresh.returncode == 0, fresh.stderr
    assert strip_timing(json.loads((tmp_path / "e" / "report.json").read_text()))["results"] == \
        strip_timing(report)["results"]


def _transfer_audit(out: Path, stacks: list[list[str]], monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list[str]]:
    """An in-process transfer-only audit of the demo model; returns its report and the pools crafted."""
    from robaudit.engine import cells as cells_mod
    from robaudit.engine.audit import AuditJob, run_audit
    from robaudit.engine.session import InputOptions

    crafted: list[str] = []
    real = cells_mod.craft_transfer_pool

    def counting(craft_model, data, cell, profile, device):  # type: ignore[no-untyped-def]
        crafted.append(cells_mod.transfer_pool_id(cell))
        return real(craft_model, data, cell, profile, device)

    monkeypatch.setattr(cells_mod, "craft_transfer_pool", counting)
    prof = parse_profile({"attacks": {"fgsm": {}, "pgd": {"steps": 3}}, "targets": ["untargeted", "next-class"],
                          "defences": stacks, "threat_models": ["transfer"], "samples": 30, "batch_size": 16,
                          "seed": 3, "examples": 0}, source="t.yaml")
    job = AuditJob(models=("demo:mnist",), inputs=InputOptions(model="demo:mnist", data="demo:mnist", device="cpu"),
                   profile=prof, out=out)
    result = run_audit(job, ["test"])
    return result.reports[0][1], crafted


def test_transfer_examples_are_crafted_once_per_attack_and_target(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from robaudit.attacks.base import Norm
    from robaudit.attacks.fgsm import FGSM
    from robaudit.data import select
    from robaudit.engine.audit import strip_timing
    from robaudit.engine.cells import Cell, craft_transfer_pool
    from robaudit.engine.session import InputOptions, load_inputs

    report, crafted = _transfer_audit(tmp_path / "a", [[], ["ss"], ["jpeg"], ["ss", "jpeg"]], monkeypatch)
    # 2 attacks x 2 targets: four pools, each crafted once for the three stacks (not 12 crafts)
    assert sorted(crafted) == sorted(set(crafted)) and len(crafted) == 4
    rows = report["results"]
    assert [(r["attack"], r["target"], "+".join(r["defences"]), r["threat_model"]) for r in rows][:5] == [
        ("fgsm", "untargeted", "", "none"), ("fgsm", "next-class", "", "none"), ("pgd", "untargeted", "", "none"),
        ("pgd", "next-class", "", "none"), ("fgsm", "untargeted", "ss", "transfer")]  # the plan's order
    assert {e["adaptive_gradient"] for e in report["defences"] if e["defences"]} == {"none (transfer only)"}
    transfer = [r for r in rows if r["threat_model"] == "transfer"]
    assert len(transfer) == 12 and all(r["status"] == "ok" and r["seconds"] > 0 for r in transfer)
    assert all(r["forward_passes_per_image"] >= 1 and (r["linf_max"] or 0) <= 0.3 + 1e-6 for r in transfer)

    # a stack's transfer rows do not depend on which other stacks ran (nor in which order)
    alone, _ = _transfer_audit(tmp_path / "b", [[], ["jpeg"]], monkeypatch)
    pick = lambda rep: [r for r in strip_timing(rep)["results"] if r["defences"] == ["jpeg"]]  # noqa: E731
    assert pick(alone) == pick(report) and len(pick(alone)) == 4

    # the pool holds what the attack crafts on the undefended model for every sampled input
    inputs = load_inputs(InputOptions(model="demo:mnist", data="demo:mnist", device="cpu"))
    prof = parse_profile({"attacks": {"fgsm": {"eps": 0.1}}, "targets": ["untargeted"], "samples": 30,
                          "batch_size": 16}, source="t.yaml")
    cell = Cell(CellKind.ATTACK, 0, "fgsm", "untargeted", ("ss",), prof.attacks[0], "transfer")
    pool = craft_transfer_pool(inputs.model, inputs.data, cell, prof, "cpu")
    idx = select(inputs.data, 30, prof.seed)
    x = torch.from_numpy(inputs.data.x[idx]).float()
    y = torch.from_numpy(inputs.data.y[idx]).long()
    direct = FGSM(norm=Norm.LINF, eps=0.1).generate(inputs.model, x, y, None, clip=inputs.model.clip, batch_size=30)
    assert pool.x_adv.shape == x.shape and pool.targets is None
    assert torch.allclose(pool.x_adv[pool.rows(idx)], direct.x_adv, atol=1e-6)
    assert float(pool.seconds.sum()) > 0 and float(pool.forward.sum()) == pytest.approx(30.0)


def test_defend_eval_eot_default_is_quiet_and_a_no_op_value_is_warned(tmp_path: Path) -> None:
    base = ("defend", "eval", "demo:mnist", "--data", "demo:mnist", "--attack", "fgsm", "-n", "5", "--format",
            "none", "-q")
    res = robaudit_cli(*base, "--defences", "tvm", "--out", str(tmp_path / "a"))
    assert res.returncode == 0 and "ignored" not in res.stderr, res.stderr
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["config"]["profile"]["eot_samples"] == 4 and report["warnings"] == []
    res = robaudit_cli(*base, "--defences", "ss", "--eot-samples", "3", "--out", str(tmp_path / "b"))
    assert res.returncode == 0 and "eot_samples 3 ignored: no stack is randomised" in res.stderr, res.stderr
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert any(w.startswith("eot_samples 3 ignored") for w in report["warnings"])


def test_defend_eval_refuses_bad_options(tmp_path: Path) -> None:
    base = ("defend", "eval", "demo:mnist", "--data", "demo:mnist", "--out", str(tmp_path / "x"), "-q")
    for extra, msg in [(("--defences", "ss,blur"), "unknown defence"), (("--defences", "none"), "names no defence"),
                       (("--defences", "ss", "-D", "ss"), "stack ss twice"),
                       (("--defences", "ss", "--threat-model", "blind"), "--threat-model"),
                       (("--defences", "jpeg", "--defence-param", "jpeg.quality=500"), "quality"),
                       (("--defences", "ss", "--defence-param", "ss.size=3"), "size")]:
        res = robaudit_cli(*base, *extra)
        assert res.returncode == 2, (extra, res.stderr)
        assert msg in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
