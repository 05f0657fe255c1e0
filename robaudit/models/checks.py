"""Small model sanity checks behind the report's validity flags."""

from __future__ import annotations

import torch


def looks_like_probabilities(logits: torch.Tensor, atol: float = 1e-3) -> bool:
    """True when every row is non-negative and sums to 1 within ``atol``.

    Such outputs are softmax probabilities, not logits: margin losses and gradients computed on
    them are flattened, so attacks look weaker than they are.
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        return False
    z = logits.detach().float()
    if not bool(torch.isfinite(z).all()):
        return False
    if bool((z < 0).any()):
        return False
    return bool(((z.sum(dim=1) - 1.0).abs() <= atol).all())


def is_stochastic(model: torch.nn.Module, x: torch.Tensor, atol: float = 0.0) -> bool:
    """True when two forwards of ``x`` in eval mode differ (by more than ``atol``).

    Randomised models defeat plain gradient attacks by noise, not robustness; they need
    expectation-over-transformation. The model's training flag is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            a = model(x)
            b = model(x)
    finally:
        model.train(was_training)
    return not torch.allclose(a.float(), b.float(), rtol=0.0, atol=atol, equal_nan=True)
