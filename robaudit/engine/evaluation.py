"""The evaluation set: the sampled inputs the model classifies correctly."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from robaudit.data import Dataset, select
from robaudit.errors import DataLoadError
from robaudit.models import Classifier


@dataclass(frozen=True)
class EvaluationSet:
    """Correctly classified inputs (CPU tensors) and how they were chosen."""

    x: torch.Tensor
    """Inputs, float32 NCHW, correctly classified."""
    y: torch.Tensor
    """True labels (int64)."""
    clean_logits: torch.Tensor
    """The model's logits on ``x``."""
    indices: np.ndarray
    """Indices of ``x`` in the dataset."""
    n_selected: int
    """How many inputs were sampled before dropping misclassified ones."""
    clean_accuracy: float
    """Accuracy on the sampled inputs."""
    n_nonfinite: int = 0
    """Sampled inputs whose clean logits hold NaN or inf (counted as misclassified, never attacked)."""
    n_requested: int | None = None
    """The ``n`` asked for (``None``: all); more than the data holds samples all of it."""
    label_hint: str = ""
    """How the labels were derived when that is a likely cause of low accuracy (class folders
    numbered in sorted name order), for the low-accuracy error and warning; else empty."""
    normalize_hint: str = ""
    """When ``--mean/--std`` seem to normalise inputs a second time (the model does it inside): the
    accuracy without them, for the low-accuracy error and warning; else empty."""
    misclassified_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Dataset indices of the sampled inputs the model gets wrong with finite logits (left out of
    ``x``; ``detect eval`` still scores them, as a deployed detector would see them)."""

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_dropped(self) -> int:
        return self.n_selected - self.n


def label_hint(data: Dataset) -> str:
    """A hint when the labels were numbered from class-folder names in sorted order (``zero/``,
    ``one/``, ... sort as eight=0, five=1, ...): if the model numbers its classes otherwise, most
    labels are wrong and accuracy drops to chance or below."""
    for note in data.notes:
        if note.startswith("labels by sorted folder name"):
            return (f"; {note}: if the model numbers its classes in another order, name the class folders by "
                    "their label (0, 1, ...)")
    return ""


def build_evaluation_set(model: Classifier, data: Dataset, n: int | None, seed: int, batch_size: int) -> EvaluationSet:
    """Sample ``n`` inputs with ``seed`` and keep those the model classifies correctly."""
    idx = select(data, n, seed)
    x = torch.from_numpy(np.ascontiguousarray(data.x[idx]))
    y = torch.from_numpy(np.ascontiguousarray(data.y[idx])).long()
    if x.shape[0] == 0:
        raise DataLoadError("the dataset is empty: nothing to evaluate")
    logits = model.predict(x, batch_size=batch_size)
    if logits.shape[1] <= int(y.max()):
        raise DataLoadError(
            f"labels go up to {int(y.max())} but the model returns {logits.shape[1]} classes: "
            "check that the data matches the model")
    finite = torch.isfinite(logits).all(dim=1)  # a NaN row's argmax is arbitrary: never "correct"
    n_nonfinite = int((~finite).sum())
    correct = (logits.argmax(dim=1) == y) & finite
    n_correct = int(correct.sum())
    misfit = model.info.channel_misfit()
    twice = _double_normalisation(model, x, y, n_correct / int(x.shape[0]), batch_size)
    if n_correct == 0:
        if n_nonfinite:
            raise DataLoadError(
                f"the model returns NaN/inf logits for {n_nonfinite} of the {x.shape[0]} sampled inputs and "
                "classifies none of them correctly: nothing to attack (check the model and --mean/--std)")
        raise DataLoadError(
            f"the model classifies none of the {x.shape[0]} sampled inputs correctly: nothing to attack "
            + (f"({misfit}: the data does not fit the model)" if misfit else
               f"(check --mean/--std, --layout, that the image size is the one the model was trained on "
               f"and that the labels match the model){label_hint(data)}{'; ' + twice if twice else ''}"))
    classes = int(logits.shape[1])
    if misfit and x.shape[0] >= classes and n_correct <= x.shape[0] / classes:
        raise DataLoadError(
            f"the data does not fit the model: {misfit}, and it classifies {n_correct} of the {x.shape[0]} sampled "
            f"inputs correctly, no better than chance (1/{classes})")
    keep = correct.nonzero().flatten()
    return EvaluationSet(
        x=x[keep], y=y[keep], clean_logits=logits[keep], indices=idx[keep.numpy()],
        n_selected=int(x.shape[0]), clean_accuracy=n_correct / int(x.shape[0]), n_nonfinite=n_nonfinite,
        n_requested=n, label_hint=label_hint(data), normalize_hint=twice,
        misclassified_indices=idx[(~correct & finite).numpy()])


def _double_normalisation(model: Classifier, x: torch.Tensor, y: torch.Tensor, accuracy: float,
                          batch_size: int) -> str:
    """A hint when ``--mean/--std`` normalise inputs the model already normalises inside (or are simply
    wrong): without them it classifies at least 20 points more of the sampled inputs. Costs one extra
    clean forward pass, only when ``--mean/--std`` were given."""
    normalize = getattr(model, "normalize", None)
    if normalize is None or accuracy > 0.8:  # 20 points more is impossible
        return ""
    try:
        model.normalize = None  # type: ignore[attr-defined]
        raw = model.predict(x, batch_size=batch_size)
    finally:
        model.normalize = normalize  # type: ignore[attr-defined]
    raw_accuracy = float(((raw.argmax(dim=1) == y) & torch.isfinite(raw).all(dim=1)).float().mean())
    if raw_accuracy < accuracy + 0.2:
        return ""
    return (f"without --mean/--std the model classifies {raw_accuracy:.1%} of the sampled inputs correctly: it "
            "seems to normalise its input itself, so drop --mean/--std")
