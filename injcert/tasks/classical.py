"""Classical restorations, moved to :mod:`injcert.data.classical` (below the model, which uses them).

This module re-exports them under their old path: the public names below and, through
``__getattr__``, the private helpers the benchmarks read (``_lsmr_local``, ...).
"""

from __future__ import annotations

from typing import Any

from ..data import classical as _classical
from ..data.classical import LSMR_ITERATIONS as LSMR_ITERATIONS
from ..data.classical import METHODS as METHODS
from ..data.classical import LocalBlurSystem as LocalBlurSystem
from ..data.classical import classical_estimate as classical_estimate
from ..data.classical import default_method as default_method
from ..data.classical import gaussian_psf as gaussian_psf

__all__ = list(_classical.__all__)


def __getattr__(name: str) -> Any:
    """Every other name of :mod:`injcert.data.classical` (its private helpers), from the old path."""
    try:
        return getattr(_classical, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
