"""DeepFool: a batched torch implementation (L2 and Linf) and ART's reference (L2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robaudit.attacks._art import ArtAttack
from robaudit.attacks._losses import margin
from robaudit.attacks.base import Attack, AttackKind, AttackParams, CONFIRM_DRAWS, Criterion, Norm, confirm_draws, refuted, settled
from robaudit.errors import ConfigError


FLIP_TOL = 1e-4
"""A sample stops only once its largest other logit exceeds its label's by more than this times
max(1, its largest |logit|). With the clip range eating the overshoot, DeepFool's examples used
to stop with margins of 1e-6 on the MNIST LeNet-5, where a recomputation of the same network
(another thread count, batch size or the prepared copies of ``robaudit.models.fast``) could
undo the flip (1 of 200 did); the copies are checked to 1e-4 of the logit scale."""


@dataclass(frozen=True)
class DeepFoolParams(AttackParams):
    """Parameters of :class:`DeepFool` (the paper's values)."""

    nb_candidate: int = 10
    """Classes considered, the true class included: the top ``nb_candidate`` logits of ``x``."""
    overshoot: float = 0.02
    """The accumulated step is scaled by ``1 + overshoot`` to land past the boundary."""
    max_iter: int = 50
    """Linearisation steps per sample at most; a sample stops as soon as its label flips."""
    confirm_draws: int = CONFIRM_DRAWS
    """Against a randomised model only (a stack with TVM): a sample stops only once its flipped
    label also holds on this many fresh single draws; otherwise it keeps stepping past the
    boundary (on the adversarially trained CIFAR-10 CNN behind TVM its examples fooled a fresh
    draw 42% of the time without this). 0 = off."""


class DeepFool(Attack):
    """DeepFool, batched over samples and over candidate classes.

    Paper: Seyed-Mohsen Moosavi-Dezfooli, Alhussein Fawzi, Pascal Frossard, "DeepFool: a simple
    and accurate method to fool deep neural networks", CVPR 2016. https://arxiv.org/abs/1511.04599

    Distance measure: L2 (default) or Linf (the paper's ``p = inf`` variant). A minimisation
    attack: the result is not projected onto a ball, only kept inside ``clip``.

    Each step linearises the classifier at the current point: for every candidate class ``k``
    (the ``nb_candidate - 1`` highest logits of ``x`` other than the true class ``y``) it takes
    ``f_k = Z_k - Z_y`` and ``w_k = grad f_k`` (one backward pass per candidate on the whole
    batch, from one forward pass), picks the closest linearised boundary
    ``l = argmin_k |f_k| / ||w_k||_q`` (``q`` dual to the norm), and adds the step that reaches
    it (L2: ``(|f_l| + 1e-4 + 2 t) w_l / ||w_l||_2^2``; Linf: ``(|f_l| + 1e-4 + 2 t) sign(w_l) / ||w_l||_1``,
    ``t`` = ``FLIP_TOL`` times the logit scale)
    to the accumulated perturbation ``r``, keeping only what the clip range lets through
    (``r = clip(x + r + step) - x``: otherwise pushes on saturated pixels pile up without effect
    and stall the iterate; on the PGD-trained MNIST LeNet-5 that cut success from 83% to 66%).
    The iterate is ``clip(x + (1 + overshoot) r)``; a
    sample leaves the batch once it is misclassified by more than ``t`` (a flip by float noise
    would not survive a recomputation of the model). Untargeted only.

    Arguments (``DeepFool.Params``):
        nb_candidate (int): classes considered, true class included. Default: 10.
        overshoot (float): Default: 0.02.
        max_iter (int): Default: 50.
        confirm_draws (int): fresh draws a flip must also hold on, against a randomised model
            only. Default: 4.

    Shape:
        - x: ``(N, C, H, W)`` in ``clip``; labels ``(N,)`` int64. Output: like ``x``.

    Examples::
        >>> out = DeepFool().generate(model, images, labels)
        >>> out = DeepFool(norm=Norm.LINF).generate(model, images, labels)
    """

    name = "deepfool"
    kind = AttackKind.MINIMIZATION
    norms = (Norm.L2, Norm.LINF)
    supports_targeted = False
    supports_untargeted = True
    needs_gradients = True
    Params = DeepFoolParams

    def run(self, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> torch.Tensor:
        p = self.params
        assert isinstance(p, DeepFoolParams)
        if criterion.targeted:
            raise ConfigError("attack deepfool does not support targeted attacks")
        if p.nb_candidate < 2 or p.max_iter < 1 or p.overshoot < 0 or p.confirm_draws < 0:
            raise ConfigError("deepfool needs nb_candidate >= 2, max_iter >= 1, overshoot >= 0 and confirm_draws >= 0")
        draws = confirm_draws(model, p.confirm_draws)
        lo, hi = float(self.clip[0]), float(self.clip[1])
        labels = criterion.labels

        with torch.no_grad():
            logits0 = model(x)
        k = min(p.nb_candidate, logits0.shape[1]) - 1
        candidates = logits0.scatter(1, labels.view(-1, 1), float("-inf")).topk(k, dim=1).indices  # (N, k)

        x_adv = x.clone()
        r_tot = torch.zeros_like(x)
        active = (~settled(model, x, criterion, logits0, draws)).nonzero().squeeze(1)
        for _ in range(p.max_iter):
            if active.numel() == 0:
                break
            xa = x_adv[active].clone().requires_grad_(True)
            logits = model(xa)
            with torch.no_grad():  # a flip counts once it clears float noise (see FLIP_TOL)
                tol = FLIP_TOL * logits.detach().abs().amax(dim=1).clamp_min(1.0)
                still = ~(-margin(logits.detach(), labels[active]) > tol)  # rows not yet clearly adversarial
            # against a randomised model a flip must hold on fresh draws
            still |= refuted(model, xa.detach(), criterion.subset(active), ~still, draws)
            if not bool(still.all()):
                active = active[still]
                if active.numel() == 0:
                    break
            live = logits[still]
            tol = tol[still]
            own = live.gather(1, labels[active].view(-1, 1))  # (A, 1)
            f = live.gather(1, candidates[active]) - own  # (A, k): negative while not adversarial
            grads = [torch.autograd.grad(f[:, j].sum(), xa, retain_graph=j < k - 1)[0][still] for j in range(k)]
            with torch.no_grad():
                w = torch.stack(grads, dim=1).flatten(2)  # (A, k, D)
                fa = f.detach().abs()
                if self.norm is Norm.LINF:
                    wn = w.abs().sum(dim=2)
                else:
                    wn = w.norm(dim=2)
                dist = fa / wn.clamp_min(1e-12)
                best = dist.argmin(dim=1)
                wl = w[torch.arange(w.shape[0], device=w.device), best]  # (A, D)
                fl = fa.gather(1, best.view(-1, 1)).squeeze(1)
                wln = wn.gather(1, best.view(-1, 1)).squeeze(1).clamp_min(1e-12)
                if self.norm is Norm.LINF:
                    r = ((fl + 1e-4 + 2 * tol) / wln).view(-1, 1) * wl.sign()
                else:
                    r = ((fl + 1e-4 + 2 * tol) / wln.pow(2)).view(-1, 1) * wl
                # accumulate what the clip range lets through: a step pushing a saturated pixel
                # further out has no effect, and must not build up in r_tot (it would stall the
                # iterate short of the boundary its linearisation aimed at)
                x_a = x[active]
                r_tot[active] = (x_a + r_tot[active] + r.view(-1, *x.shape[1:])).clamp(lo, hi) - x_a
                x_adv[active] = (x_a + (1.0 + p.overshoot) * r_tot[active]).clamp(lo, hi)
        return x_adv


@dataclass(frozen=True)
class ArtDeepFoolParams(AttackParams):
    """ART ``DeepFool`` parameters (ART's defaults; ART's overshoot is ``epsilon``)."""

    max_iter: int = 100
    """ART default."""
    epsilon: float = 1e-6
    """ART's overshoot (its default; the paper uses 0.02)."""
    nb_grads: int = 10
    """Classes considered (ART default)."""


class ArtDeepFool(ArtAttack):
    """ART's ``DeepFool`` (reference backend for ``deepfool``; L2 only, untargeted).

    Paper: Moosavi-Dezfooli et al. 2016, https://arxiv.org/abs/1511.04599. Distance: L2.

    Arguments: see :class:`ArtDeepFoolParams`. Shapes as :class:`DeepFool`.

    Examples::
        >>> out = ArtDeepFool().generate(model, images, labels)
    """

    name = "deepfool"
    kind = AttackKind.MINIMIZATION
    norms = (Norm.L2,)
    supports_targeted = False
    supports_untargeted = True
    needs_gradients = True
    Params = ArtDeepFoolParams

    def build(self, classifier: Any, targeted: bool, batch_size: int) -> Any:
        from art.attacks.evasion import DeepFool as _ArtDeepFool

        if targeted:
            raise ConfigError("attack deepfool does not support targeted attacks")
        p = self.params
        assert isinstance(p, ArtDeepFoolParams)
        return _ArtDeepFool(classifier, max_iter=p.max_iter, epsilon=p.epsilon, nb_grads=p.nb_grads,
                            batch_size=batch_size, verbose=False)
