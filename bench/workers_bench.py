"""Wall time of one audit run in 1 process versus ``--workers N``, and whether the reports agree.

    python bench/workers_bench.py [--model demo:mnist] [--data demo:mnist] [--profile PATH] [--workers 2]

Runs the same ``robaudit audit`` three ways into fresh folders: one process with every core's
thread (torch's default), one process with one thread, and ``--workers N`` (cores/N threads each),
then prints the wall seconds, the speed ratios and whether the reports match (timings aside;
workers run one thread each, so they are compared with the one-thread run).
Run it on an otherwise idle machine: it measures the machine as much as robaudit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_PROFILE = """\
name: workers-bench
seed: 0
samples: 200
batch_size: 50
examples: 0
attacks:
  fgsm: {eps: 0.1}
  pgd: {eps: 0.1, steps: 20}
  cw-l2: {binary_search_steps: 4, max_iter: 50}
  deepfool: {}
targets: [untargeted]
defences: [[], [ss], [jpeg], [ss, jpeg]]
threat_models: both
"""


def run(args: list[str], threads: int | None) -> float:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "robaudit", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"robaudit failed ({proc.returncode}): {proc.stderr.strip()}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo:mnist")
    ap.add_argument("--data", default="demo:mnist")
    ap.add_argument("--profile", default=None, help="profile file (default: a small defence grid, printed)")
    ap.add_argument("--workers", type=int, default=2)
    opts = ap.parse_args()
    from robaudit.engine.audit import strip_timing

    with tempfile.TemporaryDirectory() as tmp:
        profile = opts.profile
        if profile is None:
            profile = str(Path(tmp) / "profile.yaml")
            Path(profile).write_text(DEFAULT_PROFILE)
            print(DEFAULT_PROFILE)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"model {opts.model}, data {opts.data}, {cores} cores, load average {os.getloadavg()[0]:.2f}")
        ways = [("1 process, default threads", [], None), ("1 process, 1 thread", [], 1),
                (f"--workers {opts.workers}", ["--workers", str(opts.workers)], None)]
        times, reports = [], []
        for label, extra, threads in ways:
            out = Path(tmp) / f"out{len(times)}"
            secs = run(["audit", opts.model, "--data", opts.data, "--profile", profile, "--out", str(out),
                        "--format", "none", "-q", *extra], threads)
            times.append(secs)
            reports.append(strip_timing(json.loads((out / "report.json").read_text())))
            print(f"{label:32s} {secs:8.1f} s")
        print(f"speed-up of --workers {opts.workers}: {times[0] / times[2]:.2f}x over default threads, "
              f"{times[1] / times[2]:.2f}x over 1 thread")
        def compare(a: dict, b: dict) -> str:
            if a["results"] == b["results"]:
                return "identical"
            pairs = list(zip(a["results"], b["results"]))
            moved = sum(x.get("n_success") != y.get("n_success") for x, y in pairs)
            worst = max(abs((x.get("success_rate") or 0) - (y.get("success_rate") or 0)) for x, y in pairs)
            return f"{moved} of {len(pairs)} rows differ in successes (largest gap {worst * 100:.1f} points)"

        # Each worker runs one thread, so its report should match the one-thread run exactly; reports
        # from different thread counts may differ where float sums round differently.
        print(f"--workers {opts.workers} vs 1 process, 1 thread: {compare(reports[2], reports[1])}")
        print(f"1 thread vs default threads: {compare(reports[1], reports[0])}")

if __name__ == "__main__":
    main()
