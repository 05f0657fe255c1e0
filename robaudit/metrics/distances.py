"""Perturbation distances per sample and their summaries."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Distances:
    """Per-sample norms of ``x_adv - x`` (CPU float64 tensors of shape (N,))."""

    l0: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor) -> Distances:
    delta = (x_adv.double() - x.double()).flatten(1)
    return Distances(
        l0=(delta.abs() > 1e-8).sum(dim=1).double(),
        l2=delta.norm(dim=1),
        linf=delta.abs().amax(dim=1) if delta.shape[1] else torch.zeros(delta.shape[0], dtype=torch.float64),
    )


def summarize(values: torch.Tensor) -> dict[str, float | None]:
    """Mean, median and max; ``None`` when there are no values (JSON ``null``)."""
    if values.numel() == 0:
        return {"mean": None, "median": None, "max": None}
    v = values.double()
    return {"mean": _f(v.mean()), "median": _f(v.quantile(0.5)), "max": _f(v.max())}


def _f(t: torch.Tensor) -> float | None:
    value = float(t.item())
    return None if math.isnan(value) else value
