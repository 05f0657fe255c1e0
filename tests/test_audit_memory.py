"""Batch sizes adapt to memory: an out-of-memory error halves an attack batch and retries it (fast
unit tests with a model that "runs out of memory" above N inputs), and the ImageNet-sized plumbing
with random-weight torchvision models (slow)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robaudit.config import parse_profile
from robaudit.engine import audit as audit_mod
from robaudit.engine.audit import AuditJob, run_audit, strip_timing
from robaudit.engine.cells import is_out_of_memory
from robaudit.engine.session import InputOptions, Inputs
from robaudit.errors import EXIT_INTERNAL, AttackFailure
from robaudit.models.interface import Classifier
from robaudit.report.schema import validation_errors

from .conftest import DEMO

pytestmark = pytest.mark.skipif(not (DEMO / "mnist_cnn.pt").exists(), reason="bundled demo model missing")


class OOMAbove(Classifier):
    """Wraps a classifier; a forward pass with gradients on more than ``limit`` inputs raises ``error``."""

    def __init__(self, inner: Classifier, limit: int, error: type[BaseException], message: str) -> None:
        super().__init__(inner.info)
        self.inner, self.limit, self.error, self.message = inner, limit, error, message
        self.refused: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.shape[0] > self.limit:
            self.refused.append(int(x.shape[0]))
            raise self.error(self.message)
        return self.inner(x)


PROFILE = {"seed": 2, "samples": 12, "batch_size": 8, "examples": 0,
           "attacks": {"fgsm": {"eps": 0.1}, "bim": {"eps": 0.1, "steps": 5}}}


def _run(tmp_path: Path, monkeypatch, wrap=None) -> dict:
    real = audit_mod.load_inputs

    def load(opts: InputOptions) -> Inputs:
        inp = real(opts)
        return inp if wrap is None else dataclasses.replace(inp, model=wrap(inp.model))

    monkeypatch.setattr(audit_mod, "load_inputs", load)
    job = AuditJob(models=("demo:mnist",), inputs=InputOptions(model="", data="demo:mnist", device="cpu"),
                   profile=parse_profile(PROFILE, source="p.yaml"), out=tmp_path)
    ((_, report),) = run_audit(job, ["robaudit"]).reports
    return report


@pytest.mark.parametrize(("error", "message"), [
    (torch.cuda.OutOfMemoryError, "CUDA out of memory. Tried to allocate 2.00 GiB"),
    (RuntimeError, "[enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: can't allocate memory"),
    (MemoryError, ""),
])
def test_out_of_memory_halves_the_batch_with_the_same_results(tmp_path, monkeypatch, error, message):
    reference = _run(tmp_path / "ref", monkeypatch)
    models: list[OOMAbove] = []
    report = _run(tmp_path / "oom", monkeypatch,
                  lambda m: models.append(OOMAbove(m, 2, error, message)) or models[-1])
    assert models[0].refused and max(models[0].refused) == 8
    a, b = strip_timing(reference), strip_timing(report)
    for row in b["results"]:
        notes = row.pop("notes")
        assert any("out of memory with a batch of 8; retried with 4" in n for n in notes)
        assert any("out of memory with a batch of 4; retried with 2" in n for n in notes)
    assert [w for w in b.pop("warnings") if "out of memory" in w]
    a.pop("warnings")
    assert a["results"] == b["results"]  # fgsm and bim (no random start): identical per-sample results
    assert validation_errors(report) == []


def test_out_of_memory_at_batch_1_fails_with_exit_3(tmp_path, monkeypatch):
    with pytest.raises(AttackFailure, match="out of memory even with a batch of 1 sample") as err:
        _run(tmp_path, monkeypatch, lambda m: OOMAbove(m, 0, torch.cuda.OutOfMemoryError, "CUDA out of memory"))
    assert err.value.exit_code == EXIT_INTERNAL


def test_other_errors_are_not_retried(tmp_path, monkeypatch):
    models: list[OOMAbove] = []
    with pytest.raises(AttackFailure, match="boom"):
        _run(tmp_path, monkeypatch, lambda m: models.append(OOMAbove(m, 2, ValueError, "boom")) or models[-1])
    assert models[0].refused == [8]
    assert is_out_of_memory(AttackFailure("x").with_traceback(None)) is False
    try:
        try:
            raise MemoryError()
        except MemoryError as inner:
            raise AttackFailure("wrapped") from inner
    except AttackFailure as exc:
        assert is_out_of_memory(exc)


# --- ImageNet-sized plumbing (slow) --------------------------------------------------------------

IMAGENET_PROFILE = """\
# paper-imagenet's attack x target grid, minus defences and CLEVER, with cheap attack parameters
seed: 0
samples: null
batch_size: 4
examples: 1
attacks:
  fgsm: {eps: 0.0157}
  apgd: {eps: 0.0157, n_iter: 2}
  cw-l2: {max_iter: 2, binary_search_steps: 1}
  cw-linf: {max_iter: 2, search_steps: 1}
  hopskipjump: {max_iter: 1, max_eval: 8, init_eval: 4, init_size: 4, max_queries: 40, query_batch: 8}
  shadow: {nb_steps: 2}
  universal: {eps: 0.0157, max_iter: 1}
targets: all
gates:
  - clean_accuracy >= 1.0
"""


def _torchvision_model(arch: str, folder: Path) -> tuple[Path, Path]:
    """A random-weight torchvision model as TorchScript, and an .npz of random inputs labelled with
    the model's own predictions (so every input is classified correctly)."""
    import torchvision

    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if arch == "inception_v3" else {}
    net = getattr(torchvision.models, arch)(weights=None, **kwargs).eval()
    size = 299 if arch == "inception_v3" else 224
    x = torch.rand(6, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scripted = torch.jit.trace(net, x[:1])
        y = scripted(x).argmax(1)
    model_path, data_path = folder / f"{arch}.pt", folder / f"{arch}.npz"
    scripted.save(str(model_path))
    np.savez(data_path, x=x.numpy(), y=y.numpy().astype(np.int64))
    return model_path, data_path


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet50", "inception_v3"])
def test_imagenet_sized_random_models_run_the_paper_grid(tmp_path, arch):
    model_path, data_path = _torchvision_model(arch, tmp_path)
    profile = tmp_path / "imagenet-grid.yaml"
    profile.write_text(IMAGENET_PROFILE)
    exe = Path(sys.executable).parent / "robaudit"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "COLUMNS": "200"}
    start = time.monotonic()
    proc = subprocess.run([str(exe), "audit", str(model_path), "--data", str(data_path), "--profile", str(profile),
                           "--out", str(tmp_path / "out"), "-q", "--format", "none"],
                          capture_output=True, text=True, env=env, timeout=3600)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert validation_errors(report) == []
    size = 299 if arch == "inception_v3" else 224
    assert report["model"]["input_shape"] == [3, size, size] and report["model"]["classes"] == 1000
    assert report["data"]["n_evaluated"] == 6 and report["data"]["clean_accuracy"] == 1.0
    rows = report["results"]
    assert len(rows) == 21 and len({r["cell_id"] for r in rows}) == 21
    ran = [r for r in rows if r["status"] == "ok"]
    assert {r["attack"] for r in ran} == {"fgsm", "apgd", "cw-l2", "cw-linf", "hopskipjump", "shadow", "universal"}
    assert [r["target"] for r in rows if r["status"] != "ok"] == ["least-likely", "next-class"]  # universal
    for r in ran:
        assert r["n"] == 6 and 0.0 <= r["success_rate"] <= 1.0
        assert r["eps"] is None or r["linf_max"] is None or r["linf_max"] <= r["eps"] + 1e-6
    html = subprocess.run([str(exe), "report", str(tmp_path / "out" / "report.json"), "--format", "html"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert html.returncode == 0 and html.stdout.count("<img") >= 3 * len(report["examples"])
    print(f"{arch}: {seconds:.0f} s")
