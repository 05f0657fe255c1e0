"""Points drawn uniformly from an Lp ball around an input, clipped to the input range.

Each norm uses an exact construction of the uniform distribution on the ball in ``d`` dimensions:

* Linf: every coordinate uniform in ``[-r, r]``;
* L2: a Gaussian direction ``z / ||z||_2`` times a radius ``r * U^(1/d)``;
* L1: ``d`` i.i.d. Exp(1) variables normalised by their sum are Dirichlet(1, ..., 1), i.e. uniform
  on the face ``{w >= 0, sum(w) = 1}`` of the unit L1 sphere; random signs spread them over all
  faces (the cone measure of the sphere), and a radius ``r * U^(1/d)`` fills the ball.

For all three, ``(||delta|| / r)^d`` is uniform on [0, 1] (a test checks this). Clipping to the
input range only shortens a perturbation, so the clipped points stay in the ball.

Sampling is seeded per *unit* (one input and one batch of sample points) from the run seed, the
input's dataset index, the norm and the batch number, so the points an input sees do not depend on
which other inputs ran, on the order, or on how units are grouped into passes.
"""

from __future__ import annotations

import torch

from robaudit.clever.interface import CleverNorm
from robaudit.data.sampling import stream_seed


def unit_seed(seed: int, index: int, norm: CleverNorm, batch: int) -> int:
    """Seed of the sample points of batch ``batch`` of the input at dataset index ``index``."""
    return stream_seed("clever", seed, index, norm.value, batch)


def sample_ball(center: torch.Tensor, n: int, radius: float, norm: CleverNorm, clip: tuple[float, float],
                generator: torch.Generator) -> torch.Tensor:
    """``n`` points uniform in the ``norm`` ball of ``radius`` around ``center`` (any shape), clipped.

    Returns a tensor of shape ``(n, *center.shape)`` on ``center``'s device (``generator`` must be
    on the same device).
    """
    delta = sample_delta(n, center.numel(), radius, norm, generator, center.device, center.dtype)
    points = center.reshape(1, -1) + delta
    return points.clamp_(clip[0], clip[1]).view(n, *center.shape)


def sample_delta(n: int, d: int, radius: float, norm: CleverNorm, generator: torch.Generator,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` perturbations of dimension ``d`` uniform in the ``norm`` ball of ``radius`` (unclipped)."""
    kw = {"generator": generator, "device": device, "dtype": dtype}
    if norm is CleverNorm.LINF:
        return torch.rand(n, d, **kw).mul_(2.0).sub_(1.0).mul_(radius)  # type: ignore[arg-type]
    # a radius fraction u^(1/d), computed in float64: for large d it is close to 1 but must not round up
    u = torch.rand(n, 1, generator=generator, device=device, dtype=torch.float64)
    frac = u.pow(1.0 / d).to(dtype)
    if norm is CleverNorm.L2:
        z = torch.randn(n, d, **kw)  # type: ignore[arg-type]
        z = z / torch.linalg.vector_norm(z, dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        return z.mul_(frac * radius)
    # L1: Dirichlet(1, ..., 1) from normalised exponentials, random signs, radius fraction
    e = torch.empty(n, d, device=device, dtype=dtype).exponential_(generator=generator)
    w = e / e.sum(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    signs = torch.randint(0, 2, (n, d), generator=generator, device=device).to(dtype).mul_(2.0).sub_(1.0)
    return w.mul_(signs).mul_(frac * radius)
