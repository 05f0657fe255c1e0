"""Attack costs: for each input, how many iterations an attack needs before the model's own
prediction first changes (A2D, Zhao et al., ISSTA 2021, https://arxiv.org/abs/2103.07633).

All cost attacks are batched with per-sample early exit: every iteration sends only the inputs
whose prediction has not flipped yet through the model, so an adversarial input (which flips in a
few steps) stops costing passes almost at once, and a batch's work is the sum of its inputs'
costs rather than ``batch x max_iter``. An input that never flips costs ``max_iter``.

* ``bim-linf`` / ``bim-l2``: untargeted BIM (cross-entropy of the clean prediction) from the input,
  no random start, with small steps so costs resolve finely (the A2D values are the defaults).
* ``jsma``: JSMA targeted at the second most likely clean class, one feature per iteration.
* ``boundary``: a decision-based boundary attack (top-1 decisions only): from a noise start
  binary-searched to the boundary, orthogonal + towards-the-input steps; the cost is the number
  of iterations until the distance to the input falls below ``threshold``.

BIM and JSMA are deterministic (no random start). The boundary attack is random: every input
draws its noise from its own generator, seeded from the run seed and a key of the input (its
dataset index when the caller knows it, else a hash of its values; :func:`input_seeds`), and
draws only while it is itself still searching. So an input's cost depends on the seed and on that
input alone: not on the batch size, the order, or which other inputs share its batch.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from robaudit.attacks._losses import LossName, loss_and_input_grad
from robaudit.attacks._steps import ascent_step, l2_norm, l2_normalize, project
from robaudit.attacks.base import CountingModel, Criterion, Norm, PassCounter, module_device
from robaudit.data.sampling import stream_seed
from robaudit.detect.interface import CostName, CostParams
from robaudit.errors import ConfigError

# A2D's settings (MNIST / CIFAR-10), scaled to the clip range at use.
_BIM_DEFAULTS = {
    "small": {CostName.BIM_LINF: (0.3, 0.0006), CostName.BIM_L2: (0.1, 0.0002)},
    "large": {CostName.BIM_LINF: (0.03, 0.00006), CostName.BIM_L2: (0.01, 0.00002)},
}


def default_cost_params(name: CostName, input_shape: Sequence[int], clip: tuple[float, float] = (0.0, 1.0),
                        max_iter: int | None = None) -> CostParams:
    """The A2D settings for ``name``: MNIST-like values for one-channel inputs, CIFAR-10 values otherwise."""
    span = float(clip[1] - clip[0])
    family = "small" if int(input_shape[0]) == 1 else "large"
    if name in (CostName.BIM_LINF, CostName.BIM_L2):
        eps, step = _BIM_DEFAULTS[family][name]
        return CostParams(name, max_iter=max_iter or 500, eps=eps * span, step=step * span)
    if name is CostName.JSMA:
        return CostParams(name, max_iter=max_iter or 100, step=1.0)
    if name is CostName.BOUNDARY:
        d = int(np.prod(input_shape))
        # 0.0715 * sqrt(d): L2 2.0 on MNIST, where it was calibrated (benign inputs rarely get this
        # close in 200 iterations, CW-L2 examples usually do); not calibrated on larger inputs
        return CostParams(name, max_iter=max_iter or 200, step=0.1, threshold=0.0715 * span * float(np.sqrt(d)))
    raise ConfigError(f"unknown cost attack {name!r}")  # pragma: no cover - the enum is exhaustive


@dataclass(frozen=True)
class CostResult:
    """Costs of every input for every cost attack, plus their price."""

    costs: dict[str, np.ndarray]
    """Cost attack name -> int64 cost per input (iterations; ``max_iter`` when it never flipped)."""
    predictions: np.ndarray
    """The model's clean prediction per input (the class each cost attack moves away from)."""
    seconds: dict[str, float]
    """Wall-clock seconds per cost attack, over all inputs."""
    forward_passes: dict[str, int]
    backward_passes: dict[str, int]

    def features(self) -> dict[str, np.ndarray]:
        return {k: v.astype(np.float64) for k, v in self.costs.items()}


def input_seeds(seed: int, x: torch.Tensor, indices: Sequence[int] | np.ndarray | None = None,
                stream: str = "boundary") -> list[int]:
    """One seed per input of ``x`` for the random stream ``stream``: a hash of the run ``seed`` and
    the input's key, its dataset index (``indices``) when known, else the sha256 of its float32
    values. The same input gets the same stream whatever else is scored with it (as CLEVER's
    :func:`~robaudit.clever.sampling.unit_seed`)."""
    if indices is not None:
        idx = np.asarray(indices, dtype=np.int64).ravel()
        if idx.size != x.shape[0]:
            raise ConfigError(f"{idx.size} input indices for {x.shape[0]} inputs")
        keys = [f"index:{int(i)}" for i in idx]
    else:
        flat = x.detach().to("cpu", torch.float32).contiguous().flatten(1).numpy()
        keys = ["sha256:" + hashlib.sha256(row.tobytes()).hexdigest() for row in flat]
    return [stream_seed("a2d", stream, seed, k) for k in keys]


def measure_costs(model: torch.nn.Module, x: torch.Tensor, params: Sequence[CostParams], *,
                  clip: tuple[float, float] = (0.0, 1.0), batch_size: int = 256, seed: int = 0,
                  device: torch.device | str | None = None,
                  indices: Sequence[int] | np.ndarray | None = None) -> CostResult:
    """Run every cost attack in ``params`` on ``x`` (any device) in batches; see the module doc.

    ``indices``: the dataset index of each input, the key of its random stream (boundary attack);
    ``None`` keys each input by a hash of its values. Either way an input's cost does not depend on
    ``batch_size``, the order of ``x`` or the other inputs in it."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else module_device(model)
    preds = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            preds.append(model(x[i:i + batch_size].to(dev, torch.float32)).argmax(1).cpu())
    pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    costs: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    fwd: dict[str, int] = {}
    bwd: dict[str, int] = {}
    seeds: list[int] | None = None
    for p in params:
        if p.name is CostName.BOUNDARY and seeds is None:
            seeds = input_seeds(seed, x, indices)
        counter = PassCounter()
        counted = CountingModel(model, counter)
        out = []
        start = time.perf_counter()
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].to(dev, torch.float32)
            yb = pred[i:i + batch_size].to(dev)
            gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + batch_size]] if seeds is not None else None
            out.append(cost_batch(counted, xb, yb, p, clip, gens).cpu())
        seconds[p.name.value] = time.perf_counter() - start
        costs[p.name.value] = (torch.cat(out) if out else torch.empty(0, dtype=torch.long)).numpy().astype(np.int64)
        fwd[p.name.value], bwd[p.name.value] = counter.forward, counter.backward
    return CostResult(costs, pred.numpy(), seconds, fwd, bwd)


def cost_batch(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, p: CostParams,
               clip: tuple[float, float], generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Costs of one batch already on the model's device; ``labels`` are the model's own predictions.
    ``generators``: one CPU generator per input (the boundary attack's random streams)."""
    if x.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=x.device)
    if p.name is CostName.BIM_LINF:
        return bim_cost(model, x, labels, p, Norm.LINF, clip)
    if p.name is CostName.BIM_L2:
        return bim_cost(model, x, labels, p, Norm.L2, clip)
    if p.name is CostName.JSMA:
        return jsma_cost(model, x, labels, p, clip)
    if p.name is CostName.BOUNDARY:
        if generators is None or len(generators) != x.shape[0]:
            raise ConfigError("the boundary cost needs one generator per input")
        return boundary_cost(model, x, labels, p, clip, generators)
    raise ConfigError(f"unknown cost attack {p.name!r}")  # pragma: no cover


def _row_noise(generators: Sequence[torch.Generator], rows: torch.Tensor, shape: Sequence[int], normal: bool,
               like: torch.Tensor) -> torch.Tensor:
    """One draw of ``shape`` per input in ``rows``, each from that input's own (CPU) generator, so a
    row's noise never depends on which other rows are drawing; stacked and moved to ``like``'s device."""
    draw = torch.randn if normal else torch.rand
    noise = torch.stack([draw(tuple(shape), generator=generators[r], dtype=torch.float32) for r in rows.tolist()])
    return noise.to(like.device, like.dtype)


def bim_cost(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, p: CostParams, norm: Norm,
             clip: tuple[float, float]) -> torch.Tensor:
    """Iterations of untargeted BIM until the prediction leaves ``labels`` (one fwd + bwd per live input)."""
    cost = torch.full((x.shape[0],), p.max_iter, dtype=torch.long, device=x.device)
    x_adv = x.clone()
    active = torch.arange(x.shape[0], device=x.device)
    for t in range(p.max_iter + 1):
        crit = Criterion(labels[active])
        xa = x_adv[active]
        if t == p.max_iter:  # the last check needs no gradient
            with torch.no_grad():
                flipped = crit.is_adversarial(model(xa))
            cost[active[flipped]] = t
            break
        logits, _, grad = loss_and_input_grad(model, xa, crit, LossName.CE)
        flipped = crit.is_adversarial(logits)
        if bool(flipped.any()):
            cost[active[flipped]] = t
            keep = ~flipped
            active, xa, grad = active[keep], xa[keep], grad[keep]
            if active.numel() == 0:
                break
        x_adv[active] = project(x[active], ascent_step(xa, grad, p.step, norm), p.eps, norm, clip)
    return cost


def jsma_cost(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, p: CostParams,
              clip: tuple[float, float]) -> torch.Tensor:
    """Iterations of single-feature JSMA, targeted at the second most likely clean class, until the
    prediction changes (to any class). One forward and two backward passes per live input and step."""
    n = x.shape[0]
    cost = torch.full((n,), p.max_iter, dtype=torch.long, device=x.device)
    lo, hi = clip
    delta = p.step * (hi - lo)
    with torch.no_grad():
        clean = model(x)
    target = clean.scatter(1, labels.view(-1, 1), float("-inf")).argmax(1)
    x_adv = x.clone()
    # search domain: features that can still move in the step's direction
    domain = (x_adv < hi) if delta > 0 else (x_adv > lo)
    active = torch.arange(n, device=x.device)
    for t in range(p.max_iter + 1):
        xa = x_adv[active].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xa)
            flipped = (logits.argmax(1) != labels[active]).detach()
            if t == p.max_iter:
                cost[active[flipped]] = t
                break
            z_t = logits.gather(1, target[active].view(-1, 1)).sum()
            (g_t,) = torch.autograd.grad(z_t, xa, retain_graph=True)
            (g_all,) = torch.autograd.grad(logits.sum(), xa)
        if bool(flipped.any()):
            cost[active[flipped]] = t
            keep = ~flipped
            active, g_t, g_all = active[keep], g_t[keep], g_all[keep]
            if active.numel() == 0:
                break
        alpha = g_t.flatten(1)
        beta = (g_all - g_t).flatten(1)
        if delta < 0:
            alpha, beta = -alpha, -beta
        dom = domain[active].flatten(1)
        sal = torch.where((alpha > 0) & (beta < 0), alpha * beta.abs(), torch.zeros_like(alpha))
        sal = sal.masked_fill(~dom, -1.0)
        fallback = (alpha - beta).masked_fill(~dom, float("-inf"))
        use_fb = sal.amax(1) <= 0
        best = torch.where(use_fb, fallback.argmax(1), sal.argmax(1))
        has_domain = dom.any(1)
        flat = x_adv.view(n, -1)
        rows = active[has_domain]
        cols = best[has_domain]
        flat[rows, cols] = (flat[rows, cols] + delta).clamp(lo, hi)
        dflat = domain.view(n, -1)
        dflat[rows, cols] = (flat[rows, cols] < hi) if delta > 0 else (flat[rows, cols] > lo)
    return cost


@torch.no_grad()
def boundary_cost(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, p: CostParams,
                  clip: tuple[float, float], generators: Sequence[torch.Generator], init_tries: int = 20,
                  search_steps: int = 12) -> torch.Tensor:
    """Iterations of a decision-based boundary attack until ``||x_adv - x||_2 < threshold``.

    Start: uniform noise (up to ``init_tries`` draws) classified differently from the clean
    prediction, binary-searched towards ``x`` to the boundary. Each iteration proposes one
    candidate per live input: an orthogonal step of relative size ``step_o`` on the sphere around
    ``x`` followed by a step of relative size ``step_s`` towards ``x``; it is kept when still
    misclassified. Both step sizes adapt per input (grow on success, shrink on failure). One
    forward pass per live input and iteration. Inputs with no adversarial start cost ``max_iter``.
    Input ``i`` draws its noise from ``generators[i]`` only, and only while it is still searching.
    """
    lo, hi = clip
    n = x.shape[0]
    cost = torch.full((n,), p.max_iter, dtype=torch.long, device=x.device)

    def adversarial(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return model(z).argmax(1) != labels[idx]

    start = x.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    for _ in range(init_tries):
        todo = (~found).nonzero().flatten()
        if todo.numel() == 0:
            break
        noise = _row_noise(generators, todo, x.shape[1:], False, x) * (hi - lo) + lo
        ok = adversarial(noise, todo)
        start[todo[ok]] = noise[ok]
        found[todo[ok]] = True
    active = found.nonzero().flatten()
    if active.numel() == 0:
        return cost
    # binary search on the segment x -> start for the boundary (keep the adversarial end)
    a_lo = torch.zeros(active.numel(), device=x.device)
    a_hi = torch.ones(active.numel(), device=x.device)
    xs, ss = x[active], start[active]
    shape = (-1, *([1] * (x.dim() - 1)))
    for _ in range(search_steps):
        mid = (a_lo + a_hi) / 2
        adv = adversarial(xs + mid.view(shape) * (ss - xs), active)
        a_hi = torch.where(adv, mid, a_hi)
        a_lo = torch.where(adv, a_lo, mid)
    cur = xs + a_hi.view(shape) * (ss - xs)
    x_adv = x.clone()
    x_adv[active] = cur
    step_o = torch.full((n,), p.step, device=x.device)
    step_s = torch.full((n,), p.step, device=x.device)
    for t in range(p.max_iter + 1):
        dist = l2_norm(x_adv[active] - x[active])
        done = dist < p.threshold
        if bool(done.any()):
            cost[active[done]] = t
            active = active[~done]
        if t == p.max_iter or active.numel() == 0:
            break
        xa, x0 = x_adv[active], x[active]
        diff = xa - x0
        d = l2_norm(diff).view(shape)
        eta = _row_noise(generators, active, x.shape[1:], True, x)
        unit = diff / d.clamp_min(1e-12)
        eta = eta - (eta * unit).flatten(1).sum(1).view(shape) * unit  # orthogonal to x_adv - x
        cand = x0 + diff + step_o[active].view(shape) * d * l2_normalize(eta)
        cand = x0 + (cand - x0) * (d / l2_norm(cand - x0).view(shape).clamp_min(1e-12))  # back on the sphere
        cand = (x0 + (1 - step_s[active].view(shape)) * (cand - x0)).clamp(lo, hi)
        ok = adversarial(cand, active)
        x_adv[active[ok]] = cand[ok]
        factor = torch.where(ok, torch.tensor(1.25, device=x.device), torch.tensor(0.8, device=x.device))
        step_s[active] = (step_s[active] * factor).clamp(1e-4, 0.5)
        step_o[active] = (step_o[active] * factor).clamp(1e-3, 1.0)
    return cost
