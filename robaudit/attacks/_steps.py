"""Norm-specific pieces shared by the gradient attacks: steepest-ascent steps, random starts in
the eps-ball and projection back onto the ball and the valid range.

All functions are batched over the first dimension and stay on the input's device. ``step``
arguments may be a float or a per-sample tensor of shape ``(N,)`` (APGD adapts its step size
per sample).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from robaudit.attacks.base import Norm, project_ball
from robaudit.errors import ConfigError

_TINY = 1e-12


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """Broadcast a per-sample ``(N,)`` tensor against ``like`` (``(N, ...)``); floats pass through."""
    if isinstance(value, torch.Tensor):
        return value.view(-1, *([1] * (like.dim() - 1)))
    return value


def l2_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm over all but the first dimension, shape ``(N,)``."""
    return t.flatten(1).norm(dim=1)


def l2_normalize(t: torch.Tensor) -> torch.Tensor:
    """Scale each sample to unit L2 norm; all-zero samples stay zero."""
    return t / _per_sample(l2_norm(t).clamp_min(_TINY), t)


def linf_step(x: torch.Tensor, grad: torch.Tensor, step: float | torch.Tensor) -> torch.Tensor:
    """Steepest ascent under Linf: ``x + step * sign(grad)``."""
    return x + _per_sample(step, x) * grad.sign()


def l2_step(x: torch.Tensor, grad: torch.Tensor, step: float | torch.Tensor) -> torch.Tensor:
    """Steepest ascent under L2: ``x + step * grad / ||grad||_2``."""
    return x + _per_sample(step, x) * l2_normalize(grad)


def ascent_step(x: torch.Tensor, grad: torch.Tensor, step: float | torch.Tensor, norm: Norm) -> torch.Tensor:
    """A step of length ``step`` (in ``norm``) along the steepest-ascent direction of ``grad``."""
    if norm is Norm.LINF:
        return linf_step(x, grad, step)
    if norm is Norm.L2:
        return l2_step(x, grad, step)
    raise ConfigError(f"gradient steps support linf and l2, not {norm.value}")


def random_init(x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator,
                clip: tuple[float, float]) -> torch.Tensor:
    """A point drawn uniformly from the ``norm`` ball of radius ``eps`` around ``x``, then clipped.

    Linf: each coordinate uniform in ``[-eps, eps]``. L2: a Gaussian direction scaled to radius
    ``eps * u ** (1 / d)`` with ``u ~ U(0, 1)``, which is uniform in the ball (in high dimension
    almost all of its mass sits close to the sphere). Clipping to the valid range only shrinks
    the perturbation, so the result stays inside the ball.
    """
    if norm is Norm.LINF:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = (2.0 * u - 1.0) * eps
    elif norm is Norm.L2:
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        d = x[0].numel() if x.shape[0] else 1
        r = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
        delta = l2_normalize(g) * _per_sample(r * eps, x)
    else:
        raise ConfigError(f"random starts support linf and l2, not {norm.value}")
    return (x + delta).clamp(clip[0], clip[1])


def project(x0: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: Norm,
            clip: tuple[float, float]) -> torch.Tensor:
    """Project onto the ``norm`` ball of radius ``eps`` around ``x0``, then clip to ``clip``.

    ``x0`` is inside ``clip``, so clipping moves every coordinate towards ``x0`` and the result
    stays inside the ball.
    """
    return project_ball(x0, x_adv, eps, norm).clamp(clip[0], clip[1])


def best_of_restarts(x: torch.Tensor, restarts: int,
                     one_run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Run ``one_run(indices) -> (x_r, found, loss_r)`` up to ``restarts`` times on the samples not yet broken.

    A sample keeps its first adversarial point, otherwise the point with the highest loss over restarts.
    """
    best = x.clone()
    best_loss = torch.full((x.shape[0],), -torch.inf, device=x.device)
    todo = torch.arange(x.shape[0], device=x.device)
    for _ in range(restarts):
        x_r, found, loss_r = one_run(todo)
        take = found | (loss_r > best_loss[todo])
        best[todo[take]] = x_r[take]
        best_loss[todo[take]] = loss_r[take]
        todo = todo[~found]
        if todo.numel() == 0:
            break
    return best
