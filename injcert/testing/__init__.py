"""Test helpers for users' CI: an analytic-score problem (and, later, hypothesis strategies)."""

from __future__ import annotations

from .analytic import AnalyticMixtureScore as AnalyticMixtureScore
from .analytic import flow_map as flow_map

__all__ = ["AnalyticMixtureScore", "flow_map"]
