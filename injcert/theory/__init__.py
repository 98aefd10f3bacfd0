"""Pure mathematics of injcert: operator norms, Lipschitz bounds, log-determinants, flows.

Nothing here knows about the model; every function acts on layers, callables and tensors.
"""

from __future__ import annotations

from injcert.theory.lipschitz import BoundContext as BoundContext
from injcert.theory.lipschitz import LayerBound as LayerBound
from injcert.theory.lipschitz import LipschitzBound as LipschitzBound
from injcert.theory.lipschitz import concat_bound as concat_bound
from injcert.theory.lipschitz import finite_difference_lower_bound as finite_difference_lower_bound
from injcert.theory.lipschitz import lipschitz_bound as lipschitz_bound
from injcert.theory.lipschitz import lipschitz_lower_bound as lipschitz_lower_bound
from injcert.theory.lipschitz import product_bound as product_bound
from injcert.theory.lipschitz import register_lipschitz_rule as register_lipschitz_rule
from injcert.theory.lipschitz import residual_bound as residual_bound
from injcert.theory.lipschitz import sum_bound as sum_bound
from injcert.theory.spectral import ROUNDING_SLACK as ROUNDING_SLACK
from injcert.theory.spectral import conv_size_independent_bound as conv_size_independent_bound
from injcert.theory.spectral import gram_iteration_bound as gram_iteration_bound
from injcert.theory.spectral import operator_norm_bound as operator_norm_bound
from injcert.theory.spectral import operator_norm_interval as operator_norm_interval
from injcert.theory import traced as _traced  # noqa: F401  (installs the traced fallback rule)

__all__ = [
    "ROUNDING_SLACK",
    "gram_iteration_bound",
    "conv_size_independent_bound",
    "operator_norm_bound",
    "operator_norm_interval",
    "LayerBound",
    "LipschitzBound",
    "BoundContext",
    "register_lipschitz_rule",
    "lipschitz_bound",
    "lipschitz_lower_bound",
    "finite_difference_lower_bound",
    "residual_bound",
    "sum_bound",
    "concat_bound",
    "product_bound",
]
