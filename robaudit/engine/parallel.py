"""Running an audit's cells in worker processes (``audit --workers N``).

Cells are pure: a cell's rows depend only on the profile, its id and its inputs (every chunk is
seeded from the cell id, never from the run order), so cells may run in any process. Each worker
loads the model and data itself, builds the same evaluation sets, and runs whole cells; transfer
cells of one attack and target go to one worker together, so their shared examples are crafted
once. Workers send every finished chunk to the parent as it ends, and only the parent writes the
journal: a run stopped at any moment keeps every chunk any worker finished, and ``--resume``
continues it, with any number of workers. Reports equal those of a serial run.

On a CPU, ``N`` workers with ``cores / N`` threads each beat one process with every thread when
the model is small (batches of small convolutions parallelise poorly inside one process). On one
GPU several workers share the device; one is usually enough there.

Workers start with ``spawn`` (a forked child of a process that has started torch's thread pools
can hang), ignore Ctrl-C (the parent stops them) and exit when the parent's task queue runs dry.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
from typing import Any, Callable

from robaudit.config import Profile
from robaudit.engine.cells import Cell, cell_chunks, get_runner, is_transfer, transfer_pool_id
from robaudit.engine.session import InputOptions
from robaudit.errors import AttackFailure

Task = list[tuple[Cell, dict[int, dict[str, Any]]]]
"""Cells a worker runs in order, each with the chunks the journal already holds."""

_POLL_SECONDS = 1.0


def threads_per_worker(workers: int, limit: int | None = None) -> int:
    """Torch threads for each of ``workers`` processes: the cores shared out, at least one, and no
    more than ``limit`` (this process's torch threads, which ``OMP_NUM_THREADS`` may have set)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // workers)
    return share if limit is None else max(1, min(share, limit))


def plan_tasks(cells: list[Cell], chunks: dict[str, dict[int, dict[str, Any]]]) -> list[Task]:
    """One task per cell, except that transfer cells sharing examples (same model, attack and
    target) form one task, in the order given."""
    tasks: list[Task] = []
    pools: dict[str, Task] = {}
    for cell in cells:
        item = (cell, dict(chunks.get(cell.id, {})))
        if is_transfer(cell):
            key = transfer_pool_id(cell)
            if key not in pools:
                pools[key] = []
                tasks.append(pools[key])
            pools[key].append(item)
        else:
            tasks.append([item])
    return tasks


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (robaudit errors do), else an :class:`AttackFailure` saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - anything unpicklable is described instead
        return AttackFailure(f"{type(exc).__name__}: {exc}")


def _die_with(parent: int) -> Callable[[], None]:
    """Make this process end when ``parent`` does (even by SIGKILL, which runs no clean-up there):
    at once on Linux (``PR_SET_PDEATHSIG``), and elsewhere at the returned check, run between chunks."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def check() -> None:
        if os.getppid() != parent:  # re-parented: nobody journals what this process would compute
            os._exit(0)

    check()  # the parent may have died before prctl took effect
    return check


def _worker_main(inputs: InputOptions, profile: Profile, threads: int, tasks: Any, results: Any,
                 parent: int) -> None:
    """A worker: load the inputs, then run tasks until the ``None`` sentinel."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C stops
    parent_alive = _die_with(parent)
    import torch

    torch.set_num_threads(threads)
    from robaudit.engine.audit import StackContexts
    from robaudit.engine.cells import CellContext
    from robaudit.engine.evaluation import build_evaluation_set
    from robaudit.engine.session import load_inputs, seed_everything

    try:
        loaded = load_inputs(inputs)
        model = loaded.model
        seed_everything(profile.seed)
        evalset = build_evaluation_set(model, loaded.data, profile.samples, profile.seed, profile.batch_size)
        stacks = StackContexts(CellContext(model=model, evalset=evalset, profile=profile, device=str(model.device)),
                               loaded.data)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(("error", None, _portable(exc)))
        return
    while True:
        task = tasks.get()
        if task is None:
            return
        for cell, finished in task:
            parent_alive()
            try:
                ctx = stacks.get(cell.defences, cell.threat)
                results.put(("start", cell.id, (cell_chunks(cell, profile, ctx.evalset.n), len(finished))))

                def on_chunk(rec: dict[str, Any], _cid: str = cell.id) -> None:
                    results.put(("chunk", _cid, rec))
                    parent_alive()

                row, ex = get_runner(cell.kind)(ctx, cell, finished, on_chunk)
                results.put(("cell", cell.id, (row, ex)))
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
                results.put(("error", cell.id, _portable(exc)))
                return


def run_cells_parallel(inputs: InputOptions, profile: Profile, cells: list[Cell],
                       chunks: dict[str, dict[int, dict[str, Any]]], workers: int, journal: Any, obs: Any,
                       on_cell: Callable[[Cell, dict[str, Any], dict[str, Any] | None], None]) -> None:
    """Run ``cells`` (not yet finished; ``chunks``: what the journal holds of them) in ``workers``
    processes. Journals each chunk and cell as it arrives and hands each finished cell to ``on_cell``.
    The first error in any worker stops them all and is raised here."""
    import multiprocessing as mp

    if not cells:
        return
    tasks = plan_tasks(cells, chunks)
    n = min(workers, len(tasks))
    ctx = mp.get_context("spawn")
    task_q, result_q = ctx.Queue(), ctx.Queue()
    by_id = {c.id: c for c in cells}
    import torch

    threads = threads_per_worker(n, torch.get_num_threads())
    procs = [ctx.Process(target=_worker_main, args=(inputs, profile, threads, task_q, result_q, os.getpid()), daemon=True)
             for _ in range(n)]
    for task in tasks:
        task_q.put(task)
    for _ in procs:
        task_q.put(None)
    for p in procs:
        p.start()
    pending = set(by_id)

    def record(kind: str, cid: str, payload: Any) -> None:
        if kind == "chunk":
            journal.chunk_finished(cid, payload)
            obs.chunk_finished(cid)
        elif kind == "cell":
            row, ex = payload
            journal.cell_finished(cid, row, ex)
            pending.discard(cid)
            on_cell(by_id[cid], row, ex)

    ok = False
    try:
        while pending:
            try:
                kind, cid, payload = result_q.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or not any(p.is_alive() for p in procs):
                    how = f"exit code {dead[0]}" + (" (killed: out of memory?)" if dead[0] < 0 else "") if dead \
                        else "ended early"
                    raise AttackFailure(f"a worker process {how} with {len(pending)} cell(s) unfinished; "
                                        "finished chunks are journaled: rerun with --resume")
                continue
            if kind == "start":
                total, done = payload
                obs.cell_started(cid, total, done)
            elif kind == "error":
                raise payload
            else:
                record(kind, cid, payload)
        ok = True
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        while not ok:  # stopped early: journal what other workers had already finished
            try:
                kind, cid, payload = result_q.get(timeout=0.2)
                if kind in ("chunk", "cell"):
                    record(kind, cid, payload)
            except Exception:  # noqa: BLE001 - empty, or a message torn by terminate(): nothing more to keep
                break
        for p in procs:
            p.join(timeout=10)
        task_q.close()
        result_q.close()


__all__ = ["plan_tasks", "run_cells_parallel", "threads_per_worker"]
