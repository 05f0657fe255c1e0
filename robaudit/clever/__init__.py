"""CLEVER robustness scores (Weng et al., ICLR 2018): sampling, gradients, reverse Weibull fits,
and the comparison with minimal distortions found by attacks. See ``docs/clever.md``."""

from robaudit.clever.estimate import estimate
from robaudit.clever.interface import (DEFAULT_RADIUS, WEIBULL_SHAPES, ClassEstimate, CleverNorm, CleverParams,
                                       CleverRun, InputEstimate, WeibullFit)
from robaudit.clever.sampling import sample_ball, sample_delta, unit_seed
from robaudit.clever.weibull import clever_score, fit_reverse_weibull, fit_reverse_weibull_many

__all__ = ["DEFAULT_RADIUS", "WEIBULL_SHAPES", "ClassEstimate", "CleverNorm", "CleverParams", "CleverRun",
           "InputEstimate", "WeibullFit", "clever_score", "estimate", "fit_reverse_weibull", "fit_reverse_weibull_many",
           "sample_ball", "sample_delta", "unit_seed"]
