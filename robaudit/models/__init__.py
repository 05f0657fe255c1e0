"""Model layer: load TorchScript / ONNX models behind one interface.

``load_model`` returns a :class:`Classifier`; pickled checkpoints and torch.export ``.pt2``
archives are refused because loading them can run arbitrary code (see :mod:`.loader`).
"""

from robaudit.models.checks import (
    GradientCheck,
    batch_dependent,
    gradient_check,
    is_stochastic,
    looks_like_probabilities,
)
from robaudit.models.interface import Classifier, ModelInfo
from robaudit.models.loader import FORMATS, load_model, sniff_format

__all__ = [
    "FORMATS",
    "Classifier",
    "GradientCheck",
    "ModelInfo",
    "batch_dependent",
    "gradient_check",
    "is_stochastic",
    "load_model",
    "looks_like_probabilities",
    "sniff_format",
]
