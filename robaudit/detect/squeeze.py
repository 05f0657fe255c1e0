"""Feature squeezing (Xu, Evans and Qi, NDSS 2018, https://arxiv.org/abs/1704.01155): the L1
distance between the model's softmax on an input and on squeezed versions of it (bit-depth
reduction, median filter); the largest distance is the score. Large perturbations that squeezing
removes move the prediction a lot, so the score complements A2D's cost against attackers who
pay for low cost with large distortion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from robaudit.errors import ConfigError


@dataclass(frozen=True)
class SqueezeParams:
    """Squeezers; the paper's best MNIST setting is 1 bit + 2x2 median, CIFAR-10 5 bits + 2x2 median."""

    bits: int = 1
    """Bit depth of the bit-depth squeezer (0 disables it)."""
    median: int = 2
    """Median-filter window (0 disables it)."""

    def __post_init__(self) -> None:
        if not 0 <= self.bits <= 8 or self.median < 0 or (self.bits == 0 and self.median == 0):
            raise ConfigError(f"squeeze: need bits in 1..8 and/or median >= 2, got bits={self.bits} median={self.median}")

    @classmethod
    def default_for(cls, input_shape: Sequence[int]) -> "SqueezeParams":
        return cls(bits=1, median=2) if int(input_shape[0]) == 1 else cls(bits=5, median=2)

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "median": self.median}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SqueezeParams":
        return cls(int(d["bits"]), int(d["median"]))


def bit_depth(x: torch.Tensor, bits: int, clip: tuple[float, float]) -> torch.Tensor:
    lo, hi = clip
    levels = 2**bits - 1
    return torch.round((x - lo) / (hi - lo) * levels) / levels * (hi - lo) + lo


def median_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Per-channel median over a ``size x size`` window, exactly
    ``scipy.ndimage.median_filter(x, size=(1, 1, size, size), mode="reflect")`` (what the paper's code
    runs): half-sample symmetric reflection at the edges (``d c b a | a b c d``), and for an even
    window the offsets ``-size//2 .. size - 1 - size//2`` and the upper of the two middle values.
    The spatial-smoothing defence's filter, batched and torch-native."""
    from robaudit.defences.spatial_smoothing import SpatialSmoothing, SpatialSmoothingParams

    return SpatialSmoothing(SpatialSmoothingParams(window=size)).transform(x, None)


@torch.no_grad()
def squeeze_scores(model: torch.nn.Module, x: torch.Tensor, params: SqueezeParams, *,
                   clip: tuple[float, float] = (0.0, 1.0), batch_size: int = 256) -> np.ndarray:
    """Max over squeezers of ``||softmax(f(x)) - softmax(f(squeeze(x)))||_1`` per input."""
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(dev, torch.float32)
        p0 = model(xb).softmax(1)
        best = torch.zeros(xb.shape[0], device=dev)
        if params.bits:
            best = torch.maximum(best, (model(bit_depth(xb, params.bits, clip)).softmax(1) - p0).abs().sum(1))
        if params.median >= 2:
            best = torch.maximum(best, (model(median_filter(xb, params.median)).softmax(1) - p0).abs().sum(1))
        out.append(best.cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)
