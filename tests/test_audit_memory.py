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
