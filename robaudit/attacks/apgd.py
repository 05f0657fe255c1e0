"""Auto-PGD (Croce & Hein 2020): PGD with momentum and a budget-aware step-size schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from robaudit.attacks._losses import LossName, loss_and_input_grad
from robaudit.attacks._steps import best_of_restarts, ascent_step, project, random_init
from robaudit.attacks.base import Attack, AttackKind, AttackParams, Criterion, Norm, confirm_draws, refuted
from robaudit.attacks.fgsm import DEFAULT_EPS, ArtFixedEpsAttack, art_norm
from robaudit.errors import ConfigError


@dataclass(frozen=True)
class APGDParams(AttackParams):
    n_iter: int = 100
    """Iterations per restart (the paper's budget; each costs one forward and backward pass)."""
    restarts: int = 1
    """Random restarts; further restarts run only on samples no earlier restart broke."""
    loss: str = "ce"
    """``ce`` (APGD-CE) or ``dlr`` (APGD-DLR; the targeted DLR loss when targeted). ``margin``
    is accepted too."""
    momentum: float = 0.75
    """Weight ``alpha`` of the new step against the previous one (the paper's 0.75)."""
    rho: float = 0.75
    """Step-size halving threshold: halve at a checkpoint if fewer than ``rho`` of the steps
    since the previous checkpoint increased the loss (the paper's 0.75)."""
    rel_init_step: float = 2.0
    """Initial step size as a multiple of ``eps`` (the paper's 2 * eps)."""
    early_stop: bool = False
    """``False`` (default): every sample runs the full budget, as in the study protocol and the
    paper. ``True``: a sample stops costing passes at its first adversarial iterate (the same
    success rate, a fraction of the cost on models that break; the returned point is then the
    first adversarial iterate, so distances are smaller than the full budget's). Against a
    randomised model (TVM) a hit stops a sample only when it also fools 4 fresh single draws
    (``base.CONFIRM_DRAWS``): the gradient pass's logits are an EOT average of draws."""

    def __post_init__(self) -> None:
        if self.n_iter < 1:
            raise ConfigError(f"n_iter must be >= 1, got {self.n_iter}")
        if self.restarts < 1:
            raise ConfigError(f"restarts must be >= 1, got {self.restarts}")
        if not 0.0 < self.momentum <= 1.0:
            raise ConfigError(f"momentum must be in (0, 1], got {self.momentum}")
        if not 0.0 <= self.rho <= 1.0:
            raise ConfigError(f"rho must be in [0, 1], got {self.rho}")
        if self.rel_init_step <= 0:
            raise ConfigError(f"rel_init_step must be > 0, got {self.rel_init_step}")
        LossName.parse(self.loss)


def checkpoints(n_iter: int) -> list[int]:
    """Iterations after which APGD may halve its step size: ``ceil(p_j * n_iter)`` with
    ``p_0 = 0``, ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``.

    The intervals shrink from 22% of the budget to 6%: early on the attack explores with large
    steps, later it refines more often. ``checkpoints(100)`` is
    ``[22, 41, 57, 70, 80, 87, 93, 99]``.
    """
    p = [0.0, 0.22]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)
        if nxt > 1.0:
            break
        p.append(nxt)
    return sorted({math.ceil(pj * n_iter - 1e-9) for pj in p[1:]} - {0})  # 1e-9: 0.22 * 100 is 22.000000000000004


class APGD(Attack):
    r"""APGD in the paper 'Reliable Evaluation of Adversarial Robustness with an Ensemble of Diverse
    Parameter-free Attacks' (Croce & Hein, 2020) [https://arxiv.org/abs/2003.01690].

    PGD with momentum (``momentum`` = 0.75) and a per-sample step size that starts at 2 * eps
    and is halved at the :func:`checkpoints` when the loss increased in fewer than ``rho`` of
    the steps since the previous checkpoint, or when the previous checkpoint did not halve and
    the best loss has not improved since. After halving, a sample restarts from its best point
    so far (with its stored gradient, so no extra pass, and no momentum). Losses: cross-entropy
    (``ce``) or the Difference of Logits Ratio (``dlr``; targeted DLR when targeted), which is
    invariant to rescaling the logits.

    A sample counts as broken if any evaluated iterate was adversarial; the output is then its
    latest adversarial iterate, otherwise its highest-loss point over all restarts. Further
    restarts run only on samples not yet broken. Every sample runs the full budget within a
    restart (``n_iter + 1`` forward and backward passes) unless ``early_stop``.

    Distance Measure : Linf (default), L2

    Arguments:
        params (APGDParams):
            n_iter (int): iterations per restart. (Default: 100)
            restarts (int): random restarts. (Default: 1)
            loss (str): ``ce`` or ``dlr`` (``margin`` accepted). (Default: ``ce``)
            momentum (float): alpha. (Default: 0.75)
            rho (float): halving threshold. (Default: 0.75)
            rel_init_step (float): initial step / eps. (Default: 2.0)
            early_stop (bool): per-sample early exit. (Default: False)
        norm (Norm): ``Norm.LINF`` or ``Norm.L2``. (Default: ``Norm.LINF``)
        eps (float): maximum perturbation. (Default: 8/255 for Linf, 0.5 for L2)

    Shape:
        - x: :math:`(N, C, H, W)` inside ``clip`` (default [0, 1]).
        - labels, targets: :math:`(N)` class indices.
        - output ``AttackOutput.x_adv``: :math:`(N, C, H, W)`, on the CPU.

    Examples::
        >>> attack = APGD(APGDParams(n_iter=100, loss="dlr"), norm=Norm.LINF, eps=8 / 255)
        >>> out = attack.generate(model, x, labels, seed=0)
    """

    name = "apgd"
    kind = AttackKind.FIXED_EPS
    norms = (Norm.LINF, Norm.L2)
    default_eps = DEFAULT_EPS
    needs_gradients = True
    Params = APGDParams

    def run(self, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> torch.Tensor:
        p: APGDParams = self.params  # type: ignore[assignment]
        eps = float(self.eps or 0.0)
        if eps == 0.0 or x.shape[0] == 0:
            return x.clone()
        loss = LossName.parse(p.loss)
        return best_of_restarts(x, p.restarts, lambda idx: self._one_run(
            model, x[idx], criterion.subset(idx), loss, eps, generator))

    def _one_run(self, model: torch.nn.Module, x0: torch.Tensor, crit: Criterion, loss: LossName, eps: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One restart over the whole sub-batch: ``(output point, broken?, best loss)`` per sample."""
        p: APGDParams = self.params  # type: ignore[assignment]
        n = x0.shape[0]
        shape = (-1, *([1] * (x0.dim() - 1)))
        alpha = p.momentum
        ckpts = set(checkpoints(p.n_iter))

        def to_ball(z: torch.Tensor) -> torch.Tensor:
            return project(x0, z, eps, self.norm, self.clip)

        draws = confirm_draws(model) if p.early_stop else 0
        x_k = random_init(x0, eps, self.norm, generator, self.clip)
        logits, f_k, grad = loss_and_input_grad(model, x_k, crit, loss)
        found = crit.is_adversarial(logits)
        if draws:  # early exit: an EOT-averaged hit must hold on fresh single draws too
            found &= ~refuted(model, x_k, crit, found, draws)
        x_found = x_k.clone()

        x_best, f_best, g_best = x_k.clone(), f_k.clone(), grad.clone()
        x_prev = x_k.clone()
        eta = torch.full((n,), p.rel_init_step * eps, device=x0.device, dtype=x0.dtype)
        n_increase = torch.zeros(n, device=x0.device)      # steps since the last checkpoint that raised f
        f_best_at_ckpt = f_best.clone()
        halved_at_ckpt = torch.zeros(n, dtype=torch.bool, device=x0.device)
        last_ckpt = 0

        for k in range(p.n_iter):
            z = to_ball(ascent_step(x_k, grad, eta, self.norm))
            if k == 0:
                x_next = z
            else:  # momentum: mix the projected step with the previous displacement
                x_next = to_ball(x_k + alpha * (z - x_k) + (1.0 - alpha) * (x_k - x_prev))
            x_prev, x_k = x_k, x_next

            f_prev = f_k
            if p.early_stop:  # forward/backward only on samples not yet broken
                live = (~found).nonzero().squeeze(1)
                if live.numel() == 0:
                    break
                c_live = crit.subset(live)
                logits, f_live, g_live = loss_and_input_grad(model, x_k[live], c_live, loss)
                f_k, grad = f_k.clone(), grad.clone()
                f_k[live], grad[live] = f_live, g_live
                hit = c_live.is_adversarial(logits)
                if draws:
                    hit &= ~refuted(model, x_k[live], c_live, hit, draws)
                adv = torch.zeros_like(found)
                adv[live] = hit
            else:
                logits, f_k, grad = loss_and_input_grad(model, x_k, crit, loss)
                adv = crit.is_adversarial(logits)
            found |= adv
            x_found[adv] = x_k[adv]
            n_increase += (f_k > f_prev).float()
            better = f_k > f_best
            x_best[better], f_best[better], g_best[better] = x_k[better], f_k[better], grad[better]

            it = k + 1
            if it in ckpts:
                few_increases = n_increase < p.rho * (it - last_ckpt)
                stalled = ~halved_at_ckpt & (f_best <= f_best_at_ckpt)
                halve = few_increases | stalled
                eta = torch.where(halve, eta / 2.0, eta)
                if bool(halve.any()):
                    h = halve.view(shape)
                    x_k = torch.where(h, x_best, x_k)
                    x_prev = torch.where(h, x_best, x_prev)
                    grad = torch.where(h, g_best, grad)
                    f_k = torch.where(halve, f_best, f_k)
                halved_at_ckpt = halve
                f_best_at_ckpt = f_best.clone()
                n_increase.zero_()
                last_ckpt = it

        return torch.where(found.view(shape), x_found, x_best), found, f_best


class ArtAPGD(ArtFixedEpsAttack):
    """ART's ``AutoProjectedGradientDescent`` with :class:`APGD`'s ``n_iter``, ``restarts``
    (``nb_random_init``), ``loss`` (``cross_entropy`` or ``difference_logits_ratio``), norm and
    ``eps``, and the initial step ``rel_init_step * eps`` (ART's ``eps_step``; ART's own
    default of 0.1 is not the paper's 2 * eps). Reference backend. ART's targeted DLR is the
    untargeted DLR of the target, not the paper's targeted DLR; ``momentum`` and ``rho`` are
    fixed at 0.75 in ART. ART has no per-sample early exit: ``early_stop`` is ignored here.

    Examples::
        >>> out = ArtAPGD(APGDParams(n_iter=100), eps=0.3).generate(model, x, labels)
    """

    name = "apgd"
    Params = APGDParams

    def build(self, classifier: Any, targeted: bool, batch_size: int) -> Any:
        from art.attacks.evasion import AutoProjectedGradientDescent

        p: APGDParams = self.params  # type: ignore[assignment]
        loss = LossName.parse(p.loss)
        if loss is LossName.MARGIN:
            raise ConfigError("ART's APGD supports loss=ce or loss=dlr, not margin")
        eps = float(self.eps or 0.0)
        return AutoProjectedGradientDescent(
            classifier, norm=art_norm(self.norm), eps=eps, eps_step=p.rel_init_step * eps, max_iter=p.n_iter,
            targeted=targeted, nb_random_init=p.restarts, batch_size=batch_size,
            loss_type="cross_entropy" if loss is LossName.CE else "difference_logits_ratio", verbose=False)
