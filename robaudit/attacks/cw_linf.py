"""Carlini & Wagner Linf family: a batched torch minimisation attack and ART's reference."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from robaudit.attacks._art import ArtAttack
from robaudit.attacks.base import Attack, AttackKind, AttackParams, CONFIRM_DRAWS, Criterion, Norm, confirm_draws, refuted, settled
from robaudit.attacks.cw_l2 import cw_margin, cw_success
from robaudit.errors import ConfigError


@dataclass(frozen=True)
class CWLinfParams(AttackParams):
    """Parameters of :class:`CWLinf`. Defaults were measured on MNIST LeNet-5 (see the class doc)."""

    confidence: float = 0.0
    """kappa: the margin by which the adversarial class must win."""
    initial_eps: float = 0.1
    """First radius tried for every sample, as a fraction of the clip range ``hi - lo``."""
    search_steps: int = 10
    """Rounds of the per-sample search over eps (doubling until a success, then bisection)."""
    max_iter: int = 20
    """PGD steps per round; a sample leaves the round as soon as it is adversarial (50 steps
    found the same median radius on MNIST at 2.5 times the cost)."""
    step_size: float = 0.25
    """First PGD step as a fraction of the round's eps; it decays linearly to 0."""
    confirm_draws: int = CONFIRM_DRAWS
    """Against a randomised model only (a stack with TVM): a hit counts once it also fools this
    many fresh single draws; otherwise the search keeps radii that fooled one lucky draw (on the
    adversarially trained CIFAR-10 CNN behind TVM: 18% per-draw success without it). 0 = off."""


class CWLinf(Attack):
    """Linf minimisation in the Carlini & Wagner family: a per-sample search over eps around a
    PGD attack on the CW margin loss, fully batched.

    Paper (loss and the search): Nicholas Carlini, David Wagner, "Towards Evaluating the
    Robustness of Neural Networks", IEEE S&P 2017, https://arxiv.org/abs/1608.04644; inner
    attack: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
    ICLR 2018, https://arxiv.org/abs/1706.06083.

    Distance measure: Linf (a minimisation attack: the smallest successful radius found is the
    measurement; the result is kept inside ``clip`` and not projected further).

    Instead of CW's penalty-and-tau scheme, every sample keeps a bracket ``[lower, upper]`` on
    its smallest adversarial radius. Each round runs sign-gradient PGD inside the Linf ball of
    the sample's current radius ``eps``, maximising ``-max(m(x'), -kappa)`` with the CW logit
    margin ``m`` (untargeted ``Z_y - max_{j!=y} Z_j``, targeted ``max_{j!=t} Z_j - Z_t``),
    step ``step_size * eps`` decaying linearly, from the best adversarial found so far projected
    onto the ball (or the previous round's last iterate, or ``x`` at first). A sample stops its
    round once it is adversarial (targeted: ``argmax == target``; with kappa > 0 also by that
    margin); then ``upper`` becomes the Linf distance actually used, otherwise ``lower = eps``.
    The next radius doubles while no success is known, else bisects the bracket. The smallest
    adversarial found is returned; a sample never fooled is returned unchanged, as is an
    input that is already adversarial.

    Arguments (``CWLinf.Params``):
        confidence (float): kappa. Default: 0.
        initial_eps (float): first radius, fraction of ``hi - lo``. Default: 0.1.
        search_steps (int): rounds of the eps search. Default: 10.
        max_iter (int): PGD steps per round. Default: 20.
        step_size (float): first PGD step, fraction of eps. Default: 0.25.
        confirm_draws (int): fresh draws a hit must also fool, against a randomised model
            only. Default: 4.

    Shape:
        - x: ``(N, C, H, W)`` in ``clip``; labels, targets ``(N,)`` int64. Output: like ``x``.

    Examples::
        >>> out = CWLinf().generate(model, images, labels)
        >>> out = CWLinf().generate(model, images, labels, targets=targets)
        >>> dist = (out.x_adv - images).flatten(1).abs().amax(dim=1)
    """

    name = "cw-linf"
    kind = AttackKind.MINIMIZATION
    norms = (Norm.LINF,)
    supports_targeted = True
    supports_untargeted = True
    needs_gradients = True
    Params = CWLinfParams

    def run(self, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> torch.Tensor:
        p = self.params
        assert isinstance(p, CWLinfParams)
        if p.search_steps < 1 or p.max_iter < 1:
            raise ConfigError("cw-linf needs search_steps >= 1 and max_iter >= 1")
        if not 0 < p.initial_eps <= 1 or p.step_size <= 0 or p.confidence < 0 or p.confirm_draws < 0:
            raise ConfigError("cw-linf needs 0 < initial_eps <= 1, step_size > 0, confidence >= 0 and confirm_draws >= 0")
        lo, hi = float(self.clip[0]), float(self.clip[1])
        span = hi - lo
        n = x.shape[0]
        dev = x.device
        view = (-1,) + (1,) * (x.dim() - 1)
        classes = criterion.attack_classes
        targeted = criterion.targeted
        draws = confirm_draws(model, p.confirm_draws)
        ok = functools.partial(cw_success, confidence=p.confidence)

        with torch.no_grad():
            clean_adv = settled(model, x, criterion, model(x), draws, ok)
        best_dist = torch.where(clean_adv, 0.0, float("inf")).to(dev)
        best_adv = x.clone()
        last = x.clone()  # each sample's last iterate (start of the next round after a failure)
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), float("inf"), device=dev)
        eps = torch.full((n,), float(p.initial_eps) * span, device=dev)
        todo = ~clean_adv

        for _ in range(p.search_steps):
            rows = todo.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            x_r, e_r = x[rows], eps[rows].view(view)
            start = torch.where(torch.isfinite(best_dist[rows]).view(view), best_adv[rows], last[rows])
            xa = torch.minimum(torch.maximum(start, x_r - e_r), x_r + e_r).clamp(lo, hi)
            found = torch.zeros(rows.numel(), dtype=torch.bool, device=dev)
            live = torch.arange(rows.numel(), device=dev)
            for it in range(p.max_iter + 1):
                xl = xa[live].requires_grad_(True)
                logits = model(xl)
                crit = criterion.subset(rows[live])
                adv = cw_success(logits, crit, p.confidence)
                with torch.no_grad():
                    adv &= ~refuted(model, xl.detach(), crit, adv, draws, ok)
                    if bool(adv.any()):
                        hit = live[adv]
                        found[hit] = True
                        xa[hit] = xl.detach()[adv]
                if it == p.max_iter:
                    break
                keep = ~adv
                if not bool(keep.any()):
                    break
                margin = cw_margin(logits, classes[rows[live]], targeted).clamp_min(-p.confidence)
                (grad,) = torch.autograd.grad(margin[keep].sum(), xl)
                with torch.no_grad():
                    live = live[keep]
                    alpha = p.step_size * (1.0 - it / p.max_iter) * e_r[live]
                    x_new = xl.detach()[keep] - alpha * grad[keep].sign()
                    x_l = x_r[live]
                    e_l = e_r[live]
                    xa[live] = torch.minimum(torch.maximum(x_new, x_l - e_l), x_l + e_l).clamp(lo, hi)
            with torch.no_grad():
                last[rows] = xa
                dist = (xa - x_r).flatten(1).abs().amax(dim=1)
                better = found & (dist < best_dist[rows])
                best_dist[rows[better]] = dist[better]
                best_adv[rows[better]] = xa[better]
                s_glob, f_glob = rows[found], rows[~found]
                upper[s_glob] = torch.minimum(upper[s_glob], dist[found])
                lower[f_glob] = torch.maximum(lower[f_glob], eps[f_glob])
                bracketed = torch.isfinite(upper)
                eps = torch.where(bracketed, (lower + upper) * 0.5, (eps * 2.0).clamp_max(span))
                todo &= ~(~bracketed & (lower >= span))  # fails even with the whole range
        return best_adv


@dataclass(frozen=True)
class ArtCWLinfParams(AttackParams):
    """ART ``CarliniLInfMethod`` parameters (ART's defaults)."""

    confidence: float = 0.0
    """kappa."""
    learning_rate: float = 0.01
    """ART default."""
    max_iter: int = 10
    """ART default."""
    decrease_factor: float = 0.9
    """ART default: factor by which tau shrinks."""
    initial_const: float = 1e-5
    """ART default."""
    largest_const: float = 20.0
    """ART default."""
    const_factor: float = 2.0
    """ART default."""


class ArtCWLinf(ArtAttack):
    """ART's ``CarliniLInfMethod`` (reference backend for ``cw-linf``).

    Paper: Carlini & Wagner 2017, https://arxiv.org/abs/1608.04644. Distance: Linf.
    At its defaults it is weak (1.5% success on an easy digits model), and its targeted mode
    tests success as if untargeted, returning near-clean inputs; kept as the reference only.

    Arguments: see :class:`ArtCWLinfParams`. Shapes as :class:`CWLinf`.

    Examples::
        >>> out = ArtCWLinf().generate(model, images, labels)
    """

    name = "cw-linf"
    kind = AttackKind.MINIMIZATION
    norms = (Norm.LINF,)
    supports_targeted = True
    supports_untargeted = True
    needs_gradients = True
    Params = ArtCWLinfParams

    def build(self, classifier: Any, targeted: bool, batch_size: int) -> Any:
        from art.attacks.evasion import CarliniLInfMethod

        p = self.params
        assert isinstance(p, ArtCWLinfParams)
        return CarliniLInfMethod(
            classifier,
            confidence=p.confidence,
            targeted=targeted,
            learning_rate=p.learning_rate,
            max_iter=p.max_iter,
            decrease_factor=p.decrease_factor,
            initial_const=p.initial_const,
            largest_const=p.largest_const,
            const_factor=p.const_factor,
            batch_size=batch_size,
            verbose=False,
        )
