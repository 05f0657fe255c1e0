"""Pre-processing defences of the study: spatial smoothing (``ss``), JPEG compression (``jpeg``)
and total variance minimisation (``tvm``), alone or stacked, in front of any classifier.

* :mod:`~robaudit.defences.interface`: :class:`DefenceName`, the :class:`Preprocessor` base and
  parameter parsing;
* one module per defence: :mod:`~robaudit.defences.spatial_smoothing`,
  :mod:`~robaudit.defences.jpeg`, :mod:`~robaudit.defences.tvm`;
* :mod:`~robaudit.defences.registry`: :data:`DEFENCES`, name -> class, exhaustive;
* :mod:`~robaudit.defences.stack`: stacks with BPDA, :class:`DefendedClassifier` with EOT, and
  :func:`defend_model`.

Adversarial training lives in :mod:`robaudit.defences.adv_training` (not imported here).
"""

from __future__ import annotations

from robaudit.defences.interface import DefenceName, DefenceParams, Preprocessor, defence_names, params_from_mapping
from robaudit.defences.jpeg import JpegCompression, JpegParams
from robaudit.defences.registry import DEFENCES, get_defence_class
from robaudit.defences.spatial_smoothing import SpatialSmoothing, SpatialSmoothingParams
from robaudit.defences.stack import (
    ALL_COMBINATIONS,
    DefenceStack,
    DefendedClassifier,
    all_combinations,
    build_stack,
    defend_model,
    parse_stack,
    parse_stacks,
    reseed_defences,
)
from robaudit.defences.tvm import TotalVarMin, TvmParams

__all__ = [
    "DEFENCES",
    "DefenceName",
    "DefenceParams",
    "DefenceStack",
    "DefendedClassifier",
    "JpegCompression",
    "JpegParams",
    "Preprocessor",
    "SpatialSmoothing",
    "SpatialSmoothingParams",
    "TotalVarMin",
    "TvmParams",
    "all_combinations",
    "build_stack",
    "defence_names",
    "defend_model",
    "get_defence_class",
    "params_from_mapping",
    "ALL_COMBINATIONS",
    "parse_stack",
    "parse_stacks",
    "reseed_defences",
]
