"""Hostile and broken input (issue 8): robaudit fails safely, clearly, and loses nothing.

Every case of the issue, and where it is tested. Cases already tested elsewhere are listed, not
repeated; this file holds the rest, mostly through the CLI (in-process, for speed) asserting the
exit code and a one-line message. Loader fuzzing lives in ``test_hostile_fuzz.py``.

Each case, then the tests that cover it (``here``: this file; ``fuzz``: test_hostile_fuzz.py).

Model
- pickled checkpoint with a payload: refused, never runs -- test_models::test_pickled_checkpoint_refused_and_payload_
  never_runs, test_models::test_pt2_refused_without_unpickling; here: test_pickled_payload_is_refused_through_the_cli
- truncated or non-model file named .pt / .onnx -- test_models::test_truncated_and_garbage_refused,
  test_cli::test_missing_and_bad_files_exit_2, fuzz; here: test_a_bit_flipped_weight_is_refused_not_loaded
- ONNX external data pointing outside its folder -- test_models::test_onnx_external_data_outside_folder_refused, fuzz
- output not (N, K) logits -- test_models::test_non_logit_output_refused;
  here: test_logits_that_change_shape_with_the_batch_size_are_refused
- K disagrees with the labels -- test_models::test_fewer_logits_than_labels_refused,
  test_cli::test_mismatched_labels_exit_2
- softmax probabilities: warned, results flagged -- test_engine::test_validity_flags_reach_the_report[_Softmax]
- train mode, dropout, batch-norm: forced to eval -- test_models::test_torchscript_loads_in_eval_mode;
  here: test_batch_norm_in_training_mode_is_forced_to_eval
- randomness detected and flagged -- test_engine::test_validity_flags_reach_the_report[_Noisy];
  here: test_batch_statistics_are_flagged
- NaN/inf logits: counted and flagged, never zeroed -- here: test_nan_logits_on_clean_inputs_are_counted_not_attacked,
  test_nan_met_during_the_attack_is_counted_in_the_row, test_a_model_that_only_returns_nan_exits_2,
  test_nonfinite_examples_fall_back_to_the_clean_input; test_validity (report warnings)
- NaN/inf gradients: counted and flagged, never zeroed -- here: test_nan_gradients_are_counted_not_silently_zeroed
- all-zero gradients: gradient masking flagged -- here: test_zero_gradients_flag_masking_and_black_box_beats_white_box

Data
- npz with object arrays -- test_data::test_npz_refusals[never unpickles]; here: test_bad_data_exits_2_with_one_line
- wrong or missing keys -- test_data::test_npz_refusals[(it has: a, b) / no array 'imgs' / --y-key]
- labels out of range or not integers -- test_data::test_npz_refusals[non-integral / negative / integer class
  indices], test_cli::test_mismatched_labels_exit_2; here: test_bad_data_exits_2_with_one_line
- images and labels of different counts -- test_data::test_npz_refusals[3 images but 2 labels],
  test_data::test_idx_refusals[count]; here: test_bad_data_exits_2_with_one_line
- empty dataset, or the model gets nothing right: exit 2, never "robust" -- test_data::test_npz_refusals[holds no
  images], test_cli::test_nothing_correct_is_an_error_not_robust; here: test_bad_data_exits_2_with_one_line
- uint8 data in [0, 255] given as float -- test_data::test_npz_refusals[divide by 255];
  here: test_bad_data_exits_2_with_one_line
- data already normalised (outside [0, 1]) -- test_data::test_npz_refusals[--mean/--std]
- NHWC data for an NCHW model, ambiguous shapes -- test_data::test_npz_nhwc_uint8,
  test_data::test_layout_explicit_and_channels_disambiguate; here: test_ambiguous_layout_is_settled_by_the_model
- grayscale / RGBA / 16-bit images in a folder -- test_data::test_folder_mixed_modes, fuzz
- a corrupt image among good ones: skipped and counted, failing above a threshold --
  test_data::test_folder_mixed_modes, test_data::test_folder_refusals[corrupt], fuzz
- a huge IDX header -- test_data::test_idx_refusals[huge], fuzz

Config and CLI
- eps negative -- test_cli::test_config_errors_exit_2_with_one_line[--eps -1], test_profiles (attacks.pgd.eps);
  here: test_nan_eps_and_truncating_parameters_are_refused (NaN, inf)
- eps absurd (8 meant as 8/255): warned -- here: test_eps_meant_as_pixel_values_warns (CLI),
  test_profile_values_of_the_wrong_type_are_refused[eps 8] (profiles refuse it, with the hint)
- unknown attack or target names -- test_cli::test_config_errors_exit_2_with_one_line,
  test_profiles::test_invalid_profiles_name_file_key_and_reason
- a target equal to the true label -- test_targets::test_targets_are_valid_and_never_the_label;
  here: test_a_target_equal_to_the_label_is_refused
- batch size 0 -- test_cli::test_config_errors_exit_2_with_one_line[--batch-size 0];
  here: test_profile_values_of_the_wrong_type_are_refused[batch_size]
- a YAML profile with !!python/object -- test_profiles::test_yaml_is_loaded_safely, fuzz;
  here: test_hostile_yaml_is_refused_in_one_line (also deep nesting, huge integers, huge files, control characters)
- unknown keys -- test_profiles::test_invalid_profiles_name_file_key_and_reason
- wrong types -- here: test_profile_values_of_the_wrong_type_are_refused,
  test_nan_eps_and_truncating_parameters_are_refused; fuzz (random profile documents)

Faults
- out of GPU memory: halve the batch and retry, same results --
  test_audit_memory::test_out_of_memory_halves_the_batch_with_the_same_results
- SIGKILL during an audit: resume loses at most one batch --
  test_audit::test_sigkill_midway_then_resume_gives_the_same_report
- SIGTERM during an audit: resume loses at most one batch --
  here: test_sigterm_midway_then_resume_loses_at_most_one_batch
- disk full: clear error, previous report intact -- here: test_disk_full_keeps_the_previous_report,
  test_journal_write_failure_then_resume_loses_nothing
- unwritable output path -- here: test_unwritable_output_paths_exit_2
- two runs on one output folder -- test_audit::test_second_run_on_a_locked_folder_is_refused,
  test_audit::test_same_folder_without_resume_is_refused

Output integrity
- every example inside its eps-ball and the clip range before it is counted (exit 3) --
  test_engine::test_bound_violations_are_internal_errors, test_bounds;
  here: test_an_eps_ball_violation_exits_3_and_counts_nothing
- warnings when the evaluation looks unreliable (black-box beats white-box, more iterations do better, success not
  monotone in eps) -- test_validity (all three, unit); here: test_zero_gradients_flag_masking_and_black_box_beats_
  white_box, test_audit_report_warns_that_more_iterations_do_better
"""

from __future__ import annotations

import errno
import json
import os
import stat
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robaudit.engine.audit import strip_timing
from robaudit.engine.journal import JOURNAL_NAME
from robaudit.errors import ConfigError
from robaudit.report.schema import validation_errors

from .conftest import DEMO

pytestmark = [pytest.mark.skipif(not (DEMO / "mnist_cnn.pt").exists(), reason="bundled demo model missing"),
              pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")]

EXE = Path(sys.executable).parent / "robaudit"
ENV = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- helpers


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run ``robaudit ARGS`` in this process through the console entry point; (exit code, stderr)."""
    from robaudit import cli, cli_audit

    for console in (cli.err_console, cli_audit._err):
        monkeypatch.setattr(console, "soft_wrap", True)  # no terminal here: do not wrap at 80 columns
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["robaudit", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    code = info.value.code
    return (0 if code is None else int(code)), capsys.readouterr().err


def one_line(stderr: str) -> str:
    """The error line; asserts there is exactly one and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("robaudit: ")]
    assert len(lines) == 1, stderr
    return lines[0]


class _Wrap(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net


class NaNWhenBright(_Wrap):
    """NaN logits for inputs brighter than a threshold (some clean inputs)."""

    def __init__(self, net: torch.nn.Module, threshold: float) -> None:
        super().__init__(net)
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        bright = x.flatten(1).mean(dim=1) > self.threshold
        return torch.where(bright[:, None], torch.full_like(z, float("nan")), z)


class NaNOffGrid(_Wrap):
    """Finite on uint8 pixel values (every clean input), NaN anywhere between them (where attacks go)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        off = (x * 255.0 - torch.round(x * 255.0)).abs().flatten(1).amax(dim=1) > 1e-3
        return torch.where(off[:, None], z * float("nan"), z)  # NaN flows back into the gradient too


class NaNLogitsOffGrid(_Wrap):
    """Like NaNOffGrid, but the gradient stays finite (the NaN is a constant): attacks run normally
    and land where the logits are NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        off = (x * 255.0 - torch.round(x * 255.0)).abs().flatten(1).amax(dim=1) > 1e-3
        return torch.where(off[:, None], torch.full_like(z, float("nan")), z)


class NaNGradient(_Wrap):
    """Finite logits, but d/dx sqrt(x) at the black corner pixel is inf, times 0: a NaN gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + 0.0 * torch.sqrt(x[:, :, 0, 0]).sum(dim=1, keepdim=True)


class AlwaysNaN(_Wrap):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * float("nan")


class Quantised(_Wrap):
    """Rounds its input to 8 bits: the input gradient is exactly zero (gradient masking)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 255.0) / 255.0)


class BatchStats(_Wrap):
    """Normalises with the batch mean: an input's logits depend on the rest of its batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x - 0.5 * x.mean(dim=0, keepdim=True))


class WithBatchNorm(_Wrap):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__(net)
        self.bn = torch.nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.bn(x))


class Squeezes(_Wrap):
    """(N, K) logits for N > 1, but (K,) for a single input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(0)


class Tiny3(torch.nn.Module):
    """Three channels in, any height and width."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return torch.jit.load(str(DEMO / "mnist_cnn.pt")).eval()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 16 demo MNIST images (uint8 NHWC), as an .npz."""
    d = np.load(DEMO / "mnist_demo.npz")
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x=d["x"][:16], y=d["y"][:16])
    return path


def _save(module: torch.nn.Module, path: Path, train: bool = False) -> Path:
    scripted = torch.jit.script(module)
    scripted.train(train)
    scripted.save(str(path))
    return path


def _attack(monkeypatch, capsys, model: Path | str, data: Path | str, out: Path, *args: str) -> tuple[int, str, dict]:
    code, err = run_cli(monkeypatch, capsys, "attack", str(model), "--data", str(data), "-q", "--device", "cpu",
                        "--out", str(out), *args)
    report = json.loads(out.read_text()) if code == 0 else {}
    if report:
        assert validation_errors(report) == []
    return code, err, report


# ----------------------------------------------------------------------------- model


def test_pickled_payload_is_refused_through_the_cli(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "model.pt"
    torch.save({"model": Payload(marker)}, str(ckpt))
    code, err = run_cli(monkeypatch, capsys, "attack", str(ckpt), "--data", "demo:mnist", "-q",
                        "--out", str(tmp_path / "r.json"))
    assert code == 2 and "will not unpickle" in one_line(err)
    assert not marker.exists() and not (tmp_path / "r.json").exists()


def test_a_bit_flipped_weight_is_refused_not_loaded(tmp_path, monkeypatch, capsys):
    import struct
    import zipfile

    data = bytearray((DEMO / "mnist_cnn.pt").read_bytes())
    with zipfile.ZipFile(DEMO / "mnist_cnn.pt") as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/data/0"))
    name_len, extra_len = struct.unpack("<HH", bytes(data[info.header_offset + 26 : info.header_offset + 30]))
    data[info.header_offset + 30 + name_len + extra_len + 7] ^= 0x10  # one bit of one stored weight
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(bytes(data))
    code, err = run_cli(monkeypatch, capsys, "attack", str(flipped), "--data", "demo:mnist", "-q",
                        "--out", str(tmp_path / "r.json"))
    assert code == 2 and f"archive member {info.filename!r} fails its CRC check" in one_line(err)


def test_logits_that_change_shape_with_the_batch_size_are_refused(tmp_path, monkeypatch, capsys, net, small):
    model = _save(Squeezes(net), tmp_path / "squeeze.pt")
    code, err = run_cli(monkeypatch, capsys, "attack", str(model), "--data", str(small), "-q",
                        "--out", str(tmp_path / "r.json"))
    assert code == 2
    assert "model output has shape (10,) for a batch of 1, expected (N, K) logits" in one_line(err)


def test_nan_logits_on_clean_inputs_are_counted_not_attacked(tmp_path, monkeypatch, capsys, net, small):
    x = np.load(small)["x"].astype(np.float32) / 255.0
    threshold = float(np.median(x.reshape(16, -1).mean(axis=1)))
    model = _save(NaNWhenBright(net, threshold), tmp_path / "bright.pt")
    code, err, report = _attack(monkeypatch, capsys, model, small, tmp_path / "r.json", "-a", "fgsm", "--eps", "0.05")
    assert code == 0, err
    assert any(w.startswith("the model returns NaN/inf logits for 8 of the 16 sampled clean inputs: they count as "
                            "misclassified and are not attacked") for w in report["warnings"]), report["warnings"]
    assert report["data"]["n_evaluated"] <= 8 and report["data"]["clean_accuracy"] <= 0.5


def test_nan_met_during_the_attack_is_counted_in_the_row(tmp_path, monkeypatch, capsys, net, small):
    model = _save(NaNOffGrid(net), tmp_path / "offgrid.pt")
    code, err, report = _attack(monkeypatch, capsys, model, small, tmp_path / "r.json", "-a", "pgd", "--eps", "0.1",
                                "-p", "pgd.steps=3")
    assert code == 0, err
    (row,) = report["results"]
    assert row["nonfinite_logits"] > 0 and row["nonfinite_grads"] > 0 and row["nonfinite_examples"] == 0
    (w,) = [w for w in report["warnings"] if w.startswith("non-finite values in pgd / untargeted: ")]
    assert f"NaN/inf logits in {row['nonfinite_logits']} of " in w and "success rate is unreliable" in w


def test_examples_with_nan_logits_are_never_successes(tmp_path, monkeypatch, capsys, net, small):
    """QA 11: an adversarial example whose logits are NaN counted as a success (argmax of a NaN row
    is the NaN's position, which is not the label)."""
    model = _save(NaNLogitsOffGrid(net), tmp_path / "offgrid.pt")
    code, err, report = _attack(monkeypatch, capsys, model, small, tmp_path / "r.json", "-a", "fgsm", "--eps", "0.1",
                                "-t", "untargeted,next-class")
    assert code == 0, err
    for row in report["results"]:  # every FGSM example is off the uint8 grid: NaN logits, no success
        assert row["nonfinite_logits"] >= row["n"] > 0 and row["n_success"] == 0, {k: row[k] for k in ("n", "n_success", "nonfinite_logits", "nonfinite_grads", "nonfinite_examples", "linf_mean_all")}


def test_nan_gradients_are_counted_not_silently_zeroed(tmp_path, monkeypatch, capsys, net, small):
    model = _save(NaNGradient(net), tmp_path / "nangrad.pt")
    code, err, report = _attack(monkeypatch, capsys, model, small, tmp_path / "r.json", "-a", "fgsm", "--eps", "0.2")
    assert code == 0, err
    (row,) = report["results"]
    n = row["n"]
    assert row["nonfinite_grads"] == n and row["nonfinite_logits"] == 0  # one backward pass per input, all NaN
    assert row["success_rate"] > 0  # the finite part of the gradient still drives the attack
    warnings = report["warnings"]
    assert "NaN/inf in the input gradients of 8 of 8 clean inputs checked: gradient attacks cannot follow them " \
           "and their results are unreliable" in warnings
    assert any(w.startswith(f"non-finite values in fgsm / untargeted: NaN/inf input gradients in {n} of {n} backward")
               for w in warnings), warnings


def test_a_model_that_only_returns_nan_exits_2(tmp_path, monkeypatch, capsys, net, small):
    model = _save(AlwaysNaN(net), tmp_path / "nan.pt")
    code, err = run_cli(monkeypatch, capsys, "attack", str(model), "--data", str(small), "-q",
                        "--out", str(tmp_path / "r.json"))
    assert code == 2
    assert "returns NaN/inf logits for 16 of the 16 sampled inputs" in one_line(err)
    assert not (tmp_path / "r.json").exists()  # never "robust"


def test_nonfinite_examples_fall_back_to_the_clean_input(net):
    from robaudit.attacks.base import Attack, AttackKind, Norm

    class HalfNaN(Attack):
        name, kind, norms = "half-nan", AttackKind.MINIMIZATION, (Norm.L2,)

        def run(self, model, x, criterion, generator):
            out = (x + 0.3).clamp(0, 1)
            out[::2] = float("nan")
            return out

    x = torch.rand(6, 1, 28, 28)
    out = HalfNaN().generate(net, x, torch.zeros(6, dtype=torch.long), batch_size=4)
    assert out.nonfinite_examples == 3  # rows 0 and 2 of the batch of 4, row 0 of the batch of 2
    assert torch.isfinite(out.x_adv).all()
    assert torch.equal(out.x_adv[[0, 2, 4]], x[[0, 2, 4]])  # the clean input: never a success
    assert not torch.equal(out.x_adv[1], x[1])


def test_zero_gradients_flag_masking_and_black_box_beats_white_box(tmp_path, monkeypatch, capsys, net, small):
    model = _save(Quantised(net), tmp_path / "quant.pt")
    code, err, report = _attack(monkeypatch, capsys, model, small, tmp_path / "r.json", "-a", "cw-l2,hopskipjump",
                                "-p", "cw-l2.max_iter=5", "-p", "cw-l2.binary_search_steps=2",
                                "-p", "hopskipjump.max_iter=2", "-n", "8")
    assert code == 0, err
    warnings = report["warnings"]
    assert any(w.startswith("gradient masking suspected: the input gradient of the logit margin is exactly zero for "
                            "8 of 8 clean inputs checked") for w in warnings), warnings
    rows = {r["attack"]: r for r in report["results"]}
    assert rows["cw-l2"]["success_rate"] < rows["hopskipjump"]["success_rate"]
    assert any(w.startswith("unreliable evaluation: the black-box attack hopskipjump / untargeted beats every "
                            "white-box attack") for w in warnings), warnings


def test_batch_norm_in_training_mode_is_forced_to_eval(tmp_path, net, small):
    from robaudit.engine.attack_job import model_warnings
    from robaudit.engine.evaluation import build_evaluation_set
    from robaudit.engine.session import InputOptions, load_inputs

    path = _save(WithBatchNorm(net), tmp_path / "bn.pt", train=True)
    assert torch.jit.load(str(path)).training  # saved in training mode
    inputs = load_inputs(InputOptions(model=str(path), data=str(small), device="cpu"))
    model = inputs.model
    x = torch.from_numpy(inputs.data.x[:8])
    with torch.no_grad():
        assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-5)  # running statistics, not the batch's
    evalset = build_evaluation_set(model, inputs.data, None, 0, 16)
    assert model_warnings(model, evalset) == []


def test_batch_statistics_are_flagged(tmp_path, net, small):
    from robaudit.engine.attack_job import model_warnings
    from robaudit.engine.evaluation import build_evaluation_set
    from robaudit.engine.session import InputOptions, load_inputs

    inputs = load_inputs(InputOptions(model=str(_save(BatchStats(net), tmp_path / "bs.pt")), data=str(small),
                                      device="cpu"))
    evalset = build_evaluation_set(inputs.model, inputs.data, None, 0, 16)
    assert any("depends on the other inputs in its batch" in w for w in model_warnings(inputs.model, evalset))


# ----------------------------------------------------------------------------- data through the CLI


def _u8(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize(("arrays", "needle"), [
    (lambda: {"x": np.array([object(), 1], dtype=object), "y": np.array([0, 1])}, "never unpickles"),
    (lambda: {"x": _u8(3, 28, 28, 1), "y": np.array([0, 1])}, "3 images but 2 labels"),
    (lambda: {"x": _u8(0, 28, 28, 1), "y": np.zeros(0, np.int64)}, "holds no images"),
    (lambda: {"x": _u8(4, 28, 28, 1).astype(np.float32), "y": np.arange(4)}, "divide by 255"),
    (lambda: {"x": _u8(4, 28, 28, 1), "y": np.array([0.5, 1, 2, 3])}, "non-integral"),
])
def test_bad_data_exits_2_with_one_line(tmp_path, monkeypatch, capsys, arrays, needle):
    data = tmp_path / "d.npz"
    np.savez(data, **arrays())
    code, err = run_cli(monkeypatch, capsys, "attack", "demo:mnist", "--data", str(data), "-q",
                        "--out", str(tmp_path / "r.json"))
    assert code == 2 and needle in one_line(err)
    assert not (tmp_path / "r.json").exists()


def test_ambiguous_layout_is_settled_by_the_model(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    model = _save(Tiny3().eval(), tmp_path / "tiny3.pt")
    x = _u8(6, 4, 5, 3)  # axis 1 (4: RGBA?) and axis 3 (3: RGB?) both look like channels
    with torch.no_grad():
        y = torch.jit.load(str(model))(torch.from_numpy(x.transpose(0, 3, 1, 2) / 255.0).float()).argmax(1).numpy()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code, err, report = _attack(monkeypatch, capsys, model, tmp_path / "d.npz", tmp_path / "r.json", "-a", "fgsm")
    assert code == 0, err
    assert report["model"]["input_shape"] == [3, 4, 5] and report["data"]["n_evaluated"] == 6

    np.savez(tmp_path / "d2.npz", x=_u8(6, 3, 8, 3), y=y)  # 3 and 3: not even the model can tell
    code, err = run_cli(monkeypatch, capsys, "attack", str(model), "--data", str(tmp_path / "d2.npz"), "-q",
                        "--out", str(tmp_path / "r2.json"))
    assert code == 2 and "--layout NCHW|NHWC" in one_line(err)


# ----------------------------------------------------------------------------- config and CLI


@pytest.mark.parametrize(("args", "needle"), [
    (["--eps", "8"], "eps 8 is not below the input range 1: under linf every input can be replaced entirely "
                     "(did you mean 8/255 = 0.03137?)"),
    (["--eps", "30", "--norm", "l2"], "eps 30 is at least the largest possible L2 distance between two inputs (28)"),
    (["--eps", "0.1", "-a", "deepfool"], "--eps 0.1 is ignored: none of the attacks run has an eps budget"),
])
def test_eps_meant_as_pixel_values_warns(tmp_path, monkeypatch, capsys, small, args, needle):
    code, err, report = _attack(monkeypatch, capsys, "demo:mnist", small, tmp_path / "r.json", "-n", "4",
                                *(["-a", "fgsm"] if "-a" not in args else []), *args)
    assert code == 0, err
    assert any(w.startswith(needle) for w in report["warnings"]), report["warnings"]
    assert needle[:20] in " ".join(err.split())  # also said on the terminal


@pytest.mark.parametrize(("args", "needle"), [
    (["--eps", "nan"], "--eps must be a finite number >= 0, got nan"),
    (["--eps", "inf"], "--eps must be a finite number >= 0, got inf"),
    (["-a", "pgd", "-p", "pgd.steps=2.5"], "parameter steps='2.5' is not a valid int"),
    (["-a", "pgd", "-p", "pgd.rel_stepsize=nan"], "parameter rel_stepsize='nan' is not a valid float"),
    (["-a", "pgd", "-p", "pgd.random_start=2"], "parameter random_start='2' is not a valid bool"),
])
def test_nan_eps_and_truncating_parameters_are_refused(tmp_path, monkeypatch, capsys, args, needle):
    code, err = run_cli(monkeypatch, capsys, "attack", "demo:mnist", "--data", "demo:mnist", "-n", "4", "-q",
                        "--out", str(tmp_path / "r.json"), *args)
    assert code == 2 and needle in one_line(err)


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("attacks:\n  pgd: {steps: 2.5}\n", "attacks.pgd.steps", "parameter steps=2.5 is not a valid int"),
    ("attacks:\n  pgd: {steps: true}\n", "attacks.pgd.steps", "parameter steps=True is not a valid int"),
    ("attacks:\n  pgd: {steps: .inf}\n", "attacks.pgd.steps", "parameter steps=inf is not a valid int"),
    ("attacks:\n  pgd: {random_start: 2}\n", "attacks.pgd.random_start", "not a valid bool"),
    ("attacks:\n  pgd: {rel_stepsize: .nan}\n", "attacks.pgd.rel_stepsize", "not a valid float"),
    ("attacks:\n  pgd: {eps: .nan}\n", "attacks.pgd.eps", "must be a finite number, got nan"),
    ("attacks:\n  pgd: {eps: 8}\n", "attacks.pgd.eps", "did you mean 8/255 = 0.03137?"),
    ("attacks:\n  pgd: {eps: [1]}\n", "attacks.pgd.eps", "must be a finite number"),
    ("samples: ten\nattacks: [fgsm]\n", "samples", "must be an integer"),
    ("batch_size: 0\nattacks: [fgsm]\n", "batch_size", "must be between 1 and"),
    ("attacks: [1, 2]\n", "attacks", "must hold names only"),
    ("attacks: {fgsm: {}}\ntargets: 3\n", "targets", "non-empty list"),
])
def test_profile_values_of_the_wrong_type_are_refused(tmp_path, text, key, reason):
    from robaudit.config import load_profile

    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_profile(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}: ") and reason in msg and "\n" not in msg, msg


@pytest.mark.parametrize(("text", "reason"), [
    ("!!python/object/apply:os.system ['echo pwned']\n", "could not determine a constructor"),
    ("[" * 5000 + "]" * 5000, "RecursionError"),
    ("seed: 1" + "0" * 5000 + "\nattacks: [fgsm]\n", "integer string conversion"),
    ("attacks: [fgsm]\n" + "#" * (1 << 20), "too large for a profile"),
    ("attacks:\n  \"pgd\\nfake\": {}\n", "attacks.pgd\\nfake: an attack label is one word"),  # stays one line
])
def test_hostile_yaml_is_refused_in_one_line(tmp_path, text, reason):
    from robaudit.config import load_profile

    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_profile(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and reason in msg and "\n" not in msg, msg


def test_a_target_equal_to_the_label_is_refused(net):
    from robaudit.attacks.fgsm import FGSM

    x, y = torch.rand(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    with pytest.raises(ConfigError, match="2 of 4 targets equal the true label"):
        FGSM(eps=0.1).generate(net, x, y, torch.tensor([1, 3, 3, 5]))
    with pytest.raises(ConfigError, match="one target class per input"):
        FGSM(eps=0.1).generate(net, x, y, torch.tensor([0, 0]))


# ----------------------------------------------------------------------------- faults


def test_mean_std_that_ruin_the_model_are_flagged_with_its_accuracy_without_them(tmp_path, monkeypatch, capsys):
    """--mean/--std on a model that normalises inside normalise twice: the accuracy drops, and the
    report used to say nothing about why."""
    out = tmp_path / "r.json"
    args = ("-a", "fgsm", "--eps", "0.1", "-n", "40")
    code, err, report = _attack(monkeypatch, capsys, "demo:mnist", "demo:mnist", out, *args,
                                "--mean", "0.9", "--std", "0.05")
    assert code == 0, err
    flagged = [w for w in report["warnings"] if "drop --mean/--std" in w]
    assert report["data"]["clean_accuracy"] == pytest.approx(0.675)
    assert flagged == ["clean accuracy 67.5% with --mean/--std; without --mean/--std the model classifies 97.5% of "
                       "the sampled inputs correctly: it seems to normalise its input itself, so drop --mean/--std"]
    code, err, report = _attack(monkeypatch, capsys, "demo:mnist", "demo:mnist", out, *args,
                                "--mean", "0", "--std", "1")  # harmless: no flag
    assert code == 0 and not [w for w in report["warnings"] if "--mean/--std" in w]


def test_disk_full_keeps_the_previous_report(tmp_path, monkeypatch, capsys, small):
    out = tmp_path / "r.json"
    args = ("-a", "fgsm", "--eps", "0.1", "-n", "4")
    code, err, first = _attack(monkeypatch, capsys, "demo:mnist", small, out, *args)
    assert code == 0, err
    before = out.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code, err = run_cli(monkeypatch, capsys, "attack", "demo:mnist", "--data", str(small), "-q", "--out", str(out),
                        "--seed", "1", *args)
    assert code == 2
    assert f"cannot write {out}: No space left on device" in one_line(err) and "untouched" in err
    assert out.read_bytes() == before  # the previous report, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary file left behind


def test_unwritable_output_paths_exit_2(tmp_path, monkeypatch, capsys, small):
    import robaudit.engine.attack_job as attack_job

    def never(*args, **kwargs):  # the output path is checked before any attack runs
        raise AssertionError("attacks ran before the output path was checked")

    monkeypatch.setattr(attack_job, "run_attack_job", never)
    blocker = tmp_path / "afile"
    blocker.write_text("in the way")
    for out in (blocker / "r.json", tmp_path):  # a folder below a file; a folder where the file should go
        code, err = run_cli(monkeypatch, capsys, "attack", "demo:mnist", "--data", str(small), "-q", "-a", "fgsm",
                            "-n", "4", "--out", str(out))
        assert code == 2 and f"cannot write {out}" in one_line(err)
    assert blocker.read_text() == "in the way"
    code, err = run_cli(monkeypatch, capsys, "audit", "demo:mnist", "--data", str(small), "--profile", "quick",
                        "-q", "--format", "none", "--out", str(blocker))
    assert code == 2 and f"cannot use {blocker} as the output folder" in one_line(err)


@pytest.mark.parametrize(("args", "code"), [
    (("attacks",), 141), (("--help",), 141), (("report", "REPORT", "--format", "json"), 141), (("report", "REPORT"), 141),
    (("report", "REPORT", "--format", "json", "--out", "/dev/stdout"), 141),
    (("report", "REPORT", "--gate", "fgsm success_rate <= 0"), 1),  # the gate is still judged, and said
])
def test_a_closed_stdout_exits_141_quietly_not_as_a_gate_failure(tmp_path, args, code):
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"schema_version": 1}))
    if "REPORT" in args:
        done = subprocess.run([str(EXE), "attack", "demo:mnist", "--data", "demo:mnist", "-a", "fgsm", "-n", "4",
                               "--eps", "0.3", "-q", "--out", str(report)], capture_output=True, env=ENV, timeout=300)
        assert done.returncode == 0, done.stderr
    argv = [str(EXE), *(str(report) if a == "REPORT" else a for a in args)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    proc.stdout.close()  # `robaudit ... | true`: nobody reads
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err  # 1 is for failed gates only
    lines = err.decode().splitlines()
    if code == 1:
        assert [x for x in lines if x.startswith("robaudit: gate failed: fgsm success_rate <= 0")], lines
    else:
        assert not [x for x in lines if x.startswith("robaudit: ") or "Traceback" in x], lines


def test_a_named_pipe_or_device_is_written_in_place_not_replaced(tmp_path):
    import threading

    from robaudit.report.writer import check_writable, write_text_atomic

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    check_writable(fifo)
    write_text_atomic(fifo, '{"ok": 1}\n')
    reader.join(timeout=10)
    assert got == [b'{"ok": 1}\n']
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still a pipe, not a regular file renamed over it
    link = tmp_path / "null"
    link.symlink_to("/dev/null")
    write_text_atomic(link, "x")  # through a symlink to a device
    assert link.is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["null", "pipe"]


def test_a_symlinked_report_is_replaced_behind_the_link_and_keeps_its_mode(tmp_path):
    from robaudit.report.writer import write_text_atomic

    real = tmp_path / "reports" / "r.json"
    real.parent.mkdir()
    real.write_text("old")
    os.chmod(real, 0o600)
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    write_text_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o600  # a private report stays private


def test_an_interrupt_during_the_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from robaudit.report.writer import write_atomic

    out = tmp_path / "r.json"
    out.write_text("old")

    def interrupted(fh):
        fh.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(out, interrupted)
    assert out.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["r.json"]


AUDIT_PROFILE = """\
seed: 2
samples: 16
batch_size: 4
examples: 0
attacks:
  bim-1: {attack: bim, eps: 0.2, steps: 1}
  bim-20: {attack: bim, eps: 0.2, steps: 20}
targets: [untargeted]
"""


@pytest.fixture(scope="module")
def audit_reference(tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted audit of AUDIT_PROFILE (run in a subprocess: a fresh, unpatched process)."""
    tmp = tmp_path_factory.mktemp("audit")
    profile = tmp / "p.yaml"
    profile.write_text(AUDIT_PROFILE)
    proc = subprocess.run([str(EXE), "audit", "demo:mnist", "--data", "demo:mnist", "--profile", str(profile),
                           "--out", str(tmp / "ref"), "-q", "--format", "none"],
                          capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr
    return profile, json.loads((tmp / "ref" / "report.json").read_text())


def test_audit_report_warns_that_more_iterations_do_better(audit_reference):
    _, report = audit_reference
    rows = {r["label"]: r for r in report["results"]}
    assert rows["bim-20"]["success_rate"] > rows["bim-1"]["success_rate"] + 0.3
    assert any(w.startswith("unreliable evaluation: more iterations do better for bim-1 / untargeted -> "
                            "bim-20 / untargeted (steps 1 -> 20: ") for w in report["warnings"]), report["warnings"]
    assert all(r["nonfinite_logits"] == r["nonfinite_grads"] == r["nonfinite_examples"] == 0 for r in rows.values())


def test_journal_write_failure_then_resume_loses_nothing(tmp_path, monkeypatch, capsys, audit_reference):
    profile, reference = audit_reference
    out = tmp_path / "out"
    real_fsync, calls = os.fsync, []

    def fail_on_the_fifth(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 5:  # the header and three chunks are safe
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fail_on_the_fifth)
    args = ("audit", "demo:mnist", "--data", "demo:mnist", "--profile", str(profile), "--out", str(out), "-q",
            "--format", "none")
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert "cannot write the audit journal" in one_line(err) and "No space left on device" in err
    assert "rerun with --resume" in err and not (out / "report.json").exists()
    monkeypatch.setattr(os, "fsync", real_fsync)
    code, err = run_cli(monkeypatch, capsys, *args, "--resume")
    assert code == 0, err
    assert strip_timing(json.loads((out / "report.json").read_text())) == strip_timing(reference)


@pytest.mark.parametrize(("sig", "exit_code", "message"), [
    (signal.SIGTERM, 143, "robaudit: terminated (SIGTERM); finished work is kept"),
    (signal.SIGINT, 130, "robaudit: interrupted; finished work is kept"),  # Ctrl-C used to print nothing
])
def test_sigterm_midway_then_resume_loses_at_most_one_batch(tmp_path, monkeypatch, capsys, audit_reference,
                                                            sig, exit_code, message):
    profile, reference = audit_reference
    out = tmp_path / "out"
    args = ["audit", "demo:mnist", "--data", "demo:mnist", "--profile", str(profile), "--out", str(out), "-q",
            "--format", "none"]
    proc = subprocess.Popen([str(EXE), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, text=True)
    journal = out / JOURNAL_NAME
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_bytes().count(b'"type":"chunk"') >= 2:
                break
            time.sleep(0.01)
        proc.send_signal(sig)
    finally:
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == exit_code, "the audit finished before it could be stopped"
    assert stderr.strip().startswith(message) and "--resume" in stderr
    assert not (out / "report.json").exists()
    done = [json.loads(line) for line in journal.read_text().splitlines() if '"type":"chunk"' in line]
    assert 2 <= len(done) < 8  # 2 cells x 4 chunks of 4 samples

    code, err = run_cli(monkeypatch, capsys, *args, "--resume")
    assert code == 0, err
    assert strip_timing(json.loads((out / "report.json").read_text())) == strip_timing(reference)
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    chunks = [(r["cell"], r["record"]["chunk"]) for r in records if r["type"] == "chunk"]
    assert len(chunks) == len(set(chunks)) == 8  # nothing journaled before SIGTERM ran twice
    assert chunks[: len(done)] == [(r["cell"], r["record"]["chunk"]) for r in done]


# ----------------------------------------------------------------------------- output integrity


def test_an_eps_ball_violation_exits_3_and_counts_nothing(tmp_path, monkeypatch, capsys, small):
    from robaudit.attacks.base import Attack
    from robaudit.attacks.fgsm import FGSM

    monkeypatch.setattr(FGSM, "run", lambda self, model, x, criterion, generator: (x + 2 * self.eps).clamp(0, 1))
    monkeypatch.setattr(Attack, "project", lambda self, x, x_adv: x_adv)
    out = tmp_path / "r.json"
    code, err = run_cli(monkeypatch, capsys, "attack", "demo:mnist", "--data", str(small), "-q", "-a", "fgsm",
                        "--eps", "0.1", "--out", str(out))
    assert code == 3
    assert "attack fgsm exceeded its linf budget: 0.2 > eps 0.1" in one_line(err)
    assert not out.exists()


def test_profile_keys_that_are_not_names_are_refused(tmp_path):
    """Found by the slow profile fuzzer: ``&eps: 0.3`` (a YAML anchor on a key) parses as a None key."""
    from robaudit.config import load_profile
    from robaudit.errors import ConfigError

    for body, where in [("attacks:\n  pgd: {attack: pgd, &eps: 0.3, steps: 40}\n", "attacks.pgd"),
                        ("attacks: [fgsm]\n1: 2\n", "top level")]:
        path = tmp_path / "p.yaml"
        path.write_text(body)
        with pytest.raises(ConfigError, match=f"{where}: keys must be names"):
            load_profile(str(path))


def test_zip_claiming_an_unknown_version_is_refused(tmp_path):
    """Found by the slow fuzzers: a damaged central directory whose 'version needed' is above what
    zipfile supports raised NotImplementedError from the npz and TorchScript loaders."""
    import io
    import zipfile

    from robaudit.data import load_dataset
    from robaudit.errors import DataLoadError, ModelLoadError
    from robaudit.models.loader import load_model

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x.npy", b"\x93NUMPY")
    raw = bytearray(buf.getvalue())
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 6:cd + 8] = (109).to_bytes(2, "little")  # "version needed to extract" 10.9
    for name, load, err in [("d.npz", lambda p: load_dataset(p), DataLoadError),
                            ("m.pt", lambda p: load_model(p, device="cpu"), ModelLoadError)]:
        path = tmp_path / name
        path.write_bytes(bytes(raw))
        with pytest.raises(err):
            load(path)
