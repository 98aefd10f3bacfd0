r"""The entry ``lipschitz_bound``: the certified, size-independent Lipschitz bound $L$ of
$\varepsilon_\theta$ in $x$ (``proofs/05-compositional-lipschitz.md``) and its comparison with the
declared budget.

Every later entry needs $L$, so :class:`~injcert.certify.context.CertContext` computes it (once)
through :func:`certified_lipschitz`; :func:`check` reports it. Both bounds the certificate uses —
$L$ of the network and $L_{64}$ of its float64 copy (:func:`float64_bound`) — are computed in
:mod:`injcert.certify.bounds` (below the context, which imports it) and re-exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .bounds import certified_lipschitz, float64_bound, grid_profile, pointwise_lipschitz
from .result import SKIPPED, THEOREMS, Property

if TYPE_CHECKING:  # pragma: no cover - annotations only (context imports .bounds, not this module)
    from .context import CertContext

__all__ = ["check", "certified_lipschitz", "float64_bound", "not_evaluated", "NEEDS_BOUND", "pointwise_lipschitz",
           "grid_profile"]

#: The entries evaluated from $L$: reported ``SKIPPED`` when there is no certified bound.
NEEDS_BOUND = ("drift_lipschitz", "flow_bilipschitz", "integrator", "logdet_interval")


def check(ctx: "CertContext") -> list[Property]:
    """``lipschitz_bound`` (and the per-layer bounds into ``ctx.data["layers"]`` for the figures)."""
    prop = ctx.lipschitz[0]
    ctx.data["layers"] = prop.details.get("layers", [])
    return [prop]


def not_evaluated() -> list[Property]:
    """The :data:`NEEDS_BOUND` entries, ``SKIPPED`` because there is no certified bound."""
    return [Property(name, SKIPPED, "certified", None, None, THEOREMS["lipschitz"],
                     "not evaluated: no certified Lipschitz bound", {}) for name in NEEDS_BOUND]
