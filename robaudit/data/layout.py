"""Axis order of image arrays: detect it, validate a user's choice, convert to and from NCHW."""

from __future__ import annotations

import numpy as np

from robaudit.data.interface import Layout
from robaudit.errors import ConfigError, DataLoadError

PLAUSIBLE_CHANNELS = frozenset({1, 3, 4})
"""Channel counts that make an axis look like a channel axis (gray, RGB, RGBA)."""


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def _channel_dim(shape: tuple[int, ...], layout: Layout) -> int:
    if layout is Layout.NHW:
        return 1
    return int(shape[1] if layout is Layout.NCHW else shape[3])


def detect_layout(shape: tuple[int, ...], *, channels: int | None = None) -> Layout:
    """Guess the layout of an image array of ``shape``.

    3-D arrays are NHW. For 4-D arrays an axis of size 1, 3 or 4 looks like channels: when
    exactly one of axis 1 and axis 3 does, that decides; otherwise ``channels`` (the count the
    model expects) decides when exactly one axis matches it; otherwise DataLoadError.
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) == 3:
        return Layout.NHW
    if len(shape) == 2:
        raise DataLoadError(
            f"images have shape {_shape_text(shape)}, which looks flattened; "
            "reshape them to (N, H, W), (N, C, H, W) or (N, H, W, C)"
        )
    if len(shape) != 4:
        raise DataLoadError(
            f"images have shape {_shape_text(shape)}; expected (N, H, W), (N, C, H, W) or (N, H, W, C)"
        )
    c1, c3 = shape[1], shape[3]
    p1, p3 = c1 in PLAUSIBLE_CHANNELS, c3 in PLAUSIBLE_CHANNELS
    if p1 and not p3:
        return Layout.NCHW
    if p3 and not p1:
        return Layout.NHWC
    if channels is not None:
        m1, m3 = c1 == channels, c3 == channels
        if m1 and not m3:
            return Layout.NCHW
        if m3 and not m1:
            return Layout.NHWC
    raise DataLoadError(
        f"cannot tell whether images of shape {_shape_text(shape)} are NCHW or NHWC; pass --layout NCHW|NHWC"
    )


def check_layout(shape: tuple[int, ...], layout: Layout | str, *, channels: int | None = None) -> Layout:
    """Validate an explicit ``layout`` against ``shape`` (and the model's ``channels``)."""
    lay = Layout.parse(layout)
    shape = tuple(int(d) for d in shape)
    if len(shape) != lay.ndim:
        raise ConfigError(
            f"--layout {lay.value} needs a {lay.ndim}-D image array but the images have shape "
            f"{_shape_text(shape)}; pass a layout that fits or drop --layout"
        )
    c = _channel_dim(shape, lay)
    if channels is not None and c not in (channels, 1):
        raise ConfigError(
            f"with --layout {lay.value} images of shape {_shape_text(shape)} have {c} channels "
            f"but the model expects {channels}; check --layout"
        )
    return lay


def resolve_layout(
    shape: tuple[int, ...], layout: Layout | str | None, *, channels: int | None = None
) -> Layout:
    """An explicit layout (validated) wins; otherwise :func:`detect_layout`."""
    if layout is not None:
        return check_layout(shape, layout, channels=channels)
    return detect_layout(shape, channels=channels)


def to_nchw(x: np.ndarray, layout: Layout | str) -> np.ndarray:
    """Return ``x`` (in ``layout``) as a C-contiguous NCHW array (a view when already NCHW)."""
    lay = Layout.parse(layout)
    if x.ndim != lay.ndim:
        raise ConfigError(
            f"layout {lay.value} needs a {lay.ndim}-D array, got shape {_shape_text(x.shape)}; "
            "pass a layout that fits"
        )
    if lay is Layout.NHW:
        return np.ascontiguousarray(x[:, None, :, :])
    if lay is Layout.NHWC:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return np.ascontiguousarray(x)


def from_nchw(x: np.ndarray, layout: Layout | str) -> np.ndarray:
    """Inverse of :func:`to_nchw`: turn an NCHW array into ``layout``."""
    lay = Layout.parse(layout)
    if x.ndim != 4:
        raise ConfigError(f"expected an NCHW array, got shape {_shape_text(x.shape)}; pass 4-D data")
    if lay is Layout.NHW:
        if x.shape[1] != 1:
            raise ConfigError(
                f"layout NHW holds one channel but the array has {x.shape[1]}; use NCHW or NHWC"
            )
        return np.ascontiguousarray(x[:, 0])
    if lay is Layout.NHWC:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return np.ascontiguousarray(x)
