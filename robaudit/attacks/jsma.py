"""Jacobian-based Saliency Map Attack (JSMA): a batched PyTorch version and ART's reference."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from robaudit.attacks._art import ArtAttack
from robaudit.attacks.base import Attack, AttackKind, AttackParams, Criterion, Norm, is_randomized, refuted, settled
from robaudit.errors import ConfigError

_UNTARGETED_VARIANTS = ("saliency", "runner-up")


@dataclass(frozen=True)
class JSMAParams(AttackParams):
    """Parameters of :class:`JSMA` and :class:`ArtJSMA`."""

    theta: float = 1.0
    """Change applied to each selected feature per step, as a fraction of the clip range.
    Positive increases features (the paper's setting); ``1.0`` saturates a feature in one step."""
    gamma: float = 0.1
    """L0 budget: the largest fraction of input features that may be changed."""
    untargeted_variant: str = "saliency"
    """Untargeted mode (torch backend only): ``saliency`` uses the untargeted saliency map (push the
    other classes' logits up and the true class's down); ``runner-up`` targets each image's second
    most likely clean class. Both stop at any misclassification. On 50 MNIST test images with the
    shared LeNet-5 both reach 100 %, ``saliency`` with 1.8 % of pixels changed on average against
    4.2 % for ``runner-up``, hence the default."""
    pair_chunk: int = 1 << 22
    """Most pair-saliency entries held in memory at once (torch backend): whole images while one
    image's features x features map fits, else blocks of it (two such maps, float32, are live)."""
    confirm_draws: int = 4
    """Torch backend, against a randomised model only (a stack with TVM): an image stops only once
    its success also holds on this many fresh single draws; otherwise it keeps changing features
    (on the demo digits behind TVM, next-class JSMA's examples hit the target on a fresh draw 17%
    of the time without this). 0 = off."""


def _check(p: JSMAParams) -> None:
    if p.theta == 0 or not -1.0 <= p.theta <= 1.0:
        raise ConfigError(f"jsma: theta must be in [-1, 0) or (0, 1], got {p.theta}")
    if not 0.0 < p.gamma <= 1.0:
        raise ConfigError(f"jsma: gamma must be in (0, 1], got {p.gamma}")
    if p.untargeted_variant not in _UNTARGETED_VARIANTS:
        raise ConfigError(f"jsma: untargeted_variant must be one of {', '.join(_UNTARGETED_VARIANTS)}, "
                          f"got {p.untargeted_variant!r}")
    if p.pair_chunk < 1:
        raise ConfigError(f"jsma: pair_chunk must be >= 1, got {p.pair_chunk}")
    if p.confirm_draws < 0:
        raise ConfigError(f"jsma: confirm_draws must be >= 0, got {p.confirm_draws}")


class JSMA(Attack):
    r"""JSMA from "The Limitations of Deep Learning in Adversarial Settings" (Papernot et al., 2016),
    [https://arxiv.org/abs/1511.07528], batched over images in PyTorch.

    Distance Measure : L0

    Each step computes the forward derivative (Jacobian of the logits) of every live image, scores
    every *pair* of features still in the search domain with the saliency map
    ``S(p, q) = a_pq * |b_pq|`` if ``a_pq > 0`` and ``b_pq < 0`` (else 0), where ``a_pq`` is the
    gradient of the target logit summed over ``p, q`` and ``b_pq`` the same for the sum of the other
    logits, and moves the best pair by ``theta`` (clipped). A feature leaves the domain when it
    reaches the clip bound. When no pair satisfies both sign conditions the pair maximising
    ``a_pq - b_pq`` is taken instead, so an image never stalls while budget is left. An image stops
    as soon as it is adversarial or when one more pair could exceed ``gamma`` changed features.

    Untargeted (the paper is targeted only): by default the untargeted saliency map, i.e. the same
    formula with the sum of the other logits in the role of the target and the true class's logit
    in the role of "others"; ``untargeted_variant="runner-up"`` instead targets each image's second
    most likely clean class (as Foolbox does). Either stops at *any* misclassification.

    Arguments:
        theta (float): change per selected feature, fraction of the clip range. (Default: 1.0)
        gamma (float): largest fraction of features changed (the L0 budget). (Default: 0.1)
        untargeted_variant (str): ``saliency`` or ``runner-up``. (Default: ``saliency``)
        pair_chunk (int): memory bound on the pair-saliency tensor. (Default: 2**22)
        confirm_draws (int): fresh draws a success must also hold on, against a randomised
            model only. (Default: 4)

    Cost: per step one forward and two backward passes per live image; at most
    ``floor(gamma * n / 2)`` steps for ``theta = 1`` (n features). Memory: two pair maps of about
    ``pair_chunk`` floats (16 MB each at the default), whatever the image size: whole images while
    one image's ``n**2`` map fits (MNIST 2.4 MB, CIFAR-10 38 MB: split), else blocks of one image's
    map. Time grows as ``n**3`` per image (``n/2`` steps over ``n**2`` pairs): a 64 x 64 RGB image
    is about 100 times a CIFAR-10 one.

    Shape:
        - x: (N, C, H, W) in ``clip``. - labels, targets: (N,). - output: (N, C, H, W).

    Examples::
        >>> attack = JSMA(JSMA.Params(gamma=0.1))
        >>> out = attack.generate(model, x, labels, targets)
        >>> changed = (out.x_adv != x).flatten(1).float().mean(1)  # <= gamma
    """

    name: ClassVar[str] = "jsma"
    kind: ClassVar[AttackKind] = AttackKind.MINIMIZATION
    norms: ClassVar[tuple[Norm, ...]] = (Norm.L0,)
    needs_gradients: ClassVar[bool] = True
    Params: ClassVar[type[AttackParams]] = JSMAParams

    def run(self, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> torch.Tensor:
        p = self.params
        assert isinstance(p, JSMAParams)
        _check(p)
        lo, hi = float(self.clip[0]), float(self.clip[1])
        n_img = x.shape[0]
        shape = x.shape[1:]
        n = int(np.prod(shape))
        flat = x.detach().flatten(1).clone()
        increase = p.theta > 0
        step = p.theta * (hi - lo)
        sign = 1.0 if increase else -1.0
        budget = int(math.floor(p.gamma * n))
        steps_per_feature = int(math.ceil(1.0 / abs(p.theta)))
        max_steps = (budget // 2) * steps_per_feature

        draws = p.confirm_draws if is_randomized(model) else 0
        with torch.no_grad():
            clean = model(x)
        num_classes = clean.shape[1]
        swap = False
        if criterion.targets is not None:
            cls = criterion.targets
        elif p.untargeted_variant == "runner-up":
            masked = clean.detach().clone()
            masked[torch.arange(n_img, device=x.device), criterion.labels] = float("-inf")
            cls = masked.argmax(dim=1)
        else:
            cls, swap = criterion.labels, True

        domain = flat < hi if increase else flat > lo
        changed = torch.zeros_like(domain)
        active = ~settled(model, x, criterion, clean, draws)
        for _ in range(max_steps):
            active &= (changed.sum(dim=1) + 2 <= budget) & (domain.sum(dim=1) >= 2)
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xi = flat[idx].view(-1, *shape).requires_grad_(True)
            with torch.enable_grad():
                logits = model(xi)
                done = criterion.subset(idx).is_adversarial(logits.detach())
                done &= ~refuted(model, xi.detach(), criterion.subset(idx), done, draws)
                onehot = torch.nn.functional.one_hot(cls[idx], num_classes).to(logits.dtype)
                keep = (~done).to(logits.dtype).unsqueeze(1)
                z_t = (logits * onehot * keep).sum()
                z_o = (logits * (1 - onehot) * keep).sum()
                g_t = torch.autograd.grad(z_t, xi, retain_graph=True)[0].flatten(1)
                g_o = torch.autograd.grad(z_o, xi)[0].flatten(1)
            active[idx[done]] = False
            live = ~done
            if not live.any():
                continue
            idx, g_t, g_o = idx[live], g_t[live], g_o[live]
            alpha, beta = (g_o, g_t) if swap else (g_t, g_o)
            first, second = self._select(sign * alpha, sign * beta, domain[idx], p.pair_chunk)
            ok = first >= 0
            active[idx[~ok]] = False
            idx, first, second = idx[ok], first[ok], second[ok]
            for feat in (first, second):
                flat[idx, feat] = (flat[idx, feat] + step).clamp(lo, hi)
                changed[idx, feat] = True
            domain[idx] = flat[idx] < hi if increase else flat[idx] > lo
        # the L0 budget is a hard bound: features untouched by the attack are bit-identical to x
        return flat.view_as(x)

    @staticmethod
    def _select(alpha: torch.Tensor, beta: torch.Tensor, domain: torch.Tensor,
                pair_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Best feature pair per row by the saliency map; ``-1`` where the domain has < 2 features.

        ``relu(a_pq) * min(b_pq, 0)`` is ``-S(p, q)`` where both sign conditions hold and 0
        elsewhere, so the most negative entry is the most salient pair. Features outside the
        domain get ``a = -inf`` (their pairs score 0); the diagonal (p = q) is zeroed.
        """
        rows, n = alpha.shape
        neg_inf = torch.tensor(float("-inf"), device=alpha.device, dtype=alpha.dtype)
        a_dom = torch.where(domain, alpha, neg_inf)

        def salient(a: torch.Tensor, b: torch.Tensor, p0: int, p1: int) -> torch.Tensor:
            """``-S(p, q)`` for p in [p0, p1) and every q: shape (rows, p1 - p0, n)."""
            score = a[:, p0:p1].unsqueeze(2) + a.unsqueeze(1)
            score.clamp_(min=0)
            return score.mul_((b[:, p0:p1].unsqueeze(2) + b.unsqueeze(1)).clamp_(max=0))

        val, pos = _best_pair(salient, a_dom, beta, pair_chunk, largest=False)
        stuck = (val >= 0).nonzero().squeeze(1)
        for r in stuck.tolist():  # rare: no pair meets both sign conditions
            d = domain[r : r + 1]

            def fallback(a: torch.Tensor, b: torch.Tensor, p0: int, p1: int, d: torch.Tensor = d) -> torch.Tensor:
                fb = (a[:, p0:p1].unsqueeze(2) + a.unsqueeze(1)) - (b[:, p0:p1].unsqueeze(2) + b.unsqueeze(1))
                return torch.where(d[:, p0:p1].unsqueeze(2) & d.unsqueeze(1), fb, neg_inf)

            fval, fpos = _best_pair(fallback, alpha[r : r + 1], beta[r : r + 1], pair_chunk, largest=True)
            pos[r] = fpos[0] if torch.isfinite(fval[0]) else -1
        first = torch.where(pos >= 0, pos // n, pos)
        return first, pos.remainder(n)


def _best_pair(score: Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor], a: torch.Tensor,
               b: torch.Tensor, budget: int, *, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``a``/``b`` (rows, n): the smallest (``largest``: greatest) entry of the pair map
    ``score`` over p != q and its flat position ``p * n + q``, with at most about ``budget`` pair
    entries in memory at once: whole rows at a time while an n x n map fits, else blocks of p for
    one row (a 64 x 64 RGB image has 12288**2 pairs, 600 MB per map). The diagonal scores 0 for a
    minimum and ``-inf`` for a maximum; ties go to the first position, as one ``min`` over the map."""
    rows, n = a.shape
    per_row = max(1, budget // (n * n))
    block = n if n * n <= budget else max(1, budget // n)
    fill = float("-inf") if largest else 0.0
    best_val = torch.full((rows,), fill if largest else float("inf"), device=a.device, dtype=a.dtype)
    best_pos = torch.zeros(rows, dtype=torch.long, device=a.device)
    for s in range(0, rows, per_row):
        ar, br = a[s : s + per_row], b[s : s + per_row]
        for p0 in range(0, n, block):
            p1 = min(n, p0 + block)
            sc = score(ar, br, p0, p1)
            i = torch.arange(p1 - p0, device=a.device)
            sc[:, i, p0 + i] = fill
            flat = sc.flatten(1)
            val, pos = flat.max(dim=1) if largest else flat.min(dim=1)
            old = best_val[s : s + per_row]
            take = val > old if largest else val < old
            if p0 == 0:  # the first block decides ties against the initial value
                take = torch.ones_like(take)
            best_val[s : s + per_row] = torch.where(take, val, old)
            best_pos[s : s + per_row] = torch.where(take, pos + p0 * n, best_pos[s : s + per_row])
    return best_val, best_pos


class ArtJSMA(ArtAttack):
    r"""ART's ``SaliencyMapMethod`` (Papernot et al., 2016, [https://arxiv.org/abs/1511.07528]),
    the reference for :class:`JSMA`.

    Distance Measure : L0

    ART's version scores single features and moves the two best ones per step (not the pair map),
    and checks the ``gamma`` budget after a step, so it may exceed ``gamma`` by one pair.
    Untargeted: ART has no untargeted mode; given no ``y`` it draws a *random* target class
    different from the prediction for each image (seeded from robaudit's generator), so its
    untargeted numbers are random-target numbers, not comparable with :class:`JSMA`'s untargeted mode.

    Arguments: ``theta`` (Default: 1.0) and ``gamma`` (Default: 0.1) as in :class:`JSMA`;
    ``untargeted_variant`` and ``pair_chunk`` are ignored.

    Examples::
        >>> out = ArtJSMA().generate(model, x, labels, targets)
    """

    name: ClassVar[str] = "jsma"
    kind: ClassVar[AttackKind] = AttackKind.MINIMIZATION
    norms: ClassVar[tuple[Norm, ...]] = (Norm.L0,)
    needs_gradients: ClassVar[bool] = True
    Params: ClassVar[type[AttackParams]] = JSMAParams

    def build(self, classifier: Any, targeted: bool, batch_size: int) -> Any:
        from art.attacks.evasion import SaliencyMapMethod

        p = self.params
        assert isinstance(p, JSMAParams)
        _check(p)
        return SaliencyMapMethod(classifier, theta=p.theta, gamma=p.gamma, batch_size=batch_size, verbose=False)

    def art_labels(self, criterion: Criterion, num_classes: int) -> np.ndarray | None:  # type: ignore[override]
        """Targets when targeted; ``None`` otherwise (ART would read labels as targets)."""
        if criterion.targets is None:
            return None
        return criterion.targets.cpu().numpy().astype(np.int64)
