"""Target classes for the three settings of the study.

* untargeted: no target; success means ``prediction != label``;
* least-likely: the class with the lowest clean logit (never the label);
* next-class: ``(label + 1) mod K``.
"""

from __future__ import annotations

import torch

from robaudit.attacks.base import TargetMode
from robaudit.errors import ConfigError


def parse_targets(spec: str) -> list[TargetMode]:
    """Parse ``untargeted,least-likely`` or ``all``."""
    if spec.strip().lower() == "all":
        return list(TargetMode)
    aliases = {"ll": TargetMode.LEAST_LIKELY, "least_likely": TargetMode.LEAST_LIKELY,
               "next": TargetMode.NEXT_CLASS, "next_class": TargetMode.NEXT_CLASS}
    out: list[TargetMode] = []
    for raw in spec.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name in aliases:
            out.append(aliases[name])
            continue
        if name == "all":
            raise ConfigError(f"'all' stands alone: it already means {', '.join(t.value for t in TargetMode)}")
        try:
            out.append(TargetMode(name))
        except ValueError:
            known = ", ".join(t.value for t in TargetMode)
            raise ConfigError(f"unknown target {name!r} (known: {known}, all)") from None
    if not out:
        raise ConfigError("no target setting given: use --target untargeted|least-likely|next-class|all")
    return list(dict.fromkeys(out))


def compute_targets(mode: TargetMode, clean_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """Target class per input for ``mode`` (``None`` for untargeted). Never equal to the label."""
    num_classes = clean_logits.shape[1]
    if mode is TargetMode.UNTARGETED:
        return None
    if num_classes < 2:
        raise ConfigError("targeted attacks need at least two classes")
    if mode is TargetMode.NEXT_CLASS:
        return (labels + 1) % num_classes
    masked = clean_logits.detach().clone().float()
    masked[torch.arange(labels.shape[0]), labels] = float("inf")
    return masked.argmin(dim=1)
