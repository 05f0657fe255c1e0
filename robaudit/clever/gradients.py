"""Dual-norm gradient norms of the margins ``f_c - f_j`` at many points, for many classes at once.

One forward pass over a batch of points (from any mix of inputs), then one backward pass per
column of ``classes`` through the same graph (``retain_graph``), each giving every point's
gradient of its own margin. Measured on CPU against the alternatives (batched vector-Jacobian
products with ``is_grads_batched``, replicating the batch once per class, or a full Jacobian
from ``K`` backward passes): the loop of ``K - 1`` margin backward passes was the fastest, and it
needs only one gradient-sized buffer at a time.
"""

from __future__ import annotations

import torch


def margin_gradient_norms(model: torch.nn.Module, points: torch.Tensor, own: torch.Tensor, classes: torch.Tensor,
                          dual_ord: float) -> torch.Tensor:
    """Norms ``||grad_x (f_own - f_classes[:, m])(x)||_dual`` for every point and column ``m``.

    ``points``: ``(P, ...)`` on the model's device; ``own``: ``(P,)`` class of each point's input;
    ``classes``: ``(P, M)`` other classes per point. Returns ``(M, P)`` float32 norms.
    """
    x = points.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        own_logit = logits.gather(1, own.view(-1, 1)).squeeze(1)
        other = logits.gather(1, classes)
        n_cols = classes.shape[1]
        out = torch.empty(n_cols, x.shape[0], device=x.device, dtype=torch.float32)
        for m in range(n_cols):
            margin = (own_logit - other[:, m]).sum()
            (grad,) = torch.autograd.grad(margin, x, retain_graph=m < n_cols - 1)
            out[m] = torch.linalg.vector_norm(grad.flatten(1), ord=dual_ord, dim=1).float()
    return out
