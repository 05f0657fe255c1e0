"""Metrics: perturbation distances and success summaries."""

from robaudit.metrics.distances import Distances, perturbation_norms, summarize

__all__ = ["Distances", "perturbation_norms", "summarize"]
