"""Projected Gradient Descent with random start and restarts (Madry et al.), batched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robaudit.attacks._losses import LossName, attack_loss, loss_and_input_grad
from robaudit.attacks._steps import best_of_restarts, ascent_step, project, random_init
from robaudit.attacks.base import Attack, AttackKind, AttackParams, Criterion, Norm, confirm_draws, refuted
from robaudit.attacks.fgsm import DEFAULT_EPS, ArtFixedEpsAttack, art_norm
from robaudit.errors import ConfigError


@dataclass(frozen=True)
class PGDParams(AttackParams):
    steps: int = 40
    """Iterations per restart (PGD-40, as in Madry et al.'s MNIST evaluation)."""
    rel_stepsize: float = 0.0
    """Step size as a fraction of ``eps``. 0 (default) picks ``2.5 / steps``, the rule of Madry
    et al. (Appendix of the paper): 2.5 * eps / steps is enough to cross the ball twice from
    the random start, i.e. eps/16 for 40 steps."""
    restarts: int = 1
    """Random restarts. Each further restart runs only on samples no earlier restart broke;
    the result is any successful restart's point, else the highest-loss final iterate."""
    random_start: bool = True
    """Start from a uniform point in the eps-ball; ``False`` starts at ``x`` (BIM-like)."""
    loss: str = "ce"
    """Objective to maximise: ``ce``, ``margin`` or ``dlr`` (see ``robaudit.attacks._losses``)."""
    early_stop: bool = False
    """``False`` (default): a fixed budget of ``steps`` passes per sample and restart, as in the
    study protocol. ``True``: a sample stops at its first adversarial iterate; against a randomised
    model (TVM) only at one that also fools 4 fresh single draws (``base.CONFIRM_DRAWS``), since
    the gradient pass's EOT-averaged logits can call a point adversarial that a fresh draw does not."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise ConfigError(f"restarts must be >= 1, got {self.restarts}")
        if self.rel_stepsize < 0:
            raise ConfigError(f"rel_stepsize must be >= 0 (0 = 2.5/steps), got {self.rel_stepsize}")
        LossName.parse(self.loss)

    @property
    def step_fraction(self) -> float:
        """The step size actually used, as a fraction of eps."""
        return self.rel_stepsize if self.rel_stepsize > 0 else 2.5 / self.steps


class PGD(Attack):
    r"""PGD in the paper 'Towards Deep Learning Models Resistant to Adversarial Attacks'
    (Madry et al., 2018) [https://arxiv.org/abs/1706.06083].

    From a uniform random point in the eps-ball, takes ``steps`` steepest-ascent steps of the
    loss (sign of the gradient for Linf, normalised gradient for L2), projecting onto the ball
    and the valid range after each. A sample counts as broken if any evaluated iterate was
    adversarial; its output is then its latest adversarial iterate (the final one when the
    final one is adversarial). Otherwise it is the final iterate of the restart with the
    highest loss. Further restarts run only on samples not yet broken.

    Cost per sample and restart: ``steps`` forward+backward passes and one forward pass that
    checks the last iterate (fewer with ``early_stop``).

    Distance Measure : Linf (default), L2

    Arguments:
        params (PGDParams):
            steps (int): iterations per restart. (Default: 40)
            rel_stepsize (float): step size / eps; 0 means 2.5 / steps. (Default: 0 -> eps/16)
            restarts (int): random restarts. (Default: 1)
            random_start (bool): uniform start in the ball. (Default: True)
            loss (str): ``ce``, ``margin`` or ``dlr``. (Default: ``ce``)
            early_stop (bool): per-sample early exit. (Default: False)
        norm (Norm): ``Norm.LINF`` or ``Norm.L2``. (Default: ``Norm.LINF``)
        eps (float): maximum perturbation. (Default: 8/255 for Linf, 0.5 for L2)

    Shape:
        - x: :math:`(N, C, H, W)` inside ``clip`` (default [0, 1]).
        - labels, targets: :math:`(N)` class indices.
        - output ``AttackOutput.x_adv``: :math:`(N, C, H, W)`, on the CPU.

    Examples::
        >>> attack = PGD(PGDParams(steps=40, restarts=2), norm=Norm.LINF, eps=0.3)
        >>> out = attack.generate(model, x, labels, seed=0)
        >>> (model(out.x_adv).argmax(1) != labels).float().mean()
    """

    name = "pgd"
    kind = AttackKind.FIXED_EPS
    norms = (Norm.LINF, Norm.L2)
    default_eps = DEFAULT_EPS
    needs_gradients = True
    Params = PGDParams

    def run(self, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> torch.Tensor:
        p: PGDParams = self.params  # type: ignore[assignment]
        eps = float(self.eps or 0.0)
        if eps == 0.0 or x.shape[0] == 0:
            return x.clone()
        loss = LossName.parse(p.loss)
        return best_of_restarts(x, p.restarts, lambda idx: self._one_run(
            model, x[idx], criterion.subset(idx), loss, eps, generator))

    def _one_run(self, model: torch.nn.Module, x0: torch.Tensor, crit: Criterion, loss: LossName, eps: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One restart: ``(output point, broken?, final loss)`` per sample."""
        p: PGDParams = self.params  # type: ignore[assignment]
        step = p.step_fraction * eps
        x_k = random_init(x0, eps, self.norm, generator, self.clip) if p.random_start else x0.clone()
        found = torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)
        x_found = x_k.clone()
        active = torch.arange(x0.shape[0], device=x0.device)
        draws = confirm_draws(model) if p.early_stop else 0
        for _ in range(p.steps):
            c_a = crit.subset(active)
            x_a = x_k[active]
            logits, _, grad = loss_and_input_grad(model, x_a, c_a, loss)
            adv = c_a.is_adversarial(logits)
            if draws:  # early exit: the EOT-averaged hit must hold on fresh single draws too
                adv &= ~refuted(model, x_a, c_a, adv, draws)
            found[active[adv]] = True
            x_found[active[adv]] = x_a[adv]
            if p.early_stop and bool(adv.any()):
                keep = ~adv
                active, x_a, grad = active[keep], x_a[keep], grad[keep]
                if active.numel() == 0:
                    break
            x_k[active] = project(x0[active], ascent_step(x_a, grad, step, self.norm), eps, self.norm, self.clip)
        final_loss = torch.full((x0.shape[0],), torch.inf, device=x0.device)
        if active.numel():
            with torch.no_grad():
                c_a = crit.subset(active)
                logits = model(x_k[active])
                adv = c_a.is_adversarial(logits)
                final_loss[active] = attack_loss(loss, logits, c_a).float()
            found[active[adv]] = True
            x_found[active[adv]] = x_k[active[adv]]
        return torch.where(found.view(-1, *([1] * (x0.dim() - 1))), x_found, x_k), found, final_loss


class ArtPGD(ArtFixedEpsAttack):
    """ART's ``ProjectedGradientDescent`` with :class:`PGD`'s ``steps``, step size, norm and
    ``eps`` (reference backend). ``restarts`` maps to ``num_random_init`` (0 when
    ``random_start`` is off); ART keeps a successful restart like robaudit does. ART has no
    per-sample early exit and only the cross-entropy loss: ``early_stop`` and ``loss`` are
    ignored here.

    Examples::
        >>> out = ArtPGD(PGDParams(steps=40), eps=0.3).generate(model, x, labels)
    """

    name = "pgd"
    Params = PGDParams

    def build(self, classifier: Any, targeted: bool, batch_size: int) -> Any:
        from art.attacks.evasion import ProjectedGradientDescent

        p: PGDParams = self.params  # type: ignore[assignment]
        eps = float(self.eps or 0.0)
        return ProjectedGradientDescent(classifier, norm=art_norm(self.norm), eps=eps, eps_step=p.step_fraction * eps,
                                        max_iter=p.steps, targeted=targeted,
                                        num_random_init=p.restarts if p.random_start else 0,
                                        batch_size=batch_size, verbose=False)
