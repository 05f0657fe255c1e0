"""Registry of pre-processing defences. Every :class:`DefenceName` maps to its class (a test walks
every member), so a defence cannot be half-registered."""

from __future__ import annotations

from robaudit.defences.interface import DefenceName, Preprocessor
from robaudit.defences.jpeg import JpegCompression
from robaudit.defences.spatial_smoothing import SpatialSmoothing
from robaudit.defences.tvm import TotalVarMin

DEFENCES: dict[DefenceName, type[Preprocessor]] = {
    DefenceName.SS: SpatialSmoothing,
    DefenceName.JPEG: JpegCompression,
    DefenceName.TVM: TotalVarMin,
}
"""Every defence's class, by name."""


def get_defence_class(name: DefenceName | str) -> type[Preprocessor]:
    """The class for ``name`` (a member or its string); unknown names are a ``ConfigError``."""
    member = name if isinstance(name, DefenceName) else DefenceName.parse(name)
    return DEFENCES[member]
