"""HopSkipJump: a decision-based attack, batched in PyTorch, and ART's reference."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from robaudit.attacks._art import ArtAttack
from robaudit.attacks.base import Attack, AttackKind, AttackParams, CONFIRM_DRAWS, Criterion, Norm, confirm_draws
from robaudit.errors import ConfigError


@dataclass(frozen=True)
class HopSkipJumpParams(AttackParams):
    """Parameters of :class:`HopSkipJump` and :class:`ArtHopSkipJump`."""

    max_iter: int = 40
    """Iterations (gradient estimate, step-size search, binary search) per image."""
    max_eval: int = 10000
    """Cap on the gradient-estimation samples of one iteration."""
    init_eval: int = 100
    """Gradient-estimation samples at iteration 1; iteration t uses ``init_eval * sqrt(t)``."""
    init_size: int = 100
    """Uniform-noise draws tried per image to find an adversarial starting point."""
    max_queries: int = 20000
    """Query budget per image (every model call on a probe counts; torch backend only). An image
    stops when its next iteration's gradient estimate would not fit; searches stop at the budget."""
    gamma: float = 1.0
    """Binary-search tolerance: ``theta = gamma / d**1.5`` (L2) or ``gamma / d**2`` (Linf), d features
    (torch backend; ART fixes its own)."""
    query_batch: int = 0
    """Most probe images sent to the model in one forward call; 0 (default) picks 128 on a CPU,
    where small batches keep a network's activations in cache (ResNet-20 forward: 630-1000
    images/s at 128 against 380-390 at 4096, one thread), and 4096 on a GPU."""
    confirm_draws: int = CONFIRM_DRAWS
    """Against a randomised model only (a stack with TVM; torch backend): a probe of the start
    search, the binary search or the step-size search counts as adversarial only if it also fools
    this many fresh draws (each a query), so the boundary found is where the defence is fooled
    reliably, not where one lucky draw was. Gradient-estimate probes stay single draws (a noisy
    sign only adds noise to a Monte-Carlo mean). 0 = off."""


def _check(p: HopSkipJumpParams) -> None:
    if p.confirm_draws < 0:
        raise ConfigError(f"hopskipjump: confirm_draws must be >= 0, got {p.confirm_draws}")
    for key in ("max_iter", "max_eval", "init_eval", "init_size", "max_queries"):
        if getattr(p, key) < 1:
            raise ConfigError(f"hopskipjump: {key} must be >= 1, got {getattr(p, key)}")
    if p.query_batch < 0:
        raise ConfigError(f"hopskipjump: query_batch must be >= 0 (0 = auto), got {p.query_batch}")
    if p.gamma <= 0:
        raise ConfigError(f"hopskipjump: gamma must be > 0, got {p.gamma}")


def query_batch(p: HopSkipJumpParams, device: torch.device) -> int:
    """Probe images per forward call: ``p.query_batch``, or by device when it is 0."""
    return p.query_batch or (4096 if device.type == "cuda" else 128)


class HopSkipJump(Attack):
    r"""HopSkipJumpAttack from "HopSkipJumpAttack: A Query-Efficient Decision-Based Attack"
    (Chen, Jordan and Wainwright, IEEE S&P 2020), [https://arxiv.org/abs/1904.02144],
    batched over images in PyTorch.

    Distance Measure : L2 (default), Linf

    Decision-based: only the model's top-1 decision is used, all under ``torch.no_grad()``, so it
    runs on black-box models (``needs_gradients = False``). Per image: find an adversarial start,
    binary-search it to the decision boundary, then for each iteration t estimate the boundary's
    normal by Monte-Carlo (``min(init_eval * sqrt(t), max_eval)`` random unit directions at
    distance delta, baseline-corrected signs), take a geometric step (``dist / sqrt(t)``, halved
    until adversarial) and binary-search back to the boundary. The batch is processed together:
    the probes of all live images (gradient samples, every round of the binary and step-size
    searches, noise draws) go into shared forward calls of at most ``query_batch`` images; each
    image has its own query counter and leaves when its budget or the iterations are spent.

    Starting points. Untargeted: uniform noise, up to ``init_size`` draws per image. Targeted:
    a random image of the same batch that the model classifies as the target (no query needed);
    when the batch has none, uniform noise as above, searched for the target class. An image
    with no starting point is returned unchanged (a failure); an image already adversarial is
    returned unchanged (distance 0).

    Randomised models (a defence stack with TVM): every decision that moves an image's current
    point (its start, each binary-search and step-size probe, and whether the clean input is
    already adversarial) must hold on ``confirm_draws`` fresh draws as well, so the attack ends
    where the defence is fooled reliably; gradient-estimate probes are single draws.

    Arguments:
        max_iter (int): iterations. (Default: 40)
        max_eval (int): cap on gradient samples per iteration. (Default: 10000)
        init_eval (int): gradient samples at iteration 1. (Default: 100)
        init_size (int): noise draws for the start. (Default: 100)
        max_queries (int): per-image query budget. (Default: 20000)
        gamma (float): binary-search tolerance factor. (Default: 1.0)
        query_batch (int): images per forward call; 0 = 128 on CPU, 4096 on GPU. (Default: 0)

    The defaults spend about 20k queries per image: 40 iterations need ~17k gradient samples
    plus ~17 binary-search and a few step-size queries each.

    Shape:
        - x: (N, C, H, W) in ``clip``. - labels, targets: (N,). - output: (N, C, H, W).

    Examples::
        >>> attack = HopSkipJump(HopSkipJump.Params(max_iter=20), norm=Norm.L2)
        >>> out = attack.generate(model, x, labels)
        >>> l2 = (out.x_adv - x).flatten(1).norm(dim=1)
    """

    name: ClassVar[str] = "hopskipjump"
    kind: ClassVar[AttackKind] = AttackKind.MINIMIZATION
    norms: ClassVar[tuple[Norm, ...]] = (Norm.L2, Norm.LINF)
    needs_gradients: ClassVar[bool] = False
    Params: ClassVar[type[AttackParams]] = HopSkipJumpParams

    def run(self, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> torch.Tensor:
        p = self.params
        assert isinstance(p, HopSkipJumpParams)
        _check(p)
        with torch.no_grad():
            return _HSJRun(self, model, x, criterion, generator, p).attack()


class _HSJRun:
    """State of one batch: per-image query counters and the decision oracle."""

    def __init__(self, attack: HopSkipJump, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion,
                 generator: torch.Generator, p: HopSkipJumpParams) -> None:
        self.model, self.x, self.crit, self.gen, self.p = model, x.detach(), criterion, generator, p
        self.owner = attack
        self.lo, self.hi = float(attack.clip[0]), float(attack.clip[1])
        self.l2 = attack.norm is Norm.L2
        self.d = int(np.prod(x.shape[1:]))
        self.theta = p.gamma / (self.d ** 1.5 if self.l2 else self.d ** 2)
        self.queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.qb = query_batch(p, x.device)
        self.draws = confirm_draws(model, p.confirm_draws)

    # -- oracle ---------------------------------------------------------------------------------
    def decide(self, probes: torch.Tensor, owner: torch.Tensor, confirm: bool = False) -> torch.Tensor:
        """Is each probe adversarial for the image it belongs to? Counts one query per probe and
        model call. ``confirm``: against a randomised model, a probe stays adversarial only if
        ``confirm_draws`` fresh draws agree (stopping at its first disagreeing draw)."""
        ok = self._decide_once(probes, owner)
        return self._confirm(ok, probes, owner) if confirm else ok

    def _confirm(self, ok: torch.Tensor, probes: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """``ok`` (updated in place) with each True probe re-asked on up to ``confirm_draws`` fresh
        draws, False at its first disagreeing one. (``base.refuted`` does this for gradient attacks;
        here every draw must be a counted query of its image, against ``max_queries``.)"""
        for _ in range(self.draws):
            rows = ok.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            ok[rows] = self._decide_once(probes[rows], owner[rows])
        return ok

    def _decide_once(self, probes: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        preds = [self.model(probes[s:s + self.qb]).argmax(dim=1) for s in range(0, probes.shape[0], self.qb)]
        pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=probes.device)
        self.queries.index_add_(0, owner, torch.ones_like(owner))
        cls = self.crit.attack_classes[owner]
        return pred == cls if self.crit.targeted else pred != cls

    def room(self, idx: torch.Tensor, need: int = 1) -> torch.Tensor:
        """Whether images ``idx`` can still spend ``need`` queries (a confirmed probe may take
        ``1 + confirm_draws``) within ``max_queries``."""
        return self.queries[idx] + need <= self.p.max_queries

    # -- geometry -------------------------------------------------------------------------------
    def dist(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = (a - b).flatten(1)
        return diff.norm(dim=1) if self.l2 else diff.abs().amax(dim=1)

    def blend(self, x0: torch.Tensor, xa: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        a = alpha.view(-1, *([1] * (x0.dim() - 1)))
        if self.l2:
            return (1 - a) * x0 + a * xa
        return torch.minimum(torch.maximum(xa, x0 - a), x0 + a)

    def binary_search(self, idx: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
        """Move adversarial ``xa`` (images ``idx``) towards ``x`` up to the decision boundary."""
        x0 = self.x[idx]
        if self.l2:
            highs = torch.ones(idx.shape[0], device=xa.device)
            thresholds = torch.full_like(highs, self.theta)
        else:
            highs = self.dist(xa, x0)
            # the cap theta is in units of [0, 1]: scaled to the clip range, else a 0..255 model's
            # search runs to float32 resolution
            thresholds = (highs * self.theta).clamp(max=self.theta * (self.hi - self.lo))
        # never below float32 resolution at ``highs``: a bracket that narrow cannot shrink (its
        # midpoint rounds onto an end), and the search would spend the image's whole query budget
        # (d > 4096 under Linf or ~6600 under L2, e.g. 224x224 RGB, has theta that small)
        thresholds = torch.maximum(thresholds, highs * 2.0 ** -22)
        lows = torch.zeros_like(highs)
        while True:
            act = ((highs - lows) > thresholds) & self.room(idx, 1 + self.draws)
            a = act.nonzero().squeeze(1)
            if a.numel() == 0:
                break
            mids = (highs[a] + lows[a]) / 2
            ok = self.decide(self.blend(x0[a], xa[a], mids), idx[a], confirm=True)
            highs[a] = torch.where(ok, mids, highs[a])
            lows[a] = torch.where(ok, lows[a], mids)
        return self.blend(x0, xa, highs)

    # -- steps ----------------------------------------------------------------------------------
    def initial_points(self, x_adv: torch.Tensor, have: torch.Tensor) -> None:
        """Fill ``x_adv``/``have`` with adversarial starting points where possible."""
        if self.crit.targets is not None:
            with_target = self.clean_pred.unsqueeze(0) == self.crit.targets.unsqueeze(1)  # (i, j)
            pick = torch.rand(with_target.shape, generator=self.gen, device=self.x.device)
            j = torch.where(with_target, pick, torch.full_like(pick, -1.0)).argmax(dim=1)
            got = with_target.any(dim=1) & ~have
            x_adv[got] = self.x[j[got]]
            rows = torch.arange(got.shape[0], device=got.device)
            self._confirm(got, x_adv, rows)  # the pick must be the target on fresh draws too
            x_adv[~got & ~have] = self.x[~got & ~have]
            have |= got
        for _ in range(self.p.init_size):
            idx = (~have & self.room(torch.arange(have.shape[0], device=have.device), 1 + self.draws)).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            noise = torch.rand((idx.shape[0], *self.x.shape[1:]), generator=self.gen, device=self.x.device)
            noise = noise * (self.hi - self.lo) + self.lo
            ok = self.decide(noise, idx, confirm=True)
            x_adv[idx[ok]] = noise[ok]
            have[idx[ok]] = True

    def estimate_gradient(self, idx: torch.Tensor, xb: torch.Tensor, num_evals: int, delta: torch.Tensor) -> torch.Tensor:
        """Monte-Carlo estimate of the boundary normal at ``xb``, streamed in ``query_batch`` chunks."""
        n = idx.shape[0]
        per = max(1, self.qb // n)
        view = (n, 1, *([1] * (xb.dim() - 1)))
        s_fr = torch.zeros_like(xb)
        s_r = torch.zeros_like(xb)
        s_f = torch.zeros(n, device=xb.device)
        done = 0
        while done < num_evals:
            m = min(per, num_evals - done)
            shape = (n, m, *xb.shape[1:])
            if self.l2:
                u = torch.randn(shape, generator=self.gen, device=xb.device)
            else:
                u = torch.rand(shape, generator=self.gen, device=xb.device) * 2 - 1
            u = u / u.flatten(2).norm(dim=2).clamp_min(1e-12).view(n, m, *([1] * (xb.dim() - 1)))
            base = xb.unsqueeze(1)
            probes = (base + delta.view(view) * u).clamp(self.lo, self.hi)
            rv = (probes - base) / delta.view(view)
            f = self.decide(probes.flatten(0, 1), idx.repeat_interleave(m)).view(n, m).float() * 2 - 1
            s_fr += (f.view(n, m, *([1] * (xb.dim() - 1))) * rv).sum(dim=1)
            s_r += rv.sum(dim=1)
            s_f += f.sum(dim=1)
            done += m
        fbar = (s_f / num_evals).view(n, *([1] * (xb.dim() - 1)))
        grad = (s_fr - fbar * s_r) / num_evals
        mean_r = s_r / num_evals
        grad = torch.where(fbar == 1, mean_r, torch.where(fbar == -1, -mean_r, grad))
        if self.l2:
            return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(n, *([1] * (xb.dim() - 1)))
        return grad.sign()

    def step_size_search(self, idx: torch.Tensor, xb: torch.Tensor, update: torch.Tensor,
                         eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Geometric search: halve ``eps`` until ``xb + eps * update`` is adversarial."""
        out = xb.clone()
        found = torch.zeros(idx.shape[0], dtype=torch.bool, device=xb.device)
        eps = eps.clone()
        for _ in range(40):  # 2**-40 of the distance: below float32 resolution
            a = (~found & self.room(idx, 1 + self.draws)).nonzero().squeeze(1)
            if a.numel() == 0:
                break
            probes = (xb[a] + eps[a].view(-1, *([1] * (xb.dim() - 1))) * update[a]).clamp(self.lo, self.hi)
            ok = self.decide(probes, idx[a], confirm=True)
            out[a[ok]] = probes[ok]
            found[a[ok]] = True
            eps[a[~ok]] /= 2
        return out, found

    def attack(self) -> torch.Tensor:
        p, x = self.p, self.x
        logits = self.model(x)
        self.queries += 1
        self.clean_pred = logits.argmax(dim=1)
        done = self.crit.is_adversarial(logits)
        # an input one draw misclassifies is not thereby adversarial
        self._confirm(done, x, torch.arange(x.shape[0], device=x.device))
        x_adv = x.clone()
        have = done.clone()
        self.initial_points(x_adv, have)
        self.owner.no_start += int((~have).sum())
        live = have & ~done
        idx = live.nonzero().squeeze(1)
        if idx.numel():
            x_adv[idx] = self.binary_search(idx, x_adv[idx])
        dist = self.dist(x_adv, x)
        # every iterate is adversarial (it passed the binary search); under Linf the distance can
        # grow between iterations, so the smallest one found is kept and returned, not the last
        best, best_dist = x_adv.clone(), dist.clone()
        for t in range(1, p.max_iter + 1):
            num_evals = min(int(p.init_eval * math.sqrt(t)), p.max_eval)
            live &= self.queries + num_evals <= p.max_queries
            idx = live.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xb = x_adv[idx]
            if t == 1:
                delta = torch.full((idx.shape[0],), 0.1 * (self.hi - self.lo), device=x.device)
            else:
                delta = (math.sqrt(self.d) if self.l2 else self.d) * self.theta * dist[idx]
            delta = delta.clamp_min(1e-12)
            update = self.estimate_gradient(idx, xb, num_evals, delta)
            cand, found = self.step_size_search(idx, xb, update, dist[idx] / math.sqrt(t))
            f = found.nonzero().squeeze(1)
            if f.numel():
                x_adv[idx[f]] = self.binary_search(idx[f], cand[f])
            dist[idx] = self.dist(x_adv[idx], x[idx])
            better = idx[(dist[idx] < best_dist[idx])]
            best[better] = x_adv[better]
            best_dist[better] = dist[better]
        return best


class ArtHopSkipJump(ArtAttack):
    r"""ART's ``HopSkipJump`` (Chen et al., 2020, [https://arxiv.org/abs/1904.02144]), the
    reference for :class:`HopSkipJump`.

    Distance Measure : L2 (default), Linf

    ART attacks one image at a time (its ``batch_size`` only batches the probes of that image)
    and has no total query budget: ``max_queries``, ``gamma``, ``query_batch`` and ``confirm_draws``
    are ignored, the cost is set by ``max_iter``/``max_eval``/``init_eval``. Under numpy 2 ART probes with float64
    arrays; the adapter casts them to float32 (see ``_art``). Targeted starts come from ART's own
    uniform-noise search (``init_size`` draws).

    Examples::
        >>> out = ArtHopSkipJump(ArtHopSkipJump.Params(max_iter=20)).generate(model, x, labels)
    """

    name: ClassVar[str] = "hopskipjump"
    kind: ClassVar[AttackKind] = AttackKind.MINIMIZATION
    norms: ClassVar[tuple[Norm, ...]] = (Norm.L2, Norm.LINF)
    needs_gradients: ClassVar[bool] = False
    Params: ClassVar[type[AttackParams]] = HopSkipJumpParams

    def build(self, classifier: Any, targeted: bool, batch_size: int) -> Any:
        from art.attacks.evasion import HopSkipJump as ArtHSJ

        p = self.params
        assert isinstance(p, HopSkipJumpParams)
        _check(p)
        return ArtHSJ(classifier, batch_size=min(p.query_batch or 128, 1024), targeted=targeted,
                      norm=2 if self.norm is Norm.L2 else "inf", max_iter=p.max_iter, max_eval=p.max_eval,
                      init_eval=p.init_eval, init_size=p.init_size, verbose=False)
