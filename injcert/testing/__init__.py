"""Helpers for property-based tests, in injcert's own suite and in users' CI.

- :class:`AnalyticMixtureScore` and :func:`flow_map`: a score network known in closed form
  (per-pixel Gaussian mixture) with a certified Lipschitz constant and a reference flow;
- hypothesis strategies (``images``, ``corruptions``, ``masks``, ``conv_layers``, ``networks``,
  ``analytic_problems``) — these need ``hypothesis`` (the ``test`` extra) and are imported lazily;
- assertions (``assert_bound_sound``, ``assert_round_trip_exact``, ``assert_certified``,
  ``exact_jacobian_norm``).
"""

from __future__ import annotations

from typing import Any

from injcert.model.analytic import AnalyticMixtureScore as AnalyticMixtureScore
from injcert.solvers import flow_map as flow_map
from .assertions import assert_bound_sound as assert_bound_sound
from .assertions import assert_certified as assert_certified
from .assertions import assert_round_trip_exact as assert_round_trip_exact
from .assertions import exact_jacobian_norm as exact_jacobian_norm

_STRATEGIES = ("images", "corruptions", "masks", "conv_layers", "networks", "analytic_problems")

__all__ = [
    "AnalyticMixtureScore",
    "flow_map",
    "assert_bound_sound",
    "assert_certified",
    "assert_round_trip_exact",
    "exact_jacobian_norm",
    *_STRATEGIES,
]


def __getattr__(name: str) -> Any:
    if name in _STRATEGIES:
        from . import strategies  # layout: lazy (hypothesis is optional: loaded on first use)

        return getattr(strategies, name)
    raise AttributeError(f"module 'injcert.testing' has no attribute {name!r}")
