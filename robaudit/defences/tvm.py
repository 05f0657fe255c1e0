"""Total variation minimisation (TVM) with random pixel dropout, solved for a whole batch at once.

| Paper: Guo, Rana, Cisse and van der Maaten, "Countering Adversarial Images using Input
  Transformations", ICLR 2018, https://openreview.net/forum?id=SyJ7ClWCb
| Distance: none (a pre-processing defence).
| Arguments: ``keep_prob`` (0.3), ``norm`` (2), ``lamb`` (0.5), ``max_iter`` (10), ``history`` (3),
  ``seed`` (0).
| Shapes: ``(N, C, H, W)`` -> ``(N, C, H, W)``; every (image, channel) plane is its own problem.

For each plane ``x`` a Bernoulli mask ``X`` keeps a pixel with probability ``keep_prob`` (ART's
``prob``: ``mask = rand < prob``, so 1 means *kept*), and the defence returns an approximate
minimiser, started at ``z = x``, of the paper's objective

    ``E(z) = ||X * (z - x)||_2 + lamb * TV_p(z)``,
    ``TV_p(z) = sum_i ||z[i+1, :] - z[i, :]||_p + sum_j ||z[:, j+1] - z[:, j]||_p``

(the data term is always the Euclidean norm; ``norm`` is the ``p`` of the row/column difference
norms in TV, as in the paper and ART's ``TotalVarMin``). Pixels are rescaled from ``clip`` to
[0, 1] for the solve, so the result does not depend on the pixel scale, and clipped afterwards.

Like ART, the solve is *not* run to convergence: with the study's ``lamb`` the exact minimiser is
nearly flat, and the defence is defined by ``max_iter`` = 10 quasi-Newton iterations from ``x``.
ART runs scipy's L-BFGS-B once per image and channel; here one batched L-BFGS runs every plane of
the batch together: each plane keeps its own curvature pairs, its own step and its own Armijo
backtracking line search (vectorised; only planes whose trial step fails are re-evaluated),
so a plane's result does not depend on the other images in the batch. The first step follows the
normalised steepest descent direction, as L-BFGS-B does.

The gradient: by default (``gradient="art"``) the solver follows ART's hand-written gradient, whose
TV part is ``p`` times the exact one. Because the solve stops after ``max_iter`` iterations, that
factor changes the image: it smooths more in the same iterations (and reaches a lower ``E``).
The defence the study measured is ART's, so that is the default; ``gradient="exact"`` uses the
exact gradient of ``E`` (robaudit's default until December 2026; the study grids in
``docs/defend.md`` that predate the change say so).

How close, on ART's own masks (``bench/results/tvm_bench.md``, ``tests/test_defences.py``):

- default: 0.0032 mean absolute difference from ART's images on 200 CIFAR-10 images, 0.0045 on 300
  MNIST digits (0.0016 / 0.0020 with ``history=10``, scipy's number of pairs); the LeNet-5 keeps
  86.0% of those digits (ART: 84.7%), the ResNet-20 23.5% of the CIFAR-10 images (ART: 24.0%);
- ``gradient="exact"``: 0.0055 (CIFAR-10) and 0.0114 (MNIST), LeNet-5 88.3%; scipy's L-BFGS-B with
  the exact gradient gives planes within 0.001..0.007 of it.

On the CPU the planes are solved in chunks that fit the cache (larger with more torch threads),
reusing one set of buffers; on a GPU all at once.

The mask is random: ``randomized=True``. It is drawn from a private ``torch.Generator`` seeded with
``seed`` (so a fresh defence gives the same sequence of masks, whatever else uses torch's global
generator), from torch's global generator when ``seed`` is ``None``, or from the generator passed
to ``forward``. The iterative solve is treated as non-differentiable (``differentiable=False``):
stacks use BPDA (identity backward) through it.

Example::

    tvm = TotalVarMin(TvmParams(seed=1))
    x_tv = tvm(x)             # x: float (N, C, H, W) in [0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from robaudit.defences.interface import DefenceName, DefenceParams, Preprocessor
from robaudit.errors import ConfigError

_EPS = 1e-6
"""Floor on the norms in the gradient (the objective is not differentiable where a norm is 0)."""
_ARMIJO = 1e-4
"""Sufficient-decrease constant of the line search."""
_MAX_BACKTRACK = 10
"""Halvings of the step before a plane gives up on an iteration (its point then stays)."""
_CPU_CHUNK_PIXELS = 96 * 1024
"""On the CPU, planes are solved in chunks of about this many pixels per torch thread, so the
solver's buffers stay in the cache (on one thread measured fastest among 16..600 CIFAR planes per
chunk). With more threads the chunks grow with them: each element-wise step is split across the
threads, and a step over 96 planes is too small to share (on 2 cores, 600 CIFAR planes took 1.2 to
1.4 times less wall time in chunks of 150..300 planes than on one thread, and no less in chunks of
96). The planes are split into that many chunks of about equal size (no small remainder chunk)."""


@dataclass(frozen=True)
class TvmParams(DefenceParams):
    """Parameters of :class:`TotalVarMin`. Defaults are ART's ``TotalVarMin`` defaults (the study's)."""

    keep_prob: float = 0.3
    """Probability that a pixel is kept in the data term (ART's ``prob``)."""
    norm: int = 2
    """``p`` of the row/column difference norms in TV (1: anisotropic, 2: the paper's default)."""
    lamb: float = 0.5
    """Weight of the TV term (ART's ``lamb``)."""
    max_iter: int = 10
    """L-BFGS iterations from ``z = x`` (ART's ``max_iter``)."""
    history: int = 3
    """Curvature pairs L-BFGS keeps per plane. scipy's default is 10; within 10 iterations 3 pairs
    give images within 0.003 mean absolute difference of 10 pairs (CIFAR-10, same masks), faster."""
    seed: int | None = 0
    """Seed of the private mask generator; ``None``: draw masks from torch's global generator."""
    gradient: str = "art"
    """``art``: the solver follows ART's ``TotalVarMin`` gradient, whose TV part is ``norm`` times
    the exact one (2x at the default norm 2); ``exact``: the exact gradient of ``E``. The solve stops
    after ``max_iter`` iterations, long before it converges, so the two give different images: on
    300 MNIST test digits with the same masks the exact gradient smooths less and left the LeNet-5
    at 88.3% clean accuracy, where ART's gradient gives 86.0% (ART's own TotalVarMin: 84.7%)."""

    @property
    def tv_grad_scale(self) -> float:
        """Factor on the TV part of the gradient (see ``gradient``)."""
        return float(self.norm) if self.gradient == "art" else 1.0

    def check(self) -> None:
        if not 0.0 < self.keep_prob <= 1.0:
            raise ConfigError(f"tvm.keep_prob must be in (0, 1], got {self.keep_prob}")
        if not 1 <= self.norm <= 16:
            raise ConfigError(f"tvm.norm must be an integer between 1 and 16, got {self.norm}")
        if not self.lamb >= 0.0:
            raise ConfigError(f"tvm.lamb must be >= 0, got {self.lamb}")
        if not 1 <= self.max_iter <= 10_000:
            raise ConfigError(f"tvm.max_iter must be between 1 and 10000, got {self.max_iter}")
        if not 1 <= self.history <= 100:
            raise ConfigError(f"tvm.history must be between 1 and 100, got {self.history}")
        if self.gradient not in ("art", "exact"):
            raise ConfigError(f"tvm.gradient must be 'art' or 'exact', got {self.gradient!r}")
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"tvm.seed must be >= 0 or null, got {self.seed}")


class _Scratch:
    """Buffers of one objective evaluation for ``n`` planes stored flat, ``(n, h*w)``.

    ``qv`` holds the row differences between a zero row before and after them, ``qh`` the column
    differences (flat, zero at row ends) after a leading zero: the adjoint of each difference
    operator is then one subtraction of two shifted views."""

    def __init__(self, n: int, h: int, w: int, like: torch.Tensor) -> None:
        hw = h * w
        self.qv = like.new_zeros(n, hw + w)
        self.qh = like.new_zeros(n, hw + 1)
        self.r = like.new_empty(n, hw)
        self.grad = like.new_empty(n, hw)
        self._views(h, w)

    def _views(self, h: int, w: int) -> None:
        n, hw = self.r.shape
        qv, qh = self.qv, self.qh
        self.dv = qv[:, w:hw]
        """Row differences (n, (h-1)*w)."""
        self.dh, self.dh_end = qh[:, 1:], qh[:, 1:].view(n, h, w)[:, :, w - 1]
        """Column differences (n, h*w) (flat, 0 at row ends) and their row-end entries."""
        self.adj = (qv[:, :hw], qv[:, w:], qh[:, :hw], qh[:, 1:])
        """Shifted views whose sum ``adj[0] - adj[1] + adj[2] - adj[3]`` is the adjoint."""

    def rows(self, k: int, h: int, w: int) -> _Scratch:
        """The same buffers for the first ``k`` planes (views, no allocation)."""
        out = _Scratch.__new__(_Scratch)
        out.qv, out.qh, out.r, out.grad = self.qv[:k], self.qh[:k], self.r[:k], self.grad[:k]
        out._views(h, w)
        return out


def _norm(d: torch.Tensor, dim: int, tmp: torch.Tensor, p: int) -> torch.Tensor:
    """The ``p``-norms of ``d`` along ``dim`` (kept dims); ``d`` unchanged, ``tmp`` (its shape) scratch."""
    if p == 2:
        if dim == d.dim() - 1:  # a fused reduction is fastest along the last dimension
            return torch.linalg.vector_norm(d, dim=dim, keepdim=True)
        return torch.mul(d, d, out=tmp).sum(dim, keepdim=True).sqrt_()
    a = torch.abs(d, out=tmp)
    return a.sum(dim, keepdim=True) if p == 1 else a.pow_(p).sum(dim, keepdim=True).pow_(1.0 / p)


def _norm_grad(d: torch.Tensor, dim: int, tmp: torch.Tensor, lamb: float, p: int) -> torch.Tensor:
    """Replace the differences ``d`` by ``lamb`` times the gradient of their ``p``-norms along
    ``dim``; return the norms (kept dims), as :func:`_norm`."""
    n = _norm(d, dim, tmp, p)
    if p == 2:
        coef = n.clamp_min(_EPS).reciprocal_()
        d.mul_(coef if lamb == 1.0 else coef.mul_(lamb))  # ART's gradient at the defaults: lamb 1
    elif p == 1:
        d.sign_().mul_(lamb)
    else:
        a = d.abs()
        d.copy_(d.sign() * a.pow_(p - 1)).mul_(n.clamp_min(_EPS).pow(1 - p).mul_(lamb))
    return n


class _Problem:
    """``E`` for a chunk of planes ``x`` (n, h*w) with keep-masks ``mask``."""

    def __init__(self, x: torch.Tensor, mask: torch.Tensor, h: int, w: int, lamb: float, p: int,
                 neg_xm: torch.Tensor, tv_grad_scale: float = 1.0) -> None:
        self.mask, self.h, self.w, self.lamb, self.p = mask, h, w, lamb, p
        self.tv_grad_lamb = lamb * tv_grad_scale
        """Weight of the TV term in the gradient (``lamb`` for the exact gradient; ART's is ``p * lamb``)."""
        self.neg_xm = torch.mul(x, mask, out=neg_xm).neg_()
        """``-mask * x``: the data term's residual is then one fused ``addcmul``."""
        self._shifted: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}
        """Shifted views of the points evaluated, by their address (the solver alternates two buffers)."""

    def value_grad(
        self, z: torch.Tensor, buf: _Scratch, idx: torch.Tensor | None = None, with_grad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``E(z)`` per plane, (n, 1), and its gradient (in ``buf.grad``; not computed, and ``buf.grad``
        returned as it is, unless ``with_grad``); ``idx``: ``z`` holds only these planes."""
        if idx is None:
            neg_xm, mask = self.neg_xm, self.mask
        else:
            neg_xm, mask = self.neg_xm.index_select(0, idx), self.mask.index_select(0, idx)
        n, hw = z.shape
        h, w, lamb, p, glamb = self.h, self.w, self.lamb, self.p, self.tv_grad_lamb
        grad = buf.grad

        def norms(d: torch.Tensor, dim: int, tmp: torch.Tensor) -> torch.Tensor:  # and d -> its TV gradient
            return _norm_grad(d, dim, tmp, glamb, p) if with_grad else _norm(d, dim, tmp, p)

        r = torch.addcmul(neg_xm, z, mask, out=buf.r)  # mask * (z - x)
        fid = torch.linalg.vector_norm(r, dim=1, keepdim=True)
        value = fid
        key = (z.data_ptr(), n)
        zs = self._shifted.get(key) if idx is None else None
        if zs is None:  # z one row down, z, z one pixel on, z
            zs = (z[:, w:], z[:, :-w], z[:, 1:], z[:, :-1])
            if idx is None:
                self._shifted[key] = zs
        if h > 1:  # rows: the norm of z[i+1, :] - z[i, :] for each i
            dv = torch.sub(zs[0], zs[1], out=buf.dv)
            nv = norms(dv.view(n, h - 1, w), 2, grad[:, : hw - w].view(n, h - 1, w))
            value = torch.add(value, nv.view(n, -1).sum(1, keepdim=True), alpha=lamb)
        if w > 1:  # columns: the norm of z[:, j+1] - z[:, j] for each j
            dh = buf.dh
            torch.sub(zs[2], zs[3], out=dh[:, :-1])
            buf.dh_end.zero_()  # a flat shift by one pairs a row's end with the next row's start
            nh = norms(dh.view(n, h, w), 1, grad.view(n, h, w))
            value = torch.add(value, nh.view(n, -1).sum(1, keepdim=True), alpha=lamb)
        if not with_grad:
            return value, grad
        qv_lo, qv_hi, qh_lo, qh_hi = buf.adj
        torch.sub(qv_lo, qv_hi, out=grad)
        grad.add_(qh_lo).sub_(qh_hi)
        grad.addcmul_(r, fid.clamp_min(_EPS).reciprocal_())
        return value, grad


class Workspace:
    """Every buffer :func:`tv_lbfgs` needs for up to ``n`` planes of ``h`` x ``w`` pixels, allocated
    once and reused chunk after chunk (fresh large buffers cost page faults and zero-fills)."""

    def __init__(self, n: int, h: int, w: int, history: int, like: torch.Tensor) -> None:
        self.shape = (n, h, w, history)
        self.bufs = (_Scratch(n, h, w, like), _Scratch(n, h, w, like))
        self.spare = _Scratch(n, h, w, like)
        self.tmp, self.z, self.zn, self.neg_xm = (like.new_empty(n, h * w) for _ in range(4))
        self.s_hist = like.new_empty(history + 1, n, h * w)
        self.y_hist = like.new_empty(history + 1, n, h * w)


def tv_lbfgs(x: torch.Tensor, mask: torch.Tensor, h: int, w: int, *, lamb: float, p: int, max_iter: int,
             history: int, tv_grad_scale: float = 1.0, workspace: Workspace | None = None) -> torch.Tensor:
    """Batched L-BFGS on ``E`` for planes ``x`` (n, h*w) in [0, 1] with keep-masks ``mask``, from ``z = x``.

    Every plane has its own curvature pairs, step and Armijo backtracking (halving from step 1);
    a plane that finds no decrease in ``_MAX_BACKTRACK`` halvings keeps its point that iteration.
    The result may live in ``workspace``: copy it out before the next call with the same one."""
    n = x.shape[0]
    ws = workspace
    if ws is None or ws.shape[0] < n or ws.shape[1:] != (h, w, history):
        ws = Workspace(n, h, w, history, x)
    prob = _Problem(x, mask, h, w, lamb, p, ws.neg_xm[:n], tv_grad_scale)
    bufs = (ws.bufs[0].rows(n, h, w), ws.bufs[1].rows(n, h, w))
    spare, tmp = ws.spare, ws.tmp[:n]

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.mul(a, b, out=tmp).sum(1, keepdim=True)

    z, zn = ws.z[:n], ws.zn[:n]
    z.copy_(x)
    f, g = prob.value_grad(z, bufs[0])
    slots = history + 1  # one slot more than pairs: the new direction is written into a free one
    s_hist, y_hist = ws.s_hist[:, :n].unbind(0), ws.y_hist[:, :n].unbind(0)  # only slots in `pairs` are read
    rho = list(x.new_zeros(slots, n, 1).unbind(0))  # 0 marks a rejected pair (no positive curvature): no change
    neg_gamma = x.new_full((n, 1), -1.0)
    pairs: list[int] = []  # slots in use, oldest first
    gs = f  # g . s of the newest pair (it is the last step's gn . s); set before it is read
    for k in range(max_iter):
        j = next(i for i in range(slots) if i not in pairs)
        d = s_hist[j]
        if not pairs:  # L-BFGS-B's first step: steepest descent of unit length
            scale = torch.linalg.vector_norm(g, dim=1, keepdim=True).clamp_min_(1e-12).reciprocal_().neg_()
            torch.mul(g, scale, out=d)
        else:  # two-loop recursion, run on +g: each a is minus the usual alpha, and -gamma flips the sign back
            alphas = []
            for i in reversed(pairs):
                a = (dot(s_hist[i], d) if alphas else gs).mul_(rho[i])
                if alphas:
                    d.addcmul_(y_hist[i], a, value=-1.0)
                else:
                    torch.addcmul(g, y_hist[i], a, value=-1.0, out=d)
                alphas.append(a)
            d.mul_(neg_gamma)
            for i, a in zip(pairs, reversed(alphas), strict=True):
                c = dot(y_hist[i], d).mul_(rho[i]).add_(a)
                d.addcmul_(s_hist[i], c, value=-1.0)
        slope = dot(g, d)
        torch.add(z, d, out=zn)
        last = k == max_iter - 1  # the last point's gradient is never used
        fn, gn = prob.value_grad(zn, bufs[(k + 1) % 2], with_grad=not last)
        failed = torch.le(fn, torch.add(f, slope, alpha=_ARMIJO)).logical_not_()  # NaN fails too
        step: torch.Tensor | None = None
        if bool(failed.any()):
            step = _backtrack(prob, failed, z, d, f, g, slope, zn, fn, None if last else gn, spare)
        if last:
            return zn
        y = torch.sub(gn, g, out=y_hist[j])
        gs = dot(gn, d)  # gn . s: also the next two-loop's first dot product
        sy = gs.sub(slope if step is None else slope * step)  # (gn - g) . s
        yy = torch.linalg.vector_norm(y, dim=1, keepdim=True).square_()
        ok = sy > 1e-10 * yy
        rho[j] = torch.where(ok, sy.reciprocal(), 0.0)
        neg_gamma = torch.where(ok, sy.div_(yy.clamp_min_(1e-30)).neg_(), neg_gamma)
        pairs.append(j)
        if len(pairs) > history:
            pairs.pop(0)
        z, zn, f, g = zn, z, fn, gn
    return z


def _backtrack(prob: _Problem, failed: torch.Tensor, z: torch.Tensor, d: torch.Tensor, f: torch.Tensor,
               g: torch.Tensor, slope: torch.Tensor, zn: torch.Tensor, fn: torch.Tensor, gn: torch.Tensor | None,
               spare: _Scratch) -> torch.Tensor:
    """Armijo backtracking for the planes whose full step ``failed``: halve their step until ``E``
    decreases enough, writing their new point, value and gradient into ``zn``, ``fn``, ``gn`` (no
    gradient if ``gn`` is None) and scaling their rows of ``d`` by the step (so ``d`` holds the step
    taken, ``s``); returns every plane's step, (n, 1) (0: no decrease found, the plane stays at ``z``).
    The planes still searching share one step (each has failed as often), so a round is one
    evaluation of them."""
    step = torch.ones_like(f)
    idx = failed.view(-1).nonzero().squeeze(1)
    z_a, d_a = z.index_select(0, idx), d.index_select(0, idx)
    f_a, thr = f.index_select(0, idx), slope.index_select(0, idx).mul_(_ARMIJO)
    t = 1.0
    for _ in range(_MAX_BACKTRACK):
        t *= 0.5
        zt = torch.add(z_a, d_a, alpha=t)
        ft, gt = prob.value_grad(zt, spare.rows(idx.numel(), prob.h, prob.w), idx, with_grad=gn is not None)
        ok = torch.le(ft, torch.add(f_a, thr, alpha=t))
        if bool(ok.all()):
            zn.index_copy_(0, idx, zt)
            if gn is not None:
                gn.index_copy_(0, idx, gt)
            fn.index_copy_(0, idx, ft)
            d.index_copy_(0, idx, d_a.mul_(t))
            return step.index_fill_(0, idx, t)
        if bool(ok.any()):
            good = ok.view(-1).nonzero().squeeze(1)
            done = idx.index_select(0, good)
            zn.index_copy_(0, done, zt.index_select(0, good))
            if gn is not None:
                gn.index_copy_(0, done, gt.index_select(0, good))
            fn.index_copy_(0, done, ft.index_select(0, good))
            d.index_copy_(0, done, d_a.index_select(0, good).mul_(t))
            step.index_fill_(0, done, t)
            keep = ok.logical_not_().view(-1).nonzero().squeeze(1)
            idx = idx.index_select(0, keep)
            z_a, d_a, f_a, thr = (a.index_select(0, keep) for a in (z_a, d_a, f_a, thr))
    # no decrease: stay
    zn.index_copy_(0, idx, z_a)
    if gn is not None:
        gn.index_copy_(0, idx, g.index_select(0, idx))
    fn.index_copy_(0, idx, f_a)
    d.index_fill_(0, idx, 0.0)
    return step.index_fill_(0, idx, 0.0)


class TotalVarMin(Preprocessor):
    """Total variation minimisation on randomly masked pixels (see module docs)."""

    name: ClassVar[DefenceName] = DefenceName.TVM
    differentiable: ClassVar[bool] = False
    randomized: ClassVar[bool] = True
    Params: ClassVar[type[DefenceParams]] = TvmParams
    params: TvmParams

    def __init__(self, params: DefenceParams | None = None, *, clip: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(params, clip=clip)
        self._seed = self.params.seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def reseed(self, seed: int | None = None) -> None:
        """Restart the private mask sequence from ``seed`` (default: ``params.seed``)."""
        self._seed = self.params.seed if seed is None else seed
        self._generators.clear()

    def _generator(self, device: torch.device) -> torch.Generator | None:
        seed = self._seed
        if seed is None:
            return None
        if device not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
            self._generators[device] = gen
        return self._generators[device]

    def draw_mask(
        self, shape: torch.Size, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A keep-mask (1.0 = kept) of ``shape``, advancing the generator in use."""
        gen = generator if generator is not None else self._generator(device)
        return (torch.rand(shape, generator=gen, device=device) < self.params.keep_prob).float()

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.solve(x, self.draw_mask(x.shape, x.device, generator))

    def solve(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The TVM result for ``x`` with a given keep-``mask`` (same shape, 1.0 = kept); deterministic."""
        if mask.shape != x.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match input shape {tuple(x.shape)}")
        lo, hi = self.clip
        n, c, h, w = x.shape
        unit = (lo, hi) == (0.0, 1.0)  # no rescaling (and no copy of float32 input)
        with torch.no_grad():
            planes = x.detach().float() if unit else (x.float() - lo) / (hi - lo)
            planes = planes.reshape(n * c, h * w).contiguous()
            masks = mask.to(planes.dtype).reshape(n * c, h * w).contiguous()
            out = torch.empty_like(planes)  # a normal tensor, written in place under inference mode
        prm = self.params
        if x.device.type == "cpu":
            chunk = max(1, _CPU_CHUNK_PIXELS * max(1, torch.get_num_threads()) // (h * w))
            chunk = -(-planes.shape[0] // -(-planes.shape[0] // chunk))  # as many chunks, all about equal
        else:
            chunk = planes.shape[0]
        with torch.inference_mode():  # cheaper small ops than no_grad
            ws = Workspace(min(chunk, planes.shape[0]), h, w, prm.history, planes)
            for i in range(0, planes.shape[0], chunk):
                out[i : i + chunk] = tv_lbfgs(planes[i : i + chunk], masks[i : i + chunk], h, w, lamb=prm.lamb,
                                              p=prm.norm, max_iter=prm.max_iter, history=prm.history,
                                              tv_grad_scale=prm.tv_grad_scale, workspace=ws)
        with torch.no_grad():
            return (out.view(n, c, h, w) if unit else out.view(n, c, h, w) * (hi - lo) + lo).to(x.dtype)
