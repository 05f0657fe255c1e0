"""Real pretrained models from ../shared, exported by our own scripts and audited through the CLI.

Skipped cleanly when ../shared is absent (a fresh clone elsewhere).
"""

import json
import sys

import numpy as np
import pytest
import torch

from robaudit.report.schema import validation_errors

from .conftest import ROOT, robaudit_cli

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def exported(shared_dir, tmp_path_factory):
    sys.path.insert(0, str(ROOT / "scripts"))
    import export_shared as ex  # noqa: E402
    from shared_data import load_cifar_exact_test  # noqa: E402

    out = tmp_path_factory.mktemp("shared_models")
    specs = {s.name: s for s in ex.SPECS}
    paths = {}
    for name in ("mnist_lenet5_clean", "cifar10_resnet20"):
        model = ex.build(specs[name], shared_dir)
        paths[name] = out / f"{name}.pt"
        torch.jit.script(model).save(str(paths[name]))
    x, y = load_cifar_exact_test(shared_dir)
    np.savez_compressed(out / "cifar.npz", x=x, y=y)
    return out, paths


def _audit(tmp_path, model, data, *args):
    report = tmp_path / "r.json"
    proc = robaudit_cli("attack", str(model), "--data", str(data), "-q", "--out", str(report), *args)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(report.read_text())
    assert validation_errors(rep) == []
    return rep


def test_lenet5_pgd_and_cw(exported, shared_dir, tmp_path):
    out, paths = exported
    idx = shared_dir / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"  # the IDX loader, through the CLI
    rep = _audit(tmp_path, paths["mnist_lenet5_clean"], idx, "--attack", "pgd,cw-l2",
                 "--eps", "0.3", "-n", "100", "--param", "pgd.steps=20")
    assert rep["data"]["clean_accuracy"] >= 0.96  # 98.9% on all 10000; this seeded sample of 100 gets 97%
    rows = {r["attack"]: r for r in rep["results"]}
    assert rows["pgd"]["success_rate"] >= 0.95  # DATA.md: about 1% robust under PGD-40 at 0.3 (measured 0.97 at 20 steps)
    assert rows["cw-l2"]["success_rate"] >= 0.98
    assert 0.8 < rows["cw-l2"]["l2_median"] < 2.0  # minimal CW distortion on MNIST is ~1.4


def test_resnet20_clean_accuracy_and_pgd(exported, tmp_path):
    out, paths = exported
    rep = _audit(tmp_path, paths["cifar10_resnet20"], out / "cifar.npz", "--attack", "pgd",
                 "--eps", str(8 / 255), "-n", "761", "--param", "pgd.steps=5", "--batch-size", "256")
    assert rep["data"]["clean_accuracy"] == pytest.approx(698 / 761)  # 91.7%, as documented
    pgd = rep["results"][0]
    assert pgd["success_rate"] >= 0.95  # DATA.md: 0% robust under PGD at 8/255
    assert pgd["linf_max"] <= 8 / 255 + 1e-6


@pytest.mark.slow
def test_strength_cross_check_on_the_pgd_trained_lenet5(shared_dir, tmp_path):
    """Issue 3's strength cross-check: on the adversarially trained MNIST LeNet-5 at eps 0.3, PGD-40
    and APGD-100 leave robust accuracy of the test slice no higher than 93% (DATA.md: about 93%
    under PGD-40; an independent PGD-40 gives about 92%). Measured on this slice of 1000: clean
    98.5%, PGD-40 breaks 5.8% of the correct ones (robust 92.8%), APGD 8.4% (robust 90.2%)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import export_shared as ex  # noqa: E402

    spec = next(s for s in ex.SPECS if s.name == "mnist_lenet5_adv")
    model_path = tmp_path / "lenet5_adv.pt"
    torch.jit.script(ex.build(spec, shared_dir)).save(str(model_path))
    idx = shared_dir / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
    rep = _audit(tmp_path, model_path, idx, "--attack", "pgd,apgd", "--eps", "0.3", "-n", "1000",
                 "--batch-size", "250")
    clean = rep["data"]["clean_accuracy"]
    assert clean >= 0.975  # DATA.md: 98.0% on the full test set
    rows = {r["attack"]: r for r in rep["results"]}
    for name in ("pgd", "apgd"):
        robust = clean * (1.0 - rows[name]["success_rate"])
        assert robust <= 0.93, f"{name}: robust accuracy {robust:.4f} of the test slice"
        assert rows[name]["linf_max"] <= 0.3 + 1e-6
    assert rows["apgd"]["success_rate"] >= rows["pgd"]["success_rate"]  # APGD is the stronger attack here
