"""`attack --save-adv`: every adversarial example, exact, in a pickle-free .npz that agrees with the report."""

import json

import numpy as np
import pytest
import torch

from robaudit.data import load_dataset
from robaudit.models import load_model
from robaudit.report.adversarial_npz import cell_key, read_index

from .conftest import DEMO, robaudit_cli

pytestmark = pytest.mark.skipif(not (DEMO / "mnist_cnn.pt").exists(), reason="bundled demo model missing")


def test_cell_key_names_arrays():
    assert cell_key("cw-l2", "least-likely") == "cw_l2_least_likely"
    assert cell_key("pgd", "next-class") == "pgd_next_class"


def test_saved_examples_match_the_report_and_the_model(tmp_path):
    out, adv = tmp_path / "r.json", tmp_path / "adv.npz"
    proc = robaudit_cli("attack", "demo:mnist", "--data", "demo:mnist", "-a", "pgd,deepfool", "-t",
                        "untargeted,next-class", "--eps", "0.1", "-n", "30", "--seed", "2", "-q",
                        "--out", str(out), "--save-adv", str(adv))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = {cell_key(r["attack"], r["target"]): r for r in report["results"] if r["status"] == "ok"}
    assert set(rows) == {"pgd_untargeted", "pgd_next_class", "deepfool_untargeted"}  # deepfool is untargeted only

    index = read_index(adv)
    assert index["format"] == "robaudit-adversarial/1" and index["clip"] == [0.0, 1.0]
    assert [c["key"] for c in index["cells"]] == list(rows)
    with np.load(adv, allow_pickle=False) as z:
        x, y, idx = z["x"], z["y"], z["index"]
        n = report["data"]["n_evaluated"]
        assert x.shape == (n, 1, 28, 28) and x.dtype == np.float32 and y.shape == (n,)
        assert len(set(idx.tolist())) == n
        assert np.array_equal(load_dataset(DEMO / "mnist_demo.npz").x[idx], x)  # index: positions in the data
        model = load_model(DEMO / "mnist_cnn.pt", device="cpu")
        assert (model.predict(torch.from_numpy(x)).argmax(1).numpy() == y).all()  # the attacked inputs
        for key, row in rows.items():
            x_adv, pred, success = z[f"adv_{key}"], z[f"pred_{key}"], z[f"success_{key}"]
            assert x_adv.shape == x.shape and x_adv.dtype == np.float32
            assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
            if row["eps"] is not None:
                assert np.abs(x_adv - x).max() <= 0.1 + 1e-6
            # exact examples: the model's predictions on them reproduce the stored ones and the report
            assert (model.predict(torch.from_numpy(x_adv)).argmax(1).numpy() == pred).all()
            assert int(success.sum()) == row["n_success"] > 0
            if row["target"] == "next-class":
                target = z[f"target_{key}"]
                assert (target == (y + 1) % 10).all()
                assert (success == (pred == target)).all()
            else:
                assert f"target_{key}" not in z.files
                assert (success == (pred != y)).all()


@pytest.mark.parametrize(("out", "name", "needle"), [("r.json", "adv.npy", "ending in .npz"),
                                                    ("r.npz", "r.npz", "the same file")])
def test_bad_save_adv_paths_are_refused_before_any_work(tmp_path, out, name, needle):
    proc = robaudit_cli("attack", "demo:mnist", "--data", "demo:mnist", "-a", "fgsm", "-n", "5", "-q",
                        "--out", str(tmp_path / out), "--save-adv", str(tmp_path / name))
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / out).exists()
