"""Spatial smoothing: a per-channel median filter over a square window.

| Paper: Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
  Networks", NDSS 2018, https://arxiv.org/abs/1704.01155
| Distance: none (a pre-processing defence).
| Arguments: ``window`` (side of the square window, default 3).
| Shapes: ``(N, C, H, W)`` -> ``(N, C, H, W)``; each channel is filtered on its own.

Semantics follow ``scipy.ndimage.median_filter(x, size=(1, 1, w, w), mode="reflect")`` (which is
what ART's ``SpatialSmoothing`` runs), exactly, for every window size:

* edges are extended by half-sample symmetric reflection (``d c b a | a b c d | d c b a``);
* for an even window the window covers offsets ``-w//2 .. w - 1 - w//2`` and the result is the
  upper of the two middle values (scipy's rank ``w*w // 2``).

Implementation, for the whole batch at once: one ``index_select`` per axis builds the reflected
border. For the default 3x3 window the median comes from elementwise ``minimum``/``maximum`` only:
every vertical triple is sorted once (low, mid, high), and the median of a window is the median
of (largest low, median of mids, smallest high) of its three columns, an exact identity for
3x3 medians. Other windows expose every window with ``unfold`` and pick it with ``kthvalue`` (in
chunks that bound the temporary window tensor). Deterministic.

Gradients: autograd through a median passes each output's gradient to the one input pixel it
selected, a sparse gradient that masks the filter rather than describing it. The filter is
therefore marked non-differentiable and attacked with BPDA (identity backward), which is far
stronger: on the demo MNIST CNN at eps 0.3 (196 inputs), adaptive FGSM fooled 30% through the
median's autograd gradient and 87% with BPDA, PGD 96% and 100%.

Example::

    ss = SpatialSmoothing(SpatialSmoothingParams(window=3))
    x_smooth = ss(x)          # x: float (N, C, H, W) in [0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from robaudit.defences.interface import DefenceName, DefenceParams, Preprocessor
from robaudit.errors import ConfigError

_MAX_WINDOW_ELEMENTS = 1 << 25
"""Largest temporary window tensor (elements) built at once; bigger batches are split."""


@dataclass(frozen=True)
class SpatialSmoothingParams(DefenceParams):
    """Parameters of :class:`SpatialSmoothing`."""

    window: int = 3
    """Side of the square median window, in pixels. 3 is ART's default and the study's setting."""

    def check(self) -> None:
        if not 1 <= self.window <= 64:
            raise ConfigError(f"ss.window must be between 1 and 64, got {self.window}")


def reflect_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices into an axis of length ``n`` that extend it by ``before``/``after`` samples with
    half-sample symmetric reflection (scipy's ``mode="reflect"``), for any border width."""
    i = torch.arange(-before, n + after, device=device)
    period = 2 * n
    j = torch.remainder(i, period)
    return torch.where(j >= n, period - 1 - j, j)


def _median3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


def _median3x3(xp: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """3x3 medians of ``xp`` (border already added: ``h + 2`` x ``w + 2``) without sorting windows."""
    top, mid, bot = xp[..., 0:h, :], xp[..., 1 : h + 1, :], xp[..., 2 : h + 2, :]
    lo, hi = torch.minimum(top, mid), torch.maximum(top, mid)
    lo, hi, md = torch.minimum(lo, bot), torch.maximum(hi, bot), _median3(top, mid, bot)
    left, centre, right = slice(0, w), slice(1, w + 1), slice(2, w + 2)
    max_lo = torch.maximum(torch.maximum(lo[..., left], lo[..., centre]), lo[..., right])
    min_hi = torch.minimum(torch.minimum(hi[..., left], hi[..., centre]), hi[..., right])
    med_md = _median3(md[..., left], md[..., centre], md[..., right])
    return _median3(max_lo, med_md, min_hi)


class SpatialSmoothing(Preprocessor):
    """Median filter over a ``window`` x ``window`` neighbourhood, per channel (see module docs)."""

    name: ClassVar[DefenceName] = DefenceName.SS
    differentiable: ClassVar[bool] = False  # its autograd gradient is sparse: BPDA is stronger (module docs)
    randomized: ClassVar[bool] = False
    Params: ClassVar[type[DefenceParams]] = SpatialSmoothingParams
    params: SpatialSmoothingParams

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        w = self.params.window
        if w == 1:
            return x.clone()
        n, c, h, wd = x.shape
        before, after = w // 2, w - 1 - w // 2
        rows = reflect_index(h, before, after, x.device)
        cols = reflect_index(wd, before, after, x.device)
        if w == 3:
            return _median3x3(x.index_select(2, rows).index_select(3, cols), h, wd)
        rank = w * w // 2 + 1  # 1-based k of kthvalue: scipy's rank w*w//2 (upper middle when even)
        per_image = c * h * wd * w * w
        step = max(1, _MAX_WINDOW_ELEMENTS // per_image)
        outs = []
        for i in range(0, n, step):
            xp = x[i : i + step].index_select(2, rows).index_select(3, cols)
            windows = xp.unfold(2, w, 1).unfold(3, w, 1)  # (n, c, h, w, win, win), a view
            flat = windows.reshape(*windows.shape[:4], w * w)
            outs.append(flat.kthvalue(rank, dim=-1).values)
        return outs[0] if len(outs) == 1 else torch.cat(outs)
