"""Cells: the pure units of work of an audit, and the registry of engines that run them.

A cell is identified by a stable id (``m0/attack/pgd/untargeted/none``) built from the model
index, the kind, the label, the target setting and the defence stack. Its seed derives from the
profile seed and that id only, so a cell gives the same rows whether it runs first, last, after a
resume, or (later) in another process. An attack cell runs in chunks of ``batch_size`` samples;
each chunk is seeded from the cell seed and its index and yields a self-contained record
(per-sample success and distances), which is what the journal stores.

Engines register per :class:`CellKind`; a kind whose engine is not built maps to ``None`` and
profiles asking for it are refused before anything runs (a test walks every kind).
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

import numpy as np
import torch

from robaudit.config import AttackSpec, Profile
from robaudit.defences.stack import reseed_defences
from robaudit.errors import ConfigError


class CellKind(str, Enum):
    ATTACK = "attack"
    """An attack x target setting x defence stack, on one model."""
    CLEVER = "clever"
    """CLEVER robustness scores of one model (issue 5)."""
    DETECT = "detect"
    """Attack-as-Defense detection evaluation of one model."""


@dataclass(frozen=True)
class Cell:
    kind: CellKind
    model_index: int
    label: str
    """Attack label from the profile, or the kind for CLEVER/detection cells."""
    target: str | None = None
    defences: tuple[str, ...] = ()
    attack: AttackSpec | None = None
    threat: str = "adaptive"
    """``adaptive`` (attack the defended model) or ``transfer`` (craft on the undefended one);
    meaningless, and always ``adaptive``, for the undefended stack."""

    @property
    def defence_key(self) -> str:
        key = "+".join(self.defences) or "none"
        return f"{key}@transfer" if self.threat == "transfer" and self.defences else key

    @property
    def threat_model(self) -> str:
        """What the report says: ``none`` for the undefended stack, else the threat model."""
        return self.threat if self.defences else "none"

    @property
    def id(self) -> str:
        return f"m{self.model_index}/{self.kind.value}/{self.label}/{self.target or '-'}/{self.defence_key}"

    def seed(self, profile_seed: int) -> int:
        """The cell's seed: a hash of the profile seed and the cell id (never of the run order)."""
        digest = hashlib.sha256(f"{profile_seed}|{self.id}".encode()).digest()
        return int.from_bytes(digest[:4], "big") % (2**31 - 1)

    def chunk_seed(self, profile_seed: int, chunk: int) -> int:
        digest = hashlib.sha256(f"{profile_seed}|{self.id}|{chunk}".encode()).digest()
        return int.from_bytes(digest[:4], "big") % (2**31 - 1)


def expand(profile: Profile, n_models: int) -> list[Cell]:
    """The plan: every model x (defence stack x threat model x attack x target), then CLEVER and
    detection cells. The undefended stack runs once (a threat model means nothing without a defence)."""
    cells: list[Cell] = []
    for m in range(n_models):
        for stack in profile.defences:
            threats = profile.threat_models if stack else ("adaptive",)
            for threat in threats:
                for spec in profile.attacks:
                    for target in profile.targets:
                        cells.append(Cell(CellKind.ATTACK, m, spec.label, target, stack, spec, threat))
        if profile.clever is not None:
            for stack in profile.defences:
                cells.append(Cell(CellKind.CLEVER, m, "clever", None, stack))
        if profile.detect is not None:
            cells.append(Cell(CellKind.DETECT, m, "detect"))
    return cells


def is_transfer(cell: Cell) -> bool:
    """Whether ``cell`` judges a defended model with examples crafted on the undefended one."""
    return cell.kind is CellKind.ATTACK and cell.threat == "transfer" and bool(cell.defences)


def execution_order(cells: list[Cell]) -> list[Cell]:
    """The order cells run in: the plan's, except that each model's transfer cells run after its
    other cells, grouped by attack and target (one :class:`TransferPool` then serves every stack
    and only one is held in memory). Results never depend on it (seeds come from cell ids); the
    report keeps the plan's order."""
    first: dict[str, int] = {}
    for i, c in enumerate(cells):
        if is_transfer(c):
            first.setdefault(transfer_pool_id(c), i)

    def key(ic: tuple[int, Cell]) -> tuple[int, int, int, int]:
        i, c = ic
        if is_transfer(c):
            return (c.model_index, 1, first[transfer_pool_id(c)], i)
        return (c.model_index, 0, 0, i)

    return [c for _, c in sorted(enumerate(cells), key=key)]


# --- engine registry -------------------------------------------------------------------------

@dataclass(frozen=True)
class CellContext:
    """What every cell of one model needs: the loaded model, its evaluation set, the profile."""

    model: Any
    """The :class:`~robaudit.models.Classifier`."""
    evalset: Any
    """The :class:`~robaudit.engine.evaluation.EvaluationSet` (same for every cell of the model)."""
    profile: Profile
    device: str | None = None
    craft_model: Any = None
    """Transfer threat model: the undefended model the attacks craft on (``model`` judges them).
    ``None``: attacks run against ``model`` itself."""
    defences: tuple[str, ...] = ()
    """The defence stack ``model`` carries (empty: the undefended model)."""
    transfer_pool: Callable[["Cell"], "TransferPool"] | None = None
    """Transfer threat model: the examples of a cell's attack and target, crafted once on
    ``craft_model`` for every sampled input (see :class:`TransferPool`); ``None``: craft per chunk."""


ChunkRecord = dict[str, Any]
CellRunner = Callable[[CellContext, Cell, dict[int, ChunkRecord], Callable[[ChunkRecord], None]],
                      tuple[dict[str, Any], dict[str, Any] | None]]
"""``runner(ctx, cell, finished_chunks, on_chunk) -> (row, examples)``: runs the chunks not yet in
``finished_chunks``, handing each new record to ``on_chunk`` (the journal) before the next starts."""

ENGINES: dict[CellKind, str | None] = {
    CellKind.ATTACK: "robaudit.engine.cells:run_attack_cell",  # a CellRunner
    CellKind.CLEVER: "robaudit.engine.clever_cell:run_clever_cell",  # CLEVER scores per defence stack
    CellKind.DETECT: "robaudit.engine.detect_cell:run_detect_cell",  # A2D costs vs the profile's attacks
}
"""Which kinds this robaudit can run (``module:function``), ``None`` where the engine is missing."""

DEFENCE_ENGINE: str | None = "robaudit.defences:defend_model"
"""``module:function`` that wraps a model in a defence stack; ``None``: not built."""

_MISSING_HINT = {
    CellKind.CLEVER: "this robaudit has no CLEVER engine (robaudit.engine.clever_cell); remove the clever section "
                     "to run the rest",
    CellKind.DETECT: "this robaudit cannot run detection cells in an audit yet; use `robaudit detect eval`, "
                     "or remove the detect section",
}


def check_runnable(cells: list[Cell], source: str) -> None:
    """Refuse (exit 2) a plan with cells whose engine is missing, saying which and why."""
    problems = []
    for kind in CellKind:
        if ENGINES[kind] is None and any(c.kind is kind for c in cells):
            problems.append(f"profile requests {kind.value} cells but {_MISSING_HINT[kind]}")
    stacks = sorted({c.defences for c in cells if c.defences})
    if stacks and DEFENCE_ENGINE is None:
        shown = ", ".join("[" + ", ".join(s) + "]" for s in stacks[:4]) + (" ..." if len(stacks) > 4 else "")
        problems.append(f"profile requests defence stacks {shown} but this robaudit has no defence engine yet; "
                        "keep only the undefended stack (defences: [[]]) to run the rest")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


# --- the attack cell -------------------------------------------------------------------------


def to_png_b64(img: np.ndarray) -> str:
    """A CHW float image in [0, 1] as a base64 PNG (grayscale for one channel)."""
    from PIL import Image

    arr = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    pil = Image.fromarray(arr[0], mode="L") if arr.shape[0] == 1 else Image.fromarray(arr[:3].transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def example_record(x: torch.Tensor, x_adv: torch.Tensor, clip: tuple[float, float], position: int,
                   index: int, label: int, pred_adv: int, target: int | None, success: bool,
                   clean_wrong: bool = False) -> dict[str, Any]:
    """One kept example; ``clean_wrong``: the random draw that judged it misclassified the clean input,
    so it does not count as a success whatever it is classified as (recorded only when true)."""
    lo, hi = clip
    span = hi - lo
    clean = (x.double().numpy() - lo) / span
    adv = (x_adv.double().numpy() - lo) / span
    delta = adv - clean
    scale = float(np.abs(delta).max())
    shown = 0.5 + 0.5 * delta / scale if scale > 0 else np.full_like(delta, 0.5)
    return {"position": position, "index": index, "label": label, "pred_adv": pred_adv, "target": target,
            "success": success, "delta_linf": scale * span, "clean_png": to_png_b64(clean),
            "adv_png": to_png_b64(adv), "delta_png": to_png_b64(shown),
            **({"clean_misclassified_on_draw": True} if clean_wrong else {})}


def example_records(x: torch.Tensor, x_adv: torch.Tensor, clip: tuple[float, float], start: int, keep: int,
                    indices: Any, y: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor | None,
                    success: torch.Tensor, clean_ok: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """:func:`example_record` of every input of a chunk (``x`` holds evaluation-set positions
    ``start``, ``start + 1``, ...) whose position is below ``keep``: the first ``keep`` examples of a
    cell, wherever its chunks split. ``indices``: dataset index per evaluation-set position."""
    return [example_record(x[pos - start], x_adv[pos - start].cpu(), clip, pos, int(indices[pos]),
                           int(y[pos - start]), int(preds[pos - start]),
                           None if targets is None else int(targets[pos - start]), bool(success[pos - start]),
                           clean_ok is not None and not bool(clean_ok[pos - start]))
            for pos in range(start, min(start + x.shape[0], keep))]


def _plan_for(cell: Cell, profile: Profile, seed: int = 0, device: str | None = None) -> Any:
    """The single-attack :class:`AttackPlan` of an attack cell."""
    from robaudit.attacks.base import Norm, TargetMode
    from robaudit.attacks.registry import AttackName
    from robaudit.engine.attack_run import AttackPlan

    spec = cell.attack
    assert spec is not None and cell.target is not None
    name = AttackName(spec.name)
    return AttackPlan(attacks=(name,), targets=(TargetMode(cell.target),),
                      norm=Norm(spec.norm) if spec.norm else None, eps=spec.eps, backend=spec.backend,
                      params={name: dict(spec.params)}, batch_size=profile.batch_size, seed=seed, device=device)


def _generate(attack: Any, attacked: Any, judge: Any, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None,
              clip: tuple[float, float], batch_size: int, seed: int, device: str | None,
              where: str) -> tuple[Any, torch.Tensor | None, int, list[str]]:
    """Run ``attack`` on ``attacked`` and, if ``judge`` is given, its logits on the examples.

    Halves the batch on out-of-memory and retries the same samples, down to 1. Returns the
    :class:`~robaudit.attacks.base.AttackOutput`, the judge's logits (or ``None``), the batch size
    that worked and notes on the retries."""
    from robaudit.engine.session import seed_everything
    from robaudit.errors import AttackFailure

    eff = batch_size
    notes: list[str] = []
    while True:
        try:
            seed_everything(seed)
            reseed_defences(attacked, seed)
            if judge is not None and judge is not attacked:
                reseed_defences(judge, seed)
            with torch.enable_grad():
                out = attack.generate(attacked, x, y, targets, clip=clip, batch_size=eff, seed=seed, device=device)
            logits = None if judge is None else judge.predict(out.x_adv, batch_size=eff)
            return out, logits, eff, notes
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
            if not is_out_of_memory(exc):
                raise
            if eff == 1:
                raise AttackFailure(f"{where}: out of memory even with a batch of 1 sample: "
                                    f"{_oom_text(exc)}") from exc
            notes.append(f"{where}: out of memory with a batch of {eff}; retried with {max(1, eff // 2)}")
            eff = max(1, eff // 2)
            _release_memory()


@dataclass(frozen=True)
class TransferPool:
    """Transfer-threat examples of one (attack, target setting), crafted once on the undefended model
    for every *sampled* input (correctly classified or not), in chunks of ``batch_size`` seeded from
    the pool's own id.

    Every defence stack's transfer cell judges its own evaluation set (the sampled inputs the
    *defended* model classifies correctly) with these examples, so crafting runs once per attack
    and target instead of once per stack, and a stack's rows do not depend on which other stacks
    ran or in which order. Costs (seconds, passes) are each sample's share of its crafting chunk,
    so a transfer row still reports what crafting its examples cost."""

    position: dict[int, int]
    """Dataset index -> row of the pool."""
    x_adv: torch.Tensor
    targets: torch.Tensor | None
    seconds: torch.Tensor
    """Per-sample share of the crafting seconds (float64); likewise the counts below."""
    forward: torch.Tensor
    backward: torch.Tensor
    nonfinite_logits: torch.Tensor
    nonfinite_grads: torch.Tensor
    nonfinite_examples: torch.Tensor
    notes: tuple[str, ...] = ()

    def rows(self, indices: np.ndarray) -> torch.Tensor:
        try:
            return torch.tensor([self.position[int(i)] for i in indices], dtype=torch.long)
        except KeyError as exc:  # the pool covers every sampled input: a miss is a bug
            raise AssertionError(f"dataset index {exc} is not in the transfer pool") from exc


def transfer_pool_id(cell: Cell) -> str:
    """The id every transfer pool seed derives from: the cell's id without its defence stack."""
    return f"m{cell.model_index}/{cell.kind.value}/{cell.label}/{cell.target or '-'}/transfer-pool"


def craft_transfer_pool(craft_model: Any, data: Any, cell: Cell, profile: Profile,
                        device: str | None) -> TransferPool:
    """Craft ``cell``'s attack on ``craft_model`` for every input :func:`~robaudit.data.select` samples."""
    from robaudit.attacks.base import TargetMode
    from robaudit.attacks.registry import AttackName
    from robaudit.attacks.targets import compute_targets
    from robaudit.data import select
    from robaudit.engine.attack_run import _Unsupported, make_attack

    spec = cell.attack
    assert spec is not None and cell.target is not None
    idx = select(data, profile.samples, profile.seed)
    x_all = torch.from_numpy(np.ascontiguousarray(data.x[idx]))
    y_all = torch.from_numpy(np.ascontiguousarray(data.y[idx])).long()
    bs = profile.batch_size
    targets_all = compute_targets(TargetMode(cell.target), craft_model.predict(x_all, batch_size=bs), y_all)
    pool_id = transfer_pool_id(cell)
    parts: list[torch.Tensor] = []
    costs = {k: torch.zeros(len(idx), dtype=torch.float64) for k in
             ("seconds", "forward", "backward", "nonfinite_logits", "nonfinite_grads", "nonfinite_examples")}
    notes: list[str] = []
    for chunk in range(n_chunks(len(idx), bs)):
        lo, hi = chunk * bs, min((chunk + 1) * bs, len(idx))
        digest = hashlib.sha256(f"{profile.seed}|{pool_id}|{chunk}".encode()).digest()
        seed = int.from_bytes(digest[:4], "big") % (2**31 - 1)
        attack = make_attack(AttackName(spec.name), _plan_for(cell, profile, seed, device))
        assert not isinstance(attack, _Unsupported)
        t = None if targets_all is None else targets_all[lo:hi]
        out, _, _, chunk_notes = _generate(attack, craft_model, None, x_all[lo:hi], y_all[lo:hi], t, craft_model.clip,
                                           bs, seed, device, f"{pool_id} chunk {chunk}")
        notes.extend(chunk_notes)
        parts.append(out.x_adv.detach().cpu())
        m = hi - lo
        for key, total in (("seconds", out.seconds), ("forward", out.forward_passes),
                           ("backward", out.backward_passes), ("nonfinite_logits", out.nonfinite_logits),
                           ("nonfinite_grads", out.nonfinite_grads), ("nonfinite_examples", out.nonfinite_examples)):
            costs[key][lo:hi] = float(total) / m
    return TransferPool(position={int(i): r for r, i in enumerate(idx)}, x_adv=torch.cat(parts),
                        targets=targets_all, notes=tuple(notes), **costs)


def run_attack_chunk(model: Any, evalset: Any, cell: Cell, profile: Profile, chunk: int,
                     device: str | None, craft_model: Any = None,
                     pool: TransferPool | None = None) -> dict[str, Any]:
    """Attack samples ``[chunk * batch_size, (chunk + 1) * batch_size)`` of the evaluation set.

    Returns a JSON-ready record: per-sample success and distances, costs, and the examples kept
    for the report. Depends only on its arguments (and the cell's derived seed). With
    ``craft_model`` (transfer threat model) the examples are crafted on it, with targets from its
    logits, and judged by ``model``; with a ``pool`` they are taken from the examples already
    crafted on the undefended model (the same thing, crafted once for every stack).
    """
    import time

    from robaudit.attacks.base import Criterion, TargetMode
    from robaudit.attacks.registry import AttackName
    from robaudit.attacks.targets import compute_targets
    from robaudit.attacks.base import nonfinite_rows
    from robaudit.engine.attack_run import _Unsupported, make_attack, outcome_counts, verify_bounds
    from robaudit.errors import AttackFailure
    from robaudit.metrics import perturbation_norms

    spec = cell.attack
    assert spec is not None and cell.target is not None
    name = AttackName(spec.name)
    bs = profile.batch_size
    lo, hi = chunk * bs, min((chunk + 1) * bs, evalset.n)
    x, y = evalset.x[lo:hi], evalset.y[lo:hi]
    seed = cell.chunk_seed(profile.seed, chunk)
    plan = _plan_for(cell, profile, seed, device)
    attack = make_attack(name, plan)
    assert not isinstance(attack, _Unsupported)
    notes: list[str] = []
    eff = bs
    # a randomised stack judges each example and its clean input on the same draws, once
    randomised = bool(getattr(model, "randomized", False))
    clean_ok: torch.Tensor | None = None
    if pool is not None:
        rows = pool.rows(evalset.indices[lo:hi])
        notes = list(pool.notes) if chunk == 0 else []
        x_adv = pool.x_adv[rows]
        targets = None if pool.targets is None else pool.targets[rows]
        reseed_defences(model, seed)
        t0 = time.perf_counter()
        if randomised:
            logits, clean_ok = judge_on_shared_draws(model, x, x_adv, y, seed, bs)
        else:
            logits = model.predict(x_adv, batch_size=bs)
        share = {k: float(getattr(pool, k)[rows].sum()) for k in
                 ("seconds", "forward", "backward", "nonfinite_logits", "nonfinite_grads", "nonfinite_examples")}
        seconds = share["seconds"] + time.perf_counter() - t0
        fwd, bwd = int(round(share["forward"])), int(round(share["backward"]))
        nonfinite = {"nonfinite_logits": int(round(share["nonfinite_logits"])) + int(nonfinite_rows(logits)),
                     "nonfinite_grads": int(round(share["nonfinite_grads"])),
                     "nonfinite_examples": int(round(share["nonfinite_examples"]))}
    else:
        attacked = model if craft_model is None else craft_model
        craft_logits = evalset.clean_logits[lo:hi] if craft_model is None else craft_model.predict(x, batch_size=bs)
        targets = compute_targets(TargetMode(cell.target), craft_logits, y)
        out, judged, eff, notes = _generate(attack, attacked, None if randomised else model, x, y, targets,
                                            model.clip, bs, seed, device, f"{cell.id}: chunk {chunk}")
        x_adv = out.x_adv
        if randomised:
            logits, clean_ok = judge_on_shared_draws(model, x, x_adv, y, seed, eff)
        else:
            assert judged is not None
            logits = judged
        seconds, fwd, bwd = out.seconds, out.forward_passes, out.backward_passes
        nonfinite = outcome_counts(out, logits)
    if x_adv.shape != x.shape:
        raise AttackFailure(f"attack {name.value} returned shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
    dist = perturbation_norms(x, x_adv)
    verify_bounds(attack, x, x_adv, dist, model.clip)
    success = Criterion(y, targets).is_adversarial(logits)
    clean_wrong = 0
    if clean_ok is not None:
        clean_wrong = int((~clean_ok).sum())
        success &= clean_ok
    examples = example_records(x, x_adv, model.clip, lo, profile.examples, evalset.indices, y, logits.argmax(dim=1),
                               targets, success, clean_ok)
    return {"chunk": chunk, "n": hi - lo, "success": [bool(s) for s in success.tolist()],
            "l2": dist.l2.tolist(), "linf": dist.linf.tolist(), "l0": dist.l0.tolist(),
            "seconds": seconds, "forward": fwd, "backward": bwd, **nonfinite,
            "examples": examples, **({"notes": notes, "batch_size": eff} if notes else {}),
            **({"clean_wrong_on_judging_draw": clean_wrong} if clean_wrong else {})}


JUDGE_STREAM = 7_919
"""Offset of the judging draws' seed from the chunk's seed (a stream of its own, not the attack's)."""


def judge_on_shared_draws(model: Any, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, seed: int,
                          batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``x_adv`` under a randomised stack, and whether ``x`` is classified correctly under
    the very same draws (same masks, image by image).

    The evaluation set was chosen on other draws, so under the judging draw a clean input may
    already be misclassified; counting its example as a success would credit the attack with the
    defence's own noise (an unperturbed input "succeeding" at L2 0). An example counts only where
    the clean input survives the draw that judges it."""
    judge_seed = (seed + JUDGE_STREAM) % (2**31 - 1)
    reseed_defences(model, judge_seed)
    logits = model.predict(x_adv, batch_size=batch_size)
    reseed_defences(model, judge_seed)  # replay the same masks on the clean inputs
    clean_ok = model.predict(x, batch_size=batch_size).argmax(dim=1) == y.to(logits.device)
    return logits, clean_ok.to(logits.device)


_OOM_MARKERS = ("out of memory", "DefaultCPUAllocator: can't allocate", "CUDNN_STATUS_ALLOC_FAILED")


def is_out_of_memory(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an error it wraps, e.g. an :class:`AttackFailure` around it) is an
    out-of-memory error: CUDA's, a ``MemoryError``, or a ``RuntimeError`` saying so (CPU allocator)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
            return True
        if isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MARKERS):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _oom_text(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _release_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def n_chunks(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def cell_chunks(cell: Cell, profile: Profile, evalset_n: int) -> int:
    """How many journaled chunks ``cell`` runs in (for progress bars)."""
    if cell.kind is CellKind.DETECT:
        from robaudit.engine.detect_cell import detect_n

        return n_chunks(detect_n(evalset_n, profile), profile.batch_size)
    return n_chunks(evalset_n, profile.batch_size)


def attack_cell_row(cell: Cell, profile: Profile, evalset_n: int, model: Any,
                    chunks: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Combine the chunk records of a cell into its result row and its examples entry."""
    from robaudit.engine.attack_run import COUNT_FIELDS
    from robaudit.metrics import summarize

    row = base_row(cell, profile)
    success = torch.tensor([s for c in chunks for s in c["success"]], dtype=torch.bool)
    l2 = torch.tensor([v for c in chunks for v in c["l2"]], dtype=torch.float64)
    linf = torch.tensor([v for c in chunks for v in c["linf"]], dtype=torch.float64)
    l0 = torch.tensor([v for c in chunks for v in c["l0"]], dtype=torch.float64)
    n = int(success.numel())
    if n != evalset_n:
        raise AssertionError(f"cell {cell.id}: {n} samples in chunks, expected {evalset_n}")
    seconds = float(sum(c["seconds"] for c in chunks))
    fwd = sum(c["forward"] for c in chunks)
    bwd = sum(c["backward"] for c in chunks)
    n_success = int(success.sum())
    l2_s, linf_s, l2_a, linf_a = summarize(l2[success]), summarize(linf[success]), summarize(l2), summarize(linf)
    row.update({
        "status": "ok", "reason": None, "n": n, "n_success": n_success, "success_rate": n_success / n,
        "l2_mean": l2_s["mean"], "l2_median": l2_s["median"],
        "linf_mean": linf_s["mean"], "linf_median": linf_s["median"], "linf_max": linf_s["max"],
        "l2_mean_all": l2_a["mean"], "l2_median_all": l2_a["median"],
        "linf_mean_all": linf_a["mean"], "linf_median_all": linf_a["median"],
        "l0_mean": summarize(l0[success])["mean"],
        "seconds": seconds, "seconds_per_image": seconds / n,
        "forward_passes_per_image": fwd / n, "backward_passes_per_image": bwd / n,
        **{k: sum(int(c.get(k, 0)) for c in chunks) for k in COUNT_FIELDS},
    })
    notes = [n for c in chunks for n in c.get("notes", [])]
    clean_wrong = sum(int(c.get("clean_wrong_on_judging_draw", 0)) for c in chunks)
    if clean_wrong:
        notes.append(f"{cell.id}: {clean_wrong} of {n} inputs were misclassified clean on the random draw that "
                     "judged their example; those examples are not counted as successes")
    if notes:
        row["notes"] = notes
    samples = [e for c in chunks for e in c.get("examples", [])]
    examples = None
    if samples:
        examples = {"cell_id": cell.id, "label": cell.label, "attack": row["attack"], "target": cell.target,
                    "defences": list(cell.defences), "threat_model": cell.threat_model, "samples": samples}
    return row, examples


def base_row(cell: Cell, profile: Profile) -> dict[str, Any]:
    """The descriptive part of a row (what ran, with which budget and parameters)."""
    import dataclasses

    from robaudit.attacks.base import TargetMode
    from robaudit.attacks.registry import AttackName
    from robaudit.engine.attack_run import _base_row, make_attack

    spec = cell.attack
    assert spec is not None and cell.target is not None
    name = AttackName(spec.name)
    plan = _plan_for(cell, profile)
    attack = make_attack(name, plan)
    row = _base_row(name, TargetMode(cell.target), attack, plan)
    row["defences"] = list(cell.defences)
    row["threat_model"] = cell.threat_model
    row["cell_id"] = cell.id
    row["label"] = cell.label
    row["seed"] = cell.seed(profile.seed)
    if not hasattr(attack, "params"):
        return row
    row["params"] = dataclasses.asdict(attack.params)
    return row


def precheck_attack_cell(cell: Cell, profile: Profile, white_box: bool) -> dict[str, Any] | None:
    """A finished row for a cell that cannot run (unsupported setting, black-box model), else ``None``."""
    from robaudit.attacks.base import TargetMode
    from robaudit.attacks.registry import AttackName
    from robaudit.engine.attack_run import _skipped, _Unsupported, make_attack

    spec = cell.attack
    assert spec is not None and cell.target is not None
    name = AttackName(spec.name)
    plan = _plan_for(cell, profile)
    attack = make_attack(name, plan)
    row = base_row(cell, profile)
    if isinstance(attack, _Unsupported):
        supported = ", ".join(n.value for n in attack.cls.norms)
        return _skipped(row, "unsupported", f"norm {attack.norm.value} not supported (supported: {supported})")
    if not attack.supports(TargetMode(cell.target)):
        return _skipped(row, "unsupported", f"{name.value} does not support the {cell.target} setting")
    if attack.needs_gradients and not white_box:
        return _skipped(row, "skipped", "black-box model: only query-based attacks run")
    return None


def run_attack_cell(ctx: CellContext, cell: Cell, finished: dict[int, ChunkRecord],
                    on_chunk: Callable[[ChunkRecord], None]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The :data:`CellRunner` of attack cells."""
    pre = precheck_attack_cell(cell, ctx.profile, ctx.model.white_box)
    if pre is not None:
        return pre, None
    records = []
    pool = None
    for k in range(n_chunks(ctx.evalset.n, ctx.profile.batch_size)):
        rec = finished.get(k)
        if rec is None:
            if pool is None and ctx.transfer_pool is not None:
                pool = ctx.transfer_pool(cell)
            rec = run_attack_chunk(ctx.model, ctx.evalset, cell, ctx.profile, k, ctx.device, ctx.craft_model, pool)
            on_chunk(rec)
        records.append(rec)
    return attack_cell_row(cell, ctx.profile, ctx.evalset.n, ctx.model, records)


def get_runner(kind: CellKind) -> CellRunner:
    import importlib

    entry = ENGINES[kind]
    if entry is None:
        raise ConfigError(f"this robaudit cannot run {kind.value} cells: {_MISSING_HINT.get(kind, 'no engine')}")
    module, func = entry.split(":")
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]
