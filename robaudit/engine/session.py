"""Load a model and a dataset consistently (layout, channels, labels) for any subcommand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robaudit.data import DataFormat, Dataset, load_dataset
from robaudit.demo_assets import resolve_data, resolve_model
from robaudit.engine.evaluation import EvaluationSet
from robaudit.errors import DataLoadError, ModelLoadError
from robaudit.models import Classifier
from robaudit.models.loader import load_model


@dataclass(frozen=True)
class InputOptions:
    """How to read the model and the data (shared by every subcommand)."""

    model: str
    data: str
    device: str = "auto"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    clip: tuple[float, float] = (0.0, 1.0)
    layout: str | None = None
    x_key: str | None = None
    y_key: str | None = None
    labels_optional: bool = False
    """The job never reads labels (``detect score``): an ``.npz`` of images alone is accepted."""


@dataclass(frozen=True)
class Inputs:
    model: Classifier
    data: Dataset
    model_spec: str
    data_spec: str

    def model_section(self) -> dict[str, Any]:
        """The report's ``model`` object (path as the user gave it)."""
        return {**self.model.info.to_dict(), "path": self.model_spec}

    def data_section(self, evalset: EvaluationSet) -> dict[str, Any]:
        """The report's ``data`` object for an evaluation set drawn from this data."""
        data = self.data
        return {
            "path": self.data_spec, "format": data.format, "sha256": data.sha256, "n_total": int(data.x.shape[0]),
            "n_selected": evalset.n_selected, "n_evaluated": evalset.n,
            "n_dropped_misclassified": evalset.n_dropped, "clean_accuracy": evalset.clean_accuracy,
            "notes": list(data.notes),
            **({"class_names": list(data.class_names)} if data.class_names else {}),
        }


def load_inputs(opts: InputOptions) -> Inputs:
    """Load data and model so that their shapes agree. Ambiguous layouts are settled by the model."""
    data_path = resolve_data(opts.data)
    model_path = resolve_model(opts.model)

    def _data(channels: int | None) -> Dataset:
        return load_dataset(data_path, layout=opts.layout, channels=channels, x_key=opts.x_key,
                            y_key=opts.y_key, input_range=opts.clip, labels_optional=opts.labels_optional)

    try:
        data = _data(None)
    except DataLoadError as first:
        if opts.layout is not None:
            raise
        # The layout may only be decidable from the model's channel count: ask the model.
        try:
            probe = load_model(model_path, device="cpu", mean=opts.mean, std=opts.std, clip=opts.clip,
                               fast_copies=False)
        except Exception:
            raise first from None
        data = _data(probe.info.input_shape[0])
    num_classes_hint = int(data.y.max()) + 1 if data.y.size else None
    try:
        model = load_model(model_path, device=opts.device, mean=opts.mean, std=opts.std, clip=opts.clip,
                           data_shape=tuple(int(s) for s in data.x.shape[1:]), num_classes_hint=num_classes_hint)
    except ModelLoadError as first:
        if data.format is not DataFormat.FOLDER:
            raise
        # An image folder's channels are a guess (3 if any image is colour): a gray model fed a folder
        # with a few RGB files, or RGB PNGs of digits, fails on 3 channels. Ask the model, convert.
        try:
            probe = load_model(model_path, device="cpu", mean=opts.mean, std=opts.std, clip=opts.clip,
                               fast_copies=False)
        except Exception:
            raise first from None
        if probe.info.input_shape[0] == data.x.shape[1]:
            raise
        data = _data(probe.info.input_shape[0])
        model = load_model(model_path, device=opts.device, mean=opts.mean, std=opts.std, clip=opts.clip,
                           data_shape=tuple(int(s) for s in data.x.shape[1:]), num_classes_hint=num_classes_hint)
    if tuple(model.info.input_shape) != tuple(data.x.shape[1:]):
        raise DataLoadError(
            f"data shape {tuple(data.x.shape[1:])} does not match the model's input {tuple(model.info.input_shape)} "
            "(check --layout)")
    if num_classes_hint is not None and num_classes_hint > model.num_classes:
        raise DataLoadError(
            f"labels go up to {num_classes_hint - 1} but the model has {model.num_classes} classes: "
            "the data does not match the model")
    return Inputs(model=model, data=data, model_spec=opts.model, data_spec=opts.data)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
