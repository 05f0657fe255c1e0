"""Per-sample losses shared by the gradient attacks, and the input-gradient helper.

Every function here works on a batch of logits of shape ``(N, K)`` and returns one value per
sample, shape ``(N,)``, so attacks can keep per-sample state (best loss, step size) without
reductions getting in the way.

Two conventions live side by side:

* :func:`attack_loss` returns an objective to **maximise**, already oriented for the criterion
  (untargeted: move away from the label; targeted: move towards the target). The fixed-eps
  attacks (FGSM, BIM, PGD, APGD) use only this and :func:`loss_and_input_grad`.
* :func:`cw_loss` is Carlini & Wagner's ``f`` to **minimise**, with the confidence ``kappa``,
  for minimisation attacks that add it to a distance term.

The raw building blocks (:func:`cross_entropy`, :func:`margin`, :func:`dlr_loss`,
:func:`targeted_dlr_loss`) are public for other attack authors.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F

from robaudit.attacks.base import Criterion, TargetMode, params_from_overrides
from robaudit.errors import ConfigError

_DLR_EPS = 1e-12


class LossName(str, Enum):
    """Objectives an attack can maximise; see :func:`attack_loss`."""

    CE = "ce"
    """Cross-entropy of the label (untargeted) or minus cross-entropy of the target (targeted)."""
    MARGIN = "margin"
    """Carlini-Wagner logit margin, without the confidence clamp."""
    DLR = "dlr"
    """Difference of Logits Ratio (Croce & Hein 2020); the targeted variant when targeted."""

    @classmethod
    def parse(cls, value: str) -> "LossName":
        v = value.strip().lower().replace("_", "-")
        aliases = {"ce": cls.CE, "cross-entropy": cls.CE, "xent": cls.CE,
                   "margin": cls.MARGIN, "cw": cls.MARGIN, "dlr": cls.DLR}
        if v not in aliases:
            raise ConfigError(f"unknown loss {value!r}: use ce, margin or dlr")
        return aliases[v]


def cross_entropy(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of ``classes`` (shape ``(N,)``)."""
    return F.cross_entropy(logits, classes, reduction="none")


def max_other(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``max_{j != c} z_j`` per sample: the largest logit that is not ``classes``."""
    mask = F.one_hot(classes, logits.shape[1]).bool()
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min).amax(dim=1)


def margin(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``z_c - max_{j != c} z_j``: positive exactly when class ``c`` is the (unique) argmax."""
    own = logits.gather(1, classes[:, None]).squeeze(1)
    return own - max_other(logits, classes)


def cw_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None,
            confidence: float = 0.0) -> torch.Tensor:
    """Carlini & Wagner's ``f`` (their f_6), to **minimise**; it bottoms out at ``-confidence``.

    Untargeted: ``max(z_y - max_{j != y} z_j, -kappa)``.
    Targeted:   ``max(max_{j != t} z_j - z_t, -kappa)``.
    """
    if targets is None:
        return margin(logits, labels).clamp_min(-confidence)
    return (-margin(logits, targets)).clamp_min(-confidence)


def _check_classes(logits: torch.Tensor, needed: int, what: str) -> None:
    _need_classes(int(logits.shape[1]), needed, what)


def _need_classes(num_classes: int, needed: int, what: str) -> None:
    if num_classes < needed:
        raise ConfigError(f"{what} needs at least {needed} classes, the model has {num_classes}: use loss=ce")


def check_loss_classes(loss: str, num_classes: int, targeted: bool) -> None:
    """Refuse (:class:`ConfigError`, the message the loss itself gives at run time) a ``loss`` the
    model's ``num_classes`` cannot support: ``dlr`` needs 3 classes untargeted, 4 targeted. The
    engine calls this once the model is loaded, before any cell runs, so a bad plan writes no
    partial report."""
    if LossName.parse(loss) is LossName.DLR:
        if targeted:
            _need_classes(num_classes, 4, "the targeted DLR loss")
        else:
            _need_classes(num_classes, 3, "the DLR loss")


def check_attack_loss(cls: Any, overrides: Mapping[str, Any], name: str, modes: Iterable[TargetMode],
                      num_classes: int) -> None:
    """:func:`check_loss_classes` for attack class ``cls`` with parameter ``overrides`` (``name``
    names it in messages) in each target setting of ``modes`` it supports: what ``attack`` and
    ``audit`` ask once the model is loaded. Attacks without a ``loss`` parameter pass."""
    loss = getattr(params_from_overrides(cls.Params, overrides, name), "loss", None)
    if isinstance(loss, str):
        for mode in modes:
            if cls.supports(mode):
                check_loss_classes(loss, num_classes, mode.targeted)


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR, to maximise: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``.

    ``z_pi1 >= z_pi2 >= ...`` are the sorted logits. The ratio is invariant to shifting and
    scaling the logits, which is what makes it robust to gradient masking by logit rescaling.
    Needs at least 3 classes.
    """
    _check_classes(logits, 3, "the DLR loss")
    top = logits.topk(3, dim=1).values
    return -margin(logits, labels) / (top[:, 0] - top[:, 2] + _DLR_EPS)


def targeted_dlr_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, to maximise: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``. Needs 4 classes."""
    _check_classes(logits, 4, "the targeted DLR loss")
    top = logits.topk(4, dim=1).values
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    z_t = logits.gather(1, targets[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_EPS)


def attack_loss(loss: LossName, logits: torch.Tensor, criterion: Criterion) -> torch.Tensor:
    """Per-sample objective to **maximise** for ``criterion`` (shape ``(N,)``).

    ============  ===============================  ==================================
    loss          untargeted (label ``y``)          targeted (target ``t``)
    ============  ===============================  ==================================
    ``ce``        ``CE(z, y)``                      ``-CE(z, t)``
    ``margin``    ``max_{j != y} z_j - z_y``        ``z_t - max_{j != t} z_j``
    ``dlr``       :func:`dlr_loss`                  :func:`targeted_dlr_loss`
    ============  ===============================  ==================================

    For ``margin`` the sample is adversarial exactly when the objective is positive.
    """
    labels, targets = criterion.labels, criterion.targets
    if loss is LossName.CE:
        return -cross_entropy(logits, targets) if targets is not None else cross_entropy(logits, labels)
    if loss is LossName.MARGIN:
        return margin(logits, targets) if targets is not None else -margin(logits, labels)
    if loss is LossName.DLR:
        return targeted_dlr_loss(logits, labels, targets) if targets is not None else dlr_loss(logits, labels)
    raise ConfigError(f"unsupported loss {loss!r}")  # pragma: no cover - the enum is exhaustive


def loss_and_input_grad(model: torch.nn.Module, x: torch.Tensor, criterion: Criterion,
                        loss: LossName) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward and one backward pass: ``(logits, per-sample loss, d loss / d x)``, all detached.

    The gradient is taken with :func:`torch.autograd.grad` with respect to ``x`` only, so model
    parameters that require grad never accumulate ``.grad``. Because the per-sample losses are
    independent, the gradient of their sum is each sample's own gradient. Non-finite gradient
    entries are zeroed so one bad sample cannot poison a step; they are not hidden: the
    :class:`~robaudit.attacks.base.CountingModel` every attack runs through counts them, and the
    report flags the row (``nonfinite_grads``).
    """
    x_in = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_in)
        values = attack_loss(loss, logits, criterion)
        grad = None
        if values.requires_grad:
            (grad,) = torch.autograd.grad(values.sum(), x_in, allow_unused=True)
    if grad is None:  # the output does not depend on the input
        grad = torch.zeros_like(x_in)
    return logits.detach(), values.detach(), torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
