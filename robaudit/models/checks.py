"""Small model sanity checks behind the report's validity flags."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class GradientCheck:
    """One forward and backward pass of the logit margin on a few clean inputs."""

    n: int
    """Inputs checked."""
    nonfinite_logits: int
    """Inputs whose logits hold NaN or inf."""
    nonfinite_grads: int
    """Inputs whose input gradient holds NaN or inf."""
    zero_grads: int
    """Inputs whose input gradient is exactly zero everywhere (and finite)."""


def gradient_check(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> GradientCheck:
    """Gradient of the margin ``z_y - max_{j != y} z_j`` with respect to each input of ``x``.

    The margin is used rather than the cross-entropy because a confident model's softmax
    saturates and its cross-entropy gradient can underflow to zero without any masking; the
    margin's gradient is zero only when the logits are locally flat in the input, the signature of
    gradient masking (input quantisation, a non-differentiable preprocessing step, ...). NaN and
    inf are counted, never replaced.
    """
    x_in = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_in)
        z = logits.float()
        own = z.gather(1, labels.to(z.device)[:, None]).squeeze(1)
        mask = torch.nn.functional.one_hot(labels.to(z.device), z.shape[1]).bool()
        other = z.masked_fill(mask, float("-inf")).amax(dim=1)
        margin = own - other
        grad = None
        if margin.requires_grad:
            (grad,) = torch.autograd.grad(margin.sum(), x_in, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x_in)
    n = int(x.shape[0])
    g = grad.detach().reshape(n, -1)
    bad_logits = ~torch.isfinite(logits.detach()).reshape(n, -1).all(dim=1)
    bad_grads = ~torch.isfinite(g).all(dim=1)
    zero = (g == 0).all(dim=1) & ~bad_grads & ~bad_logits
    return GradientCheck(n=n, nonfinite_logits=int(bad_logits.sum()), nonfinite_grads=int(bad_grads.sum()),
                         zero_grads=int(zero.sum()))


def batch_dependent(model: torch.nn.Module, x: torch.Tensor, rtol: float = 1e-2) -> bool:
    """True when an input's logits change with the other inputs in its batch.

    That is what a batch-norm layer left in training mode (or any batch statistic) does: attack
    results then depend on the batch size and on which inputs share a batch. Compares a batched
    forward with one input at a time, allowing ``rtol`` of the logit scale: batched and single
    convolutions may pick different kernels (TF32 on GPUs rounds to about 1e-3), while batch
    statistics move logits by far more.
    """
    if x.shape[0] < 2:
        return False
    with torch.no_grad():
        together = model(x).float()
        try:
            alone = torch.cat([model(x[i : i + 1]).float() for i in range(x.shape[0])])
        except Exception:  # noqa: BLE001 - runs on a batch but not on one input (batch-norm statistics)
            return True
    if together.shape != alone.shape or not bool(torch.isfinite(together).all() and torch.isfinite(alone).all()):
        return False
    scale = 1.0 + float(together.abs().max())
    return float((together - alone).abs().max()) > rtol * scale
