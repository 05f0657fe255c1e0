"""Carlini & Wagner L2: a batched torch implementation and ART's reference.

robaudit's :class:`CWL2` runs every sample of a batch at once, with its own constant ``c``
(vectorised binary search), its own early abort and its own best-so-far example, so one batch
costs ``binary_search_steps * max_iter`` forward/backward passes at most and usually far fewer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from robaudit.attacks._art import ArtAttack
from robaudit.attacks.base import Attack, AttackKind, AttackParams, CONFIRM_DRAWS, Criterion, Norm, confirm_draws, refuted, settled
from robaudit.errors import ConfigError

_TANH_SCALE = 1.0 - 1e-6
"""Inputs on the clip bounds map to a finite ``atanh`` (about +-7.25)."""


def cw_margin(logits: torch.Tensor, classes: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Carlini-Wagner margin per sample: adversarial (with confidence kappa) when ``<= -kappa``.

    Untargeted: ``Z_y - max_{j != y} Z_j``; targeted: ``max_{j != t} Z_j - Z_t``.
    """
    own = logits.gather(1, classes.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, classes.view(-1, 1), float("-inf")).amax(dim=1)
    return others - own if targeted else own - others


def cw_success(logits: torch.Tensor, criterion: Criterion, confidence: float) -> torch.Tensor:
    """Adversarial by the criterion (argmax) and, when ``confidence > 0``, by that margin."""
    ok = criterion.is_adversarial(logits)
    if confidence > 0:
        ok = ok & (cw_margin(logits, criterion.attack_classes, criterion.targeted) <= -confidence)
    return ok


@dataclass(frozen=True)
class CWL2Params(AttackParams):
    """Parameters of :class:`CWL2`. Defaults were measured on MNIST LeNet-5 and CIFAR-10 ResNet-20 (see the class doc)."""

    confidence: float = 0.0
    """kappa: the margin by which the adversarial class must win (0 = just cross the boundary)."""
    learning_rate: float = 0.1
    """Adam step size in tanh space. CW's 0.01 barely moves saturated (0 or 1) pixels within a
    short budget (43% success at 9 x 100 steps on MNIST); 0.1 converges in 50 steps a round."""
    binary_search_steps: int = 9
    """Rounds of the per-sample binary search over the constant ``c``."""
    max_iter: int = 50
    """Adam steps per binary-search round (fewer when the round aborts early)."""
    initial_const: float = 0.1
    """Starting ``c`` for every sample; multiplied by 10 while no adversarial is found."""
    abort_early: bool = True
    """Per sample: end a round when its loss has not improved by 0.01% over
    ``max(max_iter // 10, 5)`` steps, and skip further rounds once its bracket on ``c`` is within
    ``const_tolerance``. (CW check every ``max_iter // 10`` steps; at short rounds that is every
    step or two, where Adam's noisy loss ends rounds at once: at 10 rounds x 10 steps on
    CIFAR-10 ResNet-20 the median L2 was 0.33 with it and 0.11 with the floor of 5.)"""
    const_tolerance: float = 0.02
    """Relative width ``(upper - lower) / upper`` of the ``c`` bracket at which a sample stops."""
    final_lr_ratio: float = 0.01
    """Per sample, once it has first succeeded, the Adam step decays geometrically from
    ``learning_rate`` to ``learning_rate * final_lr_ratio`` over the remaining
    ``(binary_search_steps - 1) * max_iter`` steps (1 = constant step). Large early
    steps move saturated pixels (MNIST); small late steps refine small perturbations (CIFAR-10,
    where a constant 0.1 overshoots: median L2 0.23 against 0.11 with the decay)."""
    warm_start: bool = True
    """Start each round from the previous round's last iterate instead of from ``x`` (CW
    restarts from ``x``): the rounds then refine one trajectory, which halves the steps needed
    for the same median L2."""
    confirm_draws: int = CONFIRM_DRAWS
    """Against a randomised model only (a stack with TVM): an iterate counts as adversarial (for
    the best-so-far example and the search over ``c``) once it also fools this many fresh single
    draws, so the smallest perturbation kept is not one that fooled a lucky draw. 0 = off."""


class CWL2(Attack):
    """Carlini & Wagner L2 attack, fully batched, with a per-sample binary search over ``c``.

    Paper: Nicholas Carlini, David Wagner, "Towards Evaluating the Robustness of Neural
    Networks", IEEE S&P 2017. https://arxiv.org/abs/1608.04644

    Distance measure: L2 (a minimisation attack: the smallest successful perturbation found is
    the measurement; the result is not projected onto any ball, only kept inside ``clip``).

    For every sample it minimises ``||x' - x||_2^2 + c * max(m(x'), -kappa)`` over ``w`` with
    ``x' = lo + (hi - lo) * (tanh(w) + 1) / 2`` (so ``x'`` stays in the clip range), using Adam,
    where ``m`` is the logit margin (untargeted ``Z_y - max_{j!=y} Z_j``, targeted
    ``max_{j!=t} Z_j - Z_t``). Each round starts from the sample's last iterate (``warm_start``;
    CW's restart from ``x`` with ``warm_start=False``) with fresh Adam moments; after a round
    ``c`` bisects the sample's bracket ``[largest failing c, smallest succeeding c]``, or is
    multiplied by 10 while the sample has never succeeded. A sample leaves a round early when
    its loss stalls, and leaves the search when its bracket is narrow (``abort_early``). The smallest-L2 adversarial seen at any step of any round is
    returned; a sample that never succeeds is returned unchanged. Inputs that are already
    adversarial are returned unchanged (distance 0).

    Arguments (``CWL2.Params``):
        confidence (float): kappa. Default: 0.
        learning_rate (float): Adam step in tanh space. Default: 0.1.
        binary_search_steps (int): rounds over ``c``. Default: 9.
        max_iter (int): Adam steps per round. Default: 50.
        final_lr_ratio (float): the step at the last step over the first. Default: 0.01.
        initial_const (float): first ``c``. Default: 0.1.
        abort_early (bool): per-sample early abort and early exit. Default: True.
        const_tolerance (float): bracket width for the early exit. Default: 0.02.
        warm_start (bool): rounds continue from the last iterate. Default: True.
        confirm_draws (int): fresh draws a hit must also fool, against a randomised model
            only. Default: 4.

    Defaults were measured on MNIST test images with the shared LeNet-5 (40 images): CW-style
    settings (lr 0.01, c0 0.1, 9 x 100 steps, restarts) succeed on only 43%; lr 0.05 reaches
    median L2 1.47 at 9 x 100 steps; lr 0.1, c0 1, warm start, 9 x 50 steps reaches 1.44 at
    half the cost (9 x 200 steps without early abort: 1.42). On the shared CIFAR-10 ResNet-20
    (30 images) that constant step overshoots (median L2 0.23, DeepFool 0.13): a geometric
    decay of the step to 1% over the search with ``c0 = 0.1`` reaches 0.113 there and 1.40 on
    the MNIST images (DeepFool 1.63), so both data sets share one set of defaults.

    Shape:
        - x: ``(N, C, H, W)`` (any shape with a batch dimension) in ``clip``.
        - labels, targets: ``(N,)`` int64. Output: like ``x``.

    Examples::
        >>> attack = CWL2(CWL2.Params(binary_search_steps=5))
        >>> out = attack.generate(model, images, labels)  # or targets=...
        >>> dist = (out.x_adv - images).flatten(1).norm(dim=1)
    """

    name = "cw-l2"
    kind = AttackKind.MINIMIZATION
    norms = (Norm.L2,)
    supports_targeted = True
    supports_untargeted = True
    needs_gradients = True
    Params = CWL2Params

    def run(self, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> torch.Tensor:
        p = self.params
        assert isinstance(p, CWL2Params)
        if p.binary_search_steps < 1 or p.max_iter < 1:
            raise ConfigError("cw-l2 needs binary_search_steps >= 1 and max_iter >= 1")
        if p.learning_rate <= 0 or p.initial_const <= 0 or p.confidence < 0 or p.confirm_draws < 0:
            raise ConfigError("cw-l2 needs learning_rate > 0, initial_const > 0, confidence >= 0 and confirm_draws >= 0")
        lo, hi = float(self.clip[0]), float(self.clip[1])
        n = x.shape[0]
        dev = x.device
        classes = criterion.attack_classes
        targeted = criterion.targeted
        draws = confirm_draws(model, p.confirm_draws)
        ok = functools.partial(cw_success, confidence=p.confidence)

        def tanh_box(w: torch.Tensor) -> torch.Tensor:
            return lo + (hi - lo) * (torch.tanh(w) + 1.0) * 0.5

        w0 = torch.atanh((((x - lo) / (hi - lo)) * 2.0 - 1.0).clamp(-1.0, 1.0) * _TANH_SCALE)
        # the tanh round trip moves every pixel by up to 5e-7 of the range: measure the change from
        # w0 instead, so pixels the attack leaves alone come back exact (an honest L0); the clip
        # that offset can need passes tanh's gradient straight through (a pixel on a bound still moves)
        offset = x - tanh_box(w0)

        def from_w(w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            v = tanh_box(w) + offset[idx]
            return v + (v.clamp(lo, hi) - v).detach()

        best_l2 = torch.full((n,), float("inf"), device=dev)
        best_adv = x.clone()
        with torch.no_grad():
            clean_adv = settled(model, x, criterion, model(x), draws, ok)
        best_l2[clean_adv] = 0.0

        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), float("inf"), device=dev)
        const = torch.full((n,), float(p.initial_const), device=dev)
        todo = ~clean_adv  # samples that still take part in the search
        w_last = w0.clone()
        check_every = max(p.max_iter // 10, 5)  # Adam's loss is noisy step to step: judge over >= 5
        beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
        # per-sample step decay, counted from the sample's first success
        decay_steps = float(max((p.binary_search_steps - 1) * p.max_iter, p.max_iter))
        refined = torch.zeros(n, device=dev)  # steps taken since the sample first succeeded
        ever = clean_adv.clone()

        for _ in range(p.binary_search_steps):
            rows = todo.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            w = (w_last if p.warm_start else w0)[rows].clone()
            m = torch.zeros_like(w)
            v = torch.zeros_like(w)
            x_r, cls_r, c_r = x[rows], classes[rows], const[rows]
            crit_r = criterion.subset(rows)
            succ_round = torch.zeros(rows.numel(), dtype=torch.bool, device=dev)
            prev = torch.full((rows.numel(),), float("inf"), device=dev)
            live = torch.arange(rows.numel(), device=dev)  # positions within ``rows``
            for it in range(p.max_iter):
                wl = w[live].requires_grad_(True)
                xl = from_w(wl, rows[live])
                logits = model(xl)
                l2sq = (xl - x_r[live]).flatten(1).pow(2).sum(1)
                margin = cw_margin(logits, cls_r[live], targeted)
                loss = l2sq + c_r[live] * margin.clamp_min(-p.confidence)
                (grad,) = torch.autograd.grad(loss.sum(), wl)
                with torch.no_grad():
                    adv = crit_r.subset(live).is_adversarial(logits)
                    if p.confidence > 0:
                        adv &= margin <= -p.confidence
                    l2 = l2sq.sqrt()
                    glob = rows[live]
                    # confirm only the hits that matter: a new best, or a round's first success
                    ask = adv & ((l2 < best_l2[glob]) | ~succ_round[live])
                    adv &= ~refuted(model, xl.detach(), crit_r.subset(live), ask, draws, ok)
                    succ_round[live] |= adv
                    better = adv & (l2 < best_l2[glob])
                    if bool(better.any()):
                        gb = glob[better]
                        best_l2[gb] = l2[better]
                        best_adv[gb] = xl.detach()[better]
                    # Adam on the live rows (the step count is shared: rows only ever leave)
                    t = it + 1
                    ml = beta1 * m[live] + (1 - beta1) * grad
                    vl = beta2 * v[live] + (1 - beta2) * grad * grad
                    m[live], v[live] = ml, vl
                    ever[glob] |= adv
                    refined[glob] += ever[glob].float()
                    lr = p.learning_rate * p.final_lr_ratio ** (refined[glob] / decay_steps).clamp_max(1.0)
                    step = lr.view(-1, *([1] * (ml.dim() - 1))) * (ml / (1 - beta1**t)) / ((vl / (1 - beta2**t)).sqrt() + adam_eps)
                    w[live] = wl.detach() - step
                    if p.abort_early and (it + 1) % check_every == 0:
                        keep = loss.detach() <= prev[live] * 0.9999
                        prev[live] = loss.detach()
                        live = live[keep]
                        if live.numel() == 0:
                            break
            with torch.no_grad():
                w_last[rows] = w
                s_glob = rows[succ_round]
                f_glob = rows[~succ_round]
                upper[s_glob] = torch.minimum(upper[s_glob], const[s_glob])
                lower[f_glob] = torch.maximum(lower[f_glob], const[f_glob])
                bracketed = torch.isfinite(upper)
                const = torch.where(bracketed, (lower + upper) * 0.5, const * 10.0)
                if p.abort_early:
                    narrow = bracketed & ((upper - lower) <= p.const_tolerance * upper)
                    todo &= ~narrow
                todo &= const < 1e10
        # no success and no bracket on c: the search was still raising c when its rounds ran out
        self.search_exhausted += int((~torch.isfinite(best_l2) & ~torch.isfinite(upper)).sum())
        return best_adv


@dataclass(frozen=True)
class ArtCWL2Params(AttackParams):
    """ART ``CarliniL2Method`` parameters (ART's defaults)."""

    confidence: float = 0.0
    """kappa."""
    learning_rate: float = 0.01
    """ART default."""
    binary_search_steps: int = 10
    """ART default."""
    max_iter: int = 10
    """ART default (ten steps per round: fast to configure, weak and still slow in ART)."""
    initial_const: float = 0.01
    """ART default."""
    max_halving: int = 5
    """ART's line-search halvings per step."""
    max_doubling: int = 5
    """ART's line-search doublings per step."""


class ArtCWL2(ArtAttack):
    """ART's ``CarliniL2Method`` (reference backend for ``cw-l2``).

    Paper: Carlini & Wagner 2017, https://arxiv.org/abs/1608.04644. Distance measure: L2.
    ART optimises per batch in numpy with a line search. On the MNIST LeNet-5 (two CPU threads,
    ``bench/results/attack_bench.md``) it takes about 0.5 s per image at its defaults (10 x 10
    steps, median L2 2.66) and 2.6 s at :class:`CWL2`'s budget (9 x 50, median L2 2.23, where
    :class:`CWL2` finds 1.18 on the same images, 23x faster per image).

    Arguments: see :class:`ArtCWL2Params` (ART's defaults). Shapes as :class:`CWL2`.

    Examples::
        >>> out = ArtCWL2().generate(model, images, labels)
    """

    name = "cw-l2"
    kind = AttackKind.MINIMIZATION
    norms = (Norm.L2,)
    supports_targeted = True
    supports_untargeted = True
    needs_gradients = True
    Params = ArtCWL2Params

    def build(self, classifier: Any, targeted: bool, batch_size: int) -> Any:
        from art.attacks.evasion import CarliniL2Method

        p = self.params
        assert isinstance(p, ArtCWL2Params)
        return CarliniL2Method(
            classifier,
            confidence=p.confidence,
            targeted=targeted,
            learning_rate=p.learning_rate,
            binary_search_steps=p.binary_search_steps,
            max_iter=p.max_iter,
            initial_const=p.initial_const,
            max_halving=p.max_halving,
            max_doubling=p.max_doubling,
            batch_size=batch_size,
            verbose=False,
        )
