"""The one shape every loaded dataset takes in robaudit.

Whatever the file format (``.npz``, an image folder, MNIST IDX, CIFAR-10 binary batches), the
loader returns a :class:`Dataset`: float32 images in NCHW layout with values inside the
declared pixel range, int64 class labels, and the provenance the report needs (path, format,
content hash, the layout found in the file, and notes about every conversion made).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from robaudit.errors import ConfigError, DataLoadError


class Layout(StrEnum):
    """Axis order of an image array."""

    NCHW = "NCHW"
    """Batch, channels, height, width (what robaudit uses everywhere)."""
    NHWC = "NHWC"
    """Batch, height, width, channels (TensorFlow/Keras, PIL, most ``.npz`` exports)."""
    NHW = "NHW"
    """Batch, height, width: single-channel images without a channel axis."""

    @classmethod
    def parse(cls, value: str | Layout) -> Layout:
        """Parse a user-given layout name (case-insensitive); ConfigError when unknown."""
        if isinstance(value, Layout):
            return value
        try:
            return cls(str(value).strip().upper())
        except ValueError:
            choices = "|".join(m.value for m in cls)
            raise ConfigError(f"unknown layout {value!r}; pass --layout {choices}") from None

    @property
    def ndim(self) -> int:
        """Number of array dimensions this layout describes."""
        return 3 if self is Layout.NHW else 4


class DataFormat(StrEnum):
    """File formats the loader understands."""

    NPZ = "npz"
    FOLDER = "folder"
    IDX = "idx"
    CIFAR_BINARY = "cifar-binary"


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels ready for attacks, plus where they came from.

    ``eq=False``: datasets hold arrays, so they compare by identity.
    Arrays are owned by the dataset; treat them as read-only.
    """

    x: np.ndarray
    """Images, float32, shape (N, C, H, W), values inside ``value_range``."""
    y: np.ndarray
    """Class indices, int64, shape (N,), non-negative."""
    source: str
    """Path as given by the user."""
    format: str
    """One of :class:`DataFormat`: ``npz``, ``folder``, ``idx`` or ``cifar-binary``."""
    sha256: str
    """Hash of the file; for several files (folder, IDX pair, CIFAR batches) the hash of a
    ``sha256sum``-style manifest (``<hex>  <relative path>`` lines sorted by path)."""
    layout_in: str
    """Layout found in the file (a :class:`Layout` value) before conversion to NCHW."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Human-readable remarks on conversions made, e.g. ``scaled uint8 [0,255] to [0,1]``."""
    value_range: tuple[float, float] = (0.0, 1.0)
    """Pixel range the values of ``x`` lie in."""
    class_names: tuple[str, ...] = ()
    """Class names when the source names them (folder names, CIFAR-10 labels), else empty."""
    n_total: int = -1
    """Number of samples in the source; differs from ``len(x)`` after sampling.
    Left at -1 it is set to ``len(x)``."""

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
            raise DataLoadError(
                f"internal: Dataset.x must be a float32 NCHW array, got "
                f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}; report this bug"
            )
        if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (x.shape[0],):
            raise DataLoadError(
                f"internal: Dataset.y must be int64 of shape ({x.shape[0]},), got "
                f"{getattr(y, 'dtype', type(y))} {getattr(y, 'shape', '')}; report this bug"
            )
        if self.n_total < 0:
            object.__setattr__(self, "n_total", int(x.shape[0]))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        _, c, h, w = self.x.shape
        return (int(c), int(h), int(w))

    @property
    def num_channels(self) -> int:
        return int(self.x.shape[1])

    def subset(self, indices: np.ndarray, note: str | None = None) -> Dataset:
        """A new dataset holding rows ``indices`` (copied), same provenance, plus ``note``."""
        idx = np.asarray(indices, dtype=np.int64)
        notes = self.notes + ((note,) if note else ())
        return Dataset(
            x=self.x[idx],
            y=self.y[idx],
            source=self.source,
            format=self.format,
            sha256=self.sha256,
            layout_in=self.layout_in,
            notes=notes,
            value_range=self.value_range,
            class_names=self.class_names,
            n_total=self.n_total,
        )

    def to_dict(self) -> dict[str, object]:
        """What the report says about the data."""
        return {
            "path": self.source,
            "format": str(self.format),
            "sha256": self.sha256,
            "n_total": self.n_total,
            "notes": list(self.notes),
        }
