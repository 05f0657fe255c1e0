"""Shared fixtures: the bundled demo model/data and the optional ../shared folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEMO = ROOT / "robaudit" / "demo"


def pytest_configure(config):
    import torch

    # Small models on 2 shared cores: one intra-op thread is faster than two fighting for them.
    torch.set_num_threads(int(os.environ.get("ROBAUDIT_TEST_THREADS", "1")))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests, whatever ``ROBAUDIT_TEST_THREADS`` or an in-process
    command set: tiny models and many small sequential passes (attacks, cost attacks) are faster on
    one thread than on two fighting other jobs for the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def demo_correct(n: int | None = None, pool: int | None = None):
    """The bundled demo TorchScript CNN and, of the first ``pool`` demo images (all: None), the
    first ``n`` it classifies correctly (all: None), as ``(model, x, y)`` with ``x`` float NCHW in
    [0, 1]; skips the test when the demo files are missing."""
    import numpy as np
    import torch

    model_path, data_path = DEMO / "mnist_cnn.pt", DEMO / "mnist_demo.npz"
    if not (model_path.exists() and data_path.exists()):
        pytest.skip(f"bundled demo model/data not found ({model_path.name}, {data_path.name} in {DEMO})")
    model = torch.jit.load(str(model_path), map_location="cpu").eval()
    with np.load(data_path, allow_pickle=False) as d:
        x = torch.from_numpy(d["x"][:pool].astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()
        y = torch.from_numpy(d["y"][:pool].astype(np.int64))
    with torch.no_grad():
        ok = model(x).argmax(dim=1) == y
    x, y = x[ok][:n], y[ok][:n]
    assert n is None or len(y) == n, f"the demo set should hold at least {n} correctly classified images"
    return model, x, y


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "DATA.md").exists():
        pytest.skip(f"needs ../shared (real data and weights), not found at {SHARED}")
    return SHARED


def robaudit_cli(*args: str, cwd: Path | None = None, timeout: float = 600,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point (falls back to ``python -m robaudit``); ``env`` adds variables."""
    exe = shutil.which("robaudit", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "robaudit"]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)
