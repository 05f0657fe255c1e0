"""The one interface every loaded model presents to the rest of robaudit.

A :class:`Classifier` is a ``torch.nn.Module`` that takes a float32 NCHW batch in *pixel
space* (inside ``clip``; any mean/std normalisation happens inside) and returns logits of
shape ``(N, K)``. White-box models are differentiable; black-box models (an ONNX graph we
could not convert) only answer queries and must be used under ``torch.no_grad()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from robaudit.errors import ModelLoadError


@dataclass(frozen=True)
class ModelInfo:
    """What the report says about a model."""

    path: str
    """Path as given by the user."""
    format: str
    """``torchscript``, ``onnx`` or ``torch-export``."""
    sha256: str
    """Hash of the model file: identifies the model in reports and detector files."""
    input_shape: tuple[int, int, int]
    """Expected input as (channels, height, width)."""
    num_classes: int
    """Number of logits the model returns."""
    white_box: bool
    """True when gradients are available (only query-based attacks run otherwise)."""
    clip: tuple[float, float] = (0.0, 1.0)
    """Valid pixel range of inputs; eps is measured in this space."""
    mean: tuple[float, ...] | None = None
    """Per-channel mean subtracted inside the wrapped model, if any."""
    std: tuple[float, ...] | None = None
    """Per-channel std divided inside the wrapped model, if any."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Human-readable remarks (e.g. why a model is black-box); reports show them as warnings."""
    runtime: str = ""
    """How the network runs (the faster copies of :mod:`robaudit.models.fast`, or why not); not a warning."""
    first_conv_channels: int | None = None
    """Channels the network's first convolution takes, when it is known and differs from
    ``input_shape[0]``: the inputs then reach it only by broadcasting against per-channel constants
    inside the model (see :meth:`channel_mismatch`). Not in the report (a note says it)."""

    def channel_misfit(self) -> str:
        """``its first convolution takes 3 channels, the images have 1`` (for errors), or ''."""
        fc, c = self.first_conv_channels, self.input_shape[0]
        return "" if fc is None or fc == c else f"its first convolution takes {fc} channels, the images have {c}"

    def channel_mismatch(self) -> str:
        """A sentence when the first convolution takes other channels than the inputs have, else ''."""
        fc, c = self.first_conv_channels, self.input_shape[0]
        if not self.channel_misfit():
            return ""
        return (f"the model's first convolution takes {fc} channels but the images have {c}: they reach it only "
                f"by broadcasting against {fc}-channel constants inside the model, as if each image were copied to "
                f"{fc} channels; unless the model is meant for {c}-channel images, the data does not belong to it")

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "format": self.format,
            "sha256": self.sha256,
            "input_shape": list(self.input_shape),
            "classes": self.num_classes,
            "white_box": self.white_box,
            "clip": list(self.clip),
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "notes": list(self.notes),
            "runtime": self.runtime,
        }


class Classifier(torch.nn.Module):
    """A loaded model in pixel space. Subclasses implement :meth:`forward`."""

    info: ModelInfo

    def __init__(self, info: ModelInfo) -> None:
        super().__init__()
        self.info = info

    @property
    def white_box(self) -> bool:
        return self.info.white_box

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def clip(self) -> tuple[float, float]:
        return self.info.clip

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Logits for ``x`` (any device), computed in batches on the model's device; returned on CPU."""
        outs = []
        dev = self.device
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            out = self(xb.to(dev))
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (xb.shape[0], self.num_classes):
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ModelLoadError(f"the model returned {got} for a batch of {xb.shape[0]} inputs, expected "
                                     f"({xb.shape[0]}, {self.num_classes}) logits; export a model whose output "
                                     "does not depend on the batch size")
            outs.append(out.float().cpu())
        if not outs:
            return torch.empty(0, self.num_classes)
        return torch.cat(outs)
