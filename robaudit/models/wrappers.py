"""The two concrete :class:`Classifier` kinds: a torch network (white-box) and an onnxruntime
session (black-box). Both apply the optional mean/std normalisation inside ``forward`` so callers
always work in pixel space, where eps is measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from robaudit.models.interface import Classifier, ModelInfo


class Normalize(torch.nn.Module):
    """``(x - mean) / std`` per channel; mean/std are buffers so they follow ``.to(device)``."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
        super().__init__()
        m = torch.tensor([float(v) for v in mean], dtype=torch.float32)
        s = torch.tensor([float(v) for v in std], dtype=torch.float32)
        if m.numel() == 1:
            m = m.expand(channels).clone()
        if s.numel() == 1:
            s = s.expand(channels).clone()
        self.register_buffer("mean", m.view(1, channels, 1, 1))
        self.register_buffer("std", s.view(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _chunked(fn: Any, x: torch.Tensor, limit: int | None) -> torch.Tensor:
    if limit is None or x.shape[0] <= limit:
        return fn(x)
    return torch.cat([fn(x[i : i + limit]) for i in range(0, x.shape[0], limit)])


class TorchClassifier(Classifier):
    """A white-box torch network (TorchScript, or ONNX converted by onnx2torch).

    The network is put in eval mode and its parameters are frozen (``requires_grad=False``):
    attacks need gradients with respect to the input only. Call :meth:`drop_copies`, then
    ``requires_grad_(True)`` on ``self.net`` to fine-tune it.

    :meth:`use_copies` installs faster prepared copies of the network (:mod:`robaudit.models.fast`):
    ``forward`` then runs the gradient copy when the input requires a gradient and the inference
    copy otherwise (or when autograd is off), the original where a copy is missing. Moving the
    classifier (``.to``) drops the copies.
    """

    def __init__(
        self,
        info: ModelInfo,
        net: torch.nn.Module,
        normalize: Normalize | None = None,
        batch_limit: int | None = None,
    ) -> None:
        super().__init__(info)
        self.net = net
        self.normalize = normalize
        self.batch_limit = batch_limit
        """Largest batch the network accepts (1 for graphs exported with a fixed batch of 1)."""
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.grad_copy: torch.nn.Module | None = None
        self.infer_copy: torch.nn.Module | None = None
        self.eval()

    def use_copies(self, grad: torch.nn.Module | None, infer: torch.nn.Module | None) -> None:
        """Serve forward passes from prepared copies of ``net`` (``None``: the original)."""
        self.grad_copy, self.infer_copy = grad, infer

    def drop_copies(self) -> None:
        """Serve every forward pass from ``net`` again (before training it, or after moving it)."""
        self.grad_copy = self.infer_copy = None

    def _apply(self, fn: Any, recurse: bool = True) -> "TorchClassifier":
        self.drop_copies()  # frozen copies hold their weights as graph constants: they would not move
        return super()._apply(fn, recurse)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            x = self.normalize(x)
        net = self.net
        if torch.is_grad_enabled() and x.requires_grad:
            if self.grad_copy is not None:
                net = self.grad_copy
        elif self.infer_copy is not None:
            net = self.infer_copy
        return _chunked(net, x, self.batch_limit)


class OnnxRuntimeClassifier(Classifier):
    """A black-box ONNX graph run by onnxruntime on the CPU; queries only, no gradients.

    ``forward`` accepts tensors on any device and returns logits on the input's device. It runs
    under ``torch.no_grad()``: the result never carries a gradient.
    """

    def __init__(
        self,
        info: ModelInfo,
        session: Any,
        input_name: str,
        output_name: str,
        normalize: Normalize | None = None,
        batch_limit: int | None = None,
    ) -> None:
        super().__init__(info)
        self.session = session
        self.input_name = input_name
        self.output_name = output_name
        self.normalize = normalize
        self.batch_limit = batch_limit
        self.eval()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run([self.output_name], {self.input_name: arr})
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            dev = x.device
            x = x.to("cpu", torch.float32)
            if self.normalize is not None:
                x = self.normalize.to("cpu")(x)
            return _chunked(self._run, x, self.batch_limit).to(dev)
