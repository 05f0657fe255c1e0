"""Fast Gradient Sign Method (one step), robaudit's batched version and ART's reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from robaudit.attacks._art import ArtAttack
from robaudit.attacks._losses import LossName, loss_and_input_grad
from robaudit.attacks._steps import ascent_step, project
from robaudit.attacks.base import Attack, AttackKind, AttackParams, Criterion, Norm

DEFAULT_EPS: dict[Norm, float] = {Norm.LINF: 8 / 255, Norm.L2: 0.5}
"""Default budgets of the fixed-eps gradient attacks for inputs in [0, 1] (the common CIFAR-10
benchmark values; MNIST studies usually pass ``--eps 0.3`` for Linf and ``--eps 2`` for L2)."""


@dataclass(frozen=True)
class FGSMParams(AttackParams):
    """FGSM has no parameters besides the budget (``eps``) and the norm."""


def art_norm(norm: Norm) -> float:
    """ART's spelling of a norm (``np.inf`` or ``2``)."""
    return np.inf if norm is Norm.LINF else 2.0


class FGSM(Attack):
    r"""FGSM in the paper 'Explaining and Harnessing Adversarial Examples' (Goodfellow et al., 2015)
    [https://arxiv.org/abs/1412.6572]; the L2 variant is the fast gradient method (FGM).

    One step of size ``eps`` along the steepest-ascent direction of the cross-entropy:
    untargeted ``x + eps * sign(grad_x CE(f(x), y))``; targeted ``x - eps * sign(grad_x CE(f(x), t))``
    (a step towards the target). L2 replaces ``sign(g)`` with ``g / ||g||_2``. The result is
    clipped to the valid range.

    Distance Measure : Linf (default), L2

    Arguments:
        params (FGSMParams): none; FGSM has no parameters besides the budget.
        norm (Norm): ``Norm.LINF`` or ``Norm.L2``. (Default: ``Norm.LINF``)
        eps (float): maximum perturbation. (Default: 8/255 for Linf, 0.5 for L2)

    Cost: one forward and one backward pass per image.

    Shape:
        - x: :math:`(N, C, H, W)` inside ``clip`` (default [0, 1]).
        - labels, targets: :math:`(N)` class indices.
        - output ``AttackOutput.x_adv``: :math:`(N, C, H, W)`, on the CPU.

    Examples::
        >>> attack = FGSM(norm=Norm.LINF, eps=8 / 255)
        >>> out = attack.generate(model, x, labels)            # untargeted
        >>> out = attack.generate(model, x, labels, targets)   # targeted
        >>> out.x_adv, out.backward_passes
    """

    name = "fgsm"
    kind = AttackKind.FIXED_EPS
    norms = (Norm.LINF, Norm.L2)
    default_eps = DEFAULT_EPS
    needs_gradients = True
    Params = FGSMParams

    def run(self, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> torch.Tensor:
        eps = float(self.eps or 0.0)
        if eps == 0.0 or x.shape[0] == 0:
            return x.clone()
        _, _, grad = loss_and_input_grad(model, x, criterion, LossName.CE)
        return project(x, ascent_step(x, grad, eps, self.norm), eps, self.norm, self.clip)


class ArtFixedEpsAttack(ArtAttack):
    """Shared by the ART counterparts of the fixed-eps attacks: an ``eps`` of 0 returns the inputs
    unchanged (ART refuses a zero step size)."""

    kind = AttackKind.FIXED_EPS
    norms: ClassVar[tuple[Norm, ...]] = (Norm.LINF, Norm.L2)
    default_eps = DEFAULT_EPS
    needs_gradients = True

    def run(self, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> torch.Tensor:
        if not self.eps or x.shape[0] == 0:
            return x.clone()
        return super().run(model, x, criterion, generator)


class ArtFGSM(ArtFixedEpsAttack):
    """ART's ``FastGradientMethod`` with the same norm and ``eps`` as :class:`FGSM` (reference backend).

    Examples::
        >>> out = ArtFGSM(norm=Norm.LINF, eps=0.3).generate(model, x, labels)
    """

    name = "fgsm"
    Params = FGSMParams

    def build(self, classifier: Any, targeted: bool, batch_size: int) -> Any:
        from art.attacks.evasion import FastGradientMethod

        eps = float(self.eps or 0.0)
        return FastGradientMethod(classifier, norm=art_norm(self.norm), eps=eps, eps_step=eps,
                                  targeted=targeted, num_random_init=0, batch_size=batch_size)
