"""The CLEVER estimator: sample, take gradient norms, fit batch maxima, score. Batched and seeded.

Work is cut into *units*: one input and one of its ``nb_batches`` batches of ``batch_size`` sample
points. Each unit's points are drawn from a generator seeded by (seed, dataset index, norm, batch
number) (:func:`~robaudit.clever.sampling.unit_seed`), so results depend on nothing else: not on
the other inputs, the order, the device batch size, or a retry after running out of memory.
Units are grouped into passes of about ``point_batch`` points (spanning inputs when batches are
small); each pass is one forward and one backward per class through the model, on its device.
The gradients of all classes an input needs come from the same points, so an untargeted estimate
costs one forward and ``K - 1`` backward passes per point, and targeted settings reuse them.
As soon as all units of an input are done, its batch maxima are fitted (one reverse Weibull per
class) and scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from robaudit.clever.gradients import margin_gradient_norms
from robaudit.clever.interface import ClassEstimate, CleverNorm, CleverParams, CleverRun, InputEstimate
from robaudit.clever.sampling import sample_ball, unit_seed
from robaudit.clever.weibull import clever_score, fit_reverse_weibull_many
from robaudit.defences.stack import reseed_defences
from robaudit.errors import AttackFailure, ConfigError

GPU_POINT_ELEMENTS = 2**23
"""On a GPU a pass holds about this many input elements, at most 8192 points (8192 MNIST, 2730
CIFAR-10 or 55 ImageNet points); running out of memory halves it."""
CPU_POINT_ELEMENTS = 65536
"""On CPU a pass holds about this many input elements (64 points of 1x32x32, 21 of 3x32x32): measured
on LeNet-5 and ResNet-20, small passes that stay in cache beat large ones (2.2 ms per point and 9
classes at 50 MNIST points, 3.7 ms at 800)."""


def _device_of(model: torch.nn.Module) -> torch.device:
    from robaudit.attacks.base import module_device

    return module_device(model)


def default_point_batch(device: torch.device, numel: int) -> int:
    """Sample points per forward/backward pass when ``CleverParams.point_batch`` is ``None``."""
    if device.type == "cuda":
        return max(16, min(8192, GPU_POINT_ELEMENTS // max(1, numel)))
    return max(16, min(256, CPU_POINT_ELEMENTS // max(1, numel)))


def estimate(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, classes: Sequence[Sequence[int]],
             indices: Sequence[int], norm: CleverNorm, radius: float, params: CleverParams, *, seed: int,
             clip: tuple[float, float], positions: Sequence[int] | None = None,
             device: torch.device | str | None = None,
             progress: Callable[[int], None] | None = None, keep_maxima: bool = False) -> CleverRun:
    """CLEVER of every input ``x[i]`` (label ``labels[i]``) against each class in ``classes[i]``.

    ``indices`` are the inputs' dataset indices (they seed the sample points); ``positions`` their
    positions in the evaluation set (default ``range(N)``). ``progress(k)`` is called after each
    pass with the number of units (input x batch) it finished; there are ``N * nb_batches``.
    ``keep_maxima`` keeps each class's batch maxima in its :class:`ClassEstimate` (for studies).
    """
    n = int(x.shape[0])
    if len(classes) != n or len(indices) != n or labels.shape[0] != n:
        raise ValueError("x, labels, classes and indices must have one entry per input")
    if not 0 < radius < float("inf"):
        raise ConfigError(f"the CLEVER radius must be finite and > 0, got {radius}")
    for i, cl in enumerate(classes):
        if not cl or int(labels[i]) in cl:
            raise ValueError(f"input {i}: classes must be non-empty and exclude the label")
    pos = list(range(n)) if positions is None else [int(p) for p in positions]
    dev = torch.device(device) if device is not None else _device_of(model)
    start = time.perf_counter()
    # a randomised stack (TVM) judges g(x0) on one draw: the same draw for every norm and target
    # setting, so an input is not correct in one row and misclassified in the next
    reseed_defences(model, seed)
    g0 = _margins_at_inputs(model, x, labels, classes, dev)

    width = max(len(cl) for cl in classes) if n else 1
    padded = torch.tensor([list(cl) + [cl[-1]] * (width - len(cl)) for cl in classes], dtype=torch.long) \
        if n else torch.empty(0, 1, dtype=torch.long)
    maxima = np.zeros((n, width, params.nb_batches), dtype=np.float64)
    remaining = [params.nb_batches] * n
    units = [(i, b) for i in range(n) for b in range(params.nb_batches)]
    point_batch = params.point_batch or default_point_batch(dev, int(x[0].numel()) if n else 1)
    per_pass = max(1, point_batch // params.batch_size)
    gen = torch.Generator(device=dev)
    results: dict[int, InputEstimate] = {}
    notes: list[str] = []
    grad_seconds = fit_seconds = 0.0
    k = 0
    while k < len(units):
        chunk = units[k : k + per_pass]
        t0 = time.perf_counter()
        try:
            norms = _pass(model, x, labels, padded, indices, chunk, norm, radius, params, seed, clip, dev, gen,
                          point_batch)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
            from robaudit.engine.cells import _release_memory, is_out_of_memory

            if not is_out_of_memory(exc):
                raise
            if point_batch == 1:
                raise AttackFailure("CLEVER ran out of memory with a single sample point per pass") from exc
            notes.append(f"out of memory with {point_batch} points per pass; retried with {max(1, point_batch // 2)}")
            point_batch = max(1, point_batch // 2)
            per_pass = max(1, point_batch // params.batch_size)
            _release_memory()
            continue
        grad_seconds += time.perf_counter() - t0
        for u, (i, b) in enumerate(chunk):
            maxima[i, :, b] = norms[:, u]
            remaining[i] -= 1
            if remaining[i] == 0:
                t1 = time.perf_counter()
                results[i] = _fit_input(pos[i], int(indices[i]), int(labels[i]), classes[i], g0[i], maxima[i],
                                        radius, params, keep_maxima)
                fit_seconds += time.perf_counter() - t1
        k += len(chunk)
        if progress is not None:
            progress(len(chunk))
    points = n * params.points_per_input
    return CleverRun(norm=norm, radius=float(radius), params=params, inputs=tuple(results[i] for i in range(n)),
                     seconds=time.perf_counter() - start, gradient_seconds=grad_seconds, fit_seconds=fit_seconds,
                     forward_points=points, backward_passes=points * width, notes=tuple(notes))


def _margins_at_inputs(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor,
                       classes: Sequence[Sequence[int]], dev: torch.device) -> list[dict[int, float]]:
    out: list[dict[int, float]] = []
    with torch.no_grad():
        for i0 in range(0, int(x.shape[0]), 256):
            logits = model(x[i0 : i0 + 256].to(dev, torch.float32)).double().cpu()
            for r in range(logits.shape[0]):
                i = i0 + r
                own = float(logits[r, int(labels[i])])
                out.append({int(j): own - float(logits[r, int(j)]) for j in classes[i]})
    return out


def _pass(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, padded: torch.Tensor,
          indices: Sequence[int], chunk: list[tuple[int, int]], norm: CleverNorm, radius: float,
          params: CleverParams, seed: int, clip: tuple[float, float], dev: torch.device,
          gen: torch.Generator, point_batch: int) -> np.ndarray:
    """Batch maxima ``(width, len(chunk))`` of the gradient norms of a group of units, computed in
    passes of at most ``point_batch`` points (a unit larger than that is split over passes)."""
    bs = params.batch_size
    pts = []
    for i, b in chunk:
        gen.manual_seed(unit_seed(seed, int(indices[i]), norm, b))
        pts.append(sample_ball(x[i].to(dev, torch.float32), bs, radius, norm, clip, gen))
    points = torch.cat(pts)
    who = torch.tensor([i for i, _ in chunk], dtype=torch.long).repeat_interleave(bs)
    own = labels[who].to(dev)
    cls = padded[who].to(dev)
    total = points.shape[0]
    step = -(-total // -(-total // point_batch))  # equal slices of at most point_batch points
    norms = torch.cat([margin_gradient_norms(model, points[k : k + step], own[k : k + step], cls[k : k + step],
                                             norm.dual_ord) for k in range(0, total, step)], dim=1)  # (width, total)
    return norms.view(norms.shape[0], len(chunk), bs).amax(dim=2).double().cpu().numpy()


def _fit_input(position: int, index: int, label: int, classes: Sequence[int], g0: dict[int, float],
               maxima: np.ndarray, radius: float, params: CleverParams, keep_maxima: bool) -> InputEstimate:
    ests = []
    fits = fit_reverse_weibull_many([maxima[m] for m in range(len(classes))], params.shapes)
    for m, (cls, fit) in enumerate(zip(classes, fits)):
        ests.append(ClassEstimate(cls=int(cls), g0=g0[int(cls)], fit=fit,
                                  score=clever_score(g0[int(cls)], fit.location, radius),
                                  maxima=tuple(float(v) for v in maxima[m]) if keep_maxima else None))
    return InputEstimate(position=position, index=index, label=label, classes=tuple(ests))
