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
