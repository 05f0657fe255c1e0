"""Adapter that runs ART's reference implementations behind robaudit's :class:`Attack` base.

ART works on numpy arrays one call at a time; robaudit keeps it as the ``--backend art``
reference. Two ART pitfalls are handled here for every ART-backed attack:

* some ART attacks (HopSkipJump under numpy 2) probe the model with float64 arrays, which a
  float32 PyTorch model rejects: inputs are cast to float32 inside the wrapped module;
* ART draws from numpy's global RNG, so each batch seeds it from robaudit's generator; a
  ``np.random.RandomState()`` that ART creates without a seed (HopSkipJump's search for a starting
  point does, so it drew from the OS and two runs with one seed differed) is seeded from that RNG.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from robaudit.attacks.base import Attack, CountingModel, Criterion


class _Float32(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.float())


def art_classifier(model: torch.nn.Module, input_shape: tuple[int, ...], num_classes: int,
                   clip: tuple[float, float], device: torch.device) -> Any:
    """Wrap a pixel-space logits model as an ART ``PyTorchClassifier``."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=_Float32(model),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(int(s) for s in input_shape),
        nb_classes=int(num_classes),
        clip_values=(float(clip[0]), float(clip[1])),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )


@contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG, and every ``np.random.RandomState()`` created without a seed while
    inside (from that RNG), so that ART's random choices follow robaudit's seed."""
    original = np.random.RandomState

    class _FromGlobal(original):  # type: ignore[valid-type, misc]
        def __init__(self, seed: Any = None) -> None:
            super().__init__(int(np.random.randint(0, 2**31 - 1)) if seed is None else seed)

    np.random.seed(seed)
    np.random.RandomState = _FromGlobal  # type: ignore[misc]
    try:
        yield
    finally:
        np.random.RandomState = original  # type: ignore[misc]


class ArtAttack(Attack):
    """Base for ART-backed attacks: subclasses implement :meth:`build`."""

    backend = "art"

    @abstractmethod
    def build(self, classifier: Any, targeted: bool, batch_size: int) -> Any:
        """Return a configured ART attack for ``classifier``."""

    def art_labels(self, criterion: Criterion, num_classes: int) -> np.ndarray:
        """Labels passed to ART's ``generate``: the targets (targeted) or the true labels."""
        return criterion.attack_classes.cpu().numpy().astype(np.int64)

    def run(self, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> torch.Tensor:
        net = model.model if isinstance(model, CountingModel) else model
        with torch.no_grad():  # the class count, from the uncounted network: not a query of the attack
            num_classes = int(net(x[:1]).shape[1])
        clf = art_classifier(model, tuple(x.shape[1:]), num_classes, self.clip, x.device)
        attack = self.build(clf, criterion.targeted, int(x.shape[0]))
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())
        y = self.art_labels(criterion, num_classes)
        with seeded_numpy(seed):
            adv = attack.generate(x=x.detach().cpu().numpy().astype(np.float32), y=y)
        return torch.from_numpy(np.asarray(adv, dtype=np.float32)).to(x.device)
