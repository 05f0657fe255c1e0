"""Basic Iterative Method (iterative FGSM without random start), batched with per-sample early exit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robaudit.attacks._losses import LossName, loss_and_input_grad
from robaudit.attacks._steps import ascent_step, project
from robaudit.attacks.base import Attack, AttackKind, AttackParams, Criterion, Norm, confirm_draws, refuted
from robaudit.attacks.fgsm import DEFAULT_EPS, ArtFixedEpsAttack, art_norm
from robaudit.errors import ConfigError


@dataclass(frozen=True)
class BIMParams(AttackParams):
    steps: int = 40
    """Number of iterations (ART's ``max_iter``)."""
    rel_stepsize: float = 0.1
    """Step size as a fraction of ``eps`` (ART's ``eps_step = rel_stepsize * eps``). With the
    default 40 steps of eps/10 the iterate can reach the ball's boundary within 10 steps and
    then move along it."""
    loss: str = "ce"
    """Objective to maximise: ``ce``, ``margin`` or ``dlr`` (see ``robaudit.attacks._losses``)."""
    early_stop: bool = True
    """Stop stepping a sample as soon as it is adversarial: it returns its first adversarial
    iterate and costs no further passes. Against a randomised model (TVM) a hit of the gradient
    pass (an EOT average) must also fool 4 fresh single draws (``base.CONFIRM_DRAWS``, one
    no-grad forward each) before the sample stops. ``False`` runs every sample for all ``steps``."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.rel_stepsize <= 0:
            raise ConfigError(f"rel_stepsize must be > 0, got {self.rel_stepsize}")
        LossName.parse(self.loss)


class BIM(Attack):
    r"""BIM in the paper 'Adversarial Examples in the Physical World' (Kurakin et al., 2017)
    [https://arxiv.org/abs/1607.02533], also called I-FGSM.

    Iterates FGSM steps of size ``rel_stepsize * eps`` from the clean input (no random start),
    projecting onto the eps-ball and the valid range after every step. With ``early_stop`` (the
    default) each sample stops at its first adversarial iterate, and only the still-robust
    subset of the batch is sent through the model, so already-broken images cost nothing more.
    A sample costs one forward and one backward pass per step it takes, plus the one pass that
    finds it adversarial. Against a randomised model a hit stops a sample only when it also fools
    ``CONFIRM_DRAWS`` (4) fresh single draws (up to 4 more forward passes per hit), as the
    minimisation attacks confirm theirs.

    Distance Measure : Linf (default), L2 (normalised-gradient steps)

    Arguments:
        params (BIM.Params):
            steps (int): number of iterations. (Default: 40)
            rel_stepsize (float): step size as a fraction of eps. (Default: 0.1)
            loss (str): ``ce``, ``margin`` or ``dlr``. (Default: ``ce``)
            early_stop (bool): per-sample early exit. (Default: True)
        norm (Norm): ``Norm.LINF`` or ``Norm.L2``. (Default: ``Norm.LINF``)
        eps (float): maximum perturbation. (Default: 8/255 for Linf, 0.5 for L2)

    Shape:
        - x: :math:`(N, C, H, W)` inside ``clip`` (default [0, 1]).
        - labels, targets: :math:`(N)` class indices.
        - output ``AttackOutput.x_adv``: :math:`(N, C, H, W)`, on the CPU.

    Examples::
        >>> attack = BIM(BIM.Params(steps=20, rel_stepsize=0.1), norm=Norm.LINF, eps=0.3)
        >>> out = attack.generate(model, x, labels)
        >>> out.backward_passes <= 20 * len(x)   # broken samples stop costing passes
    """

    name = "bim"
    kind = AttackKind.FIXED_EPS
    norms = (Norm.LINF, Norm.L2)
    default_eps = DEFAULT_EPS
    needs_gradients = True
    Params = BIMParams

    def run(self, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> torch.Tensor:
        p: BIMParams = self.params  # type: ignore[assignment]
        eps = float(self.eps or 0.0)
        x_adv = x.clone()
        if eps == 0.0 or x.shape[0] == 0:
            return x_adv
        loss = LossName.parse(p.loss)
        step = p.rel_stepsize * eps
        if not p.early_stop:
            for _ in range(p.steps):
                _, _, grad = loss_and_input_grad(model, x_adv, criterion, loss)
                x_adv = project(x, ascent_step(x_adv, grad, step, self.norm), eps, self.norm, self.clip)
            return x_adv
        draws = confirm_draws(model)
        active = torch.arange(x.shape[0], device=x.device)
        for _ in range(p.steps):
            crit = criterion.subset(active)
            xa = x_adv[active]
            logits, _, grad = loss_and_input_grad(model, xa, crit, loss)
            hit = crit.is_adversarial(logits)
            if draws:  # an EOT-averaged hit must hold on fresh single draws too
                hit &= ~refuted(model, xa, crit, hit, draws)
            still = ~hit
            if not bool(still.all()):
                active, xa, grad = active[still], xa[still], grad[still]
                if active.numel() == 0:
                    break
            x_adv[active] = project(x[active], ascent_step(xa, grad, step, self.norm), eps, self.norm, self.clip)
        return x_adv


class ArtBIM(ArtFixedEpsAttack):
    """ART's ``BasicIterativeMethod`` (Linf) with :class:`BIM`'s ``steps`` and ``rel_stepsize``
    (reference backend). ART has no L2 BIM, so L2 uses ART's ``ProjectedGradientDescent`` with
    ``norm=2`` and no random start, which is the same algorithm. ART has no per-sample early
    exit and only the cross-entropy loss: ``early_stop`` and ``loss`` are ignored here.

    Examples::
        >>> out = ArtBIM(BIM.Params(steps=20), eps=0.3).generate(model, x, labels)
    """

    name = "bim"
    Params = BIMParams

    def build(self, classifier: Any, targeted: bool, batch_size: int) -> Any:
        p: BIMParams = self.params  # type: ignore[assignment]
        eps = float(self.eps or 0.0)
        if self.norm is Norm.LINF:
            from art.attacks.evasion import BasicIterativeMethod

            return BasicIterativeMethod(classifier, eps=eps, eps_step=p.rel_stepsize * eps, max_iter=p.steps,
                                        targeted=targeted, batch_size=batch_size, verbose=False)
        from art.attacks.evasion import ProjectedGradientDescent

        return ProjectedGradientDescent(classifier, norm=art_norm(self.norm), eps=eps, eps_step=p.rel_stepsize * eps,
                                        max_iter=p.steps, targeted=targeted, num_random_init=0,
                                        batch_size=batch_size, verbose=False)
