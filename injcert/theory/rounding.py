r"""Outward rounding: the one home of every helper that moves a float64 bound away from the truth.

A certified upper bound computed in floating point is only sound once the rounding of its last
operations is charged. Two kinds of charge are used in injcert (``proofs/08``, "Rounding"):

* **ulp steps** (:func:`next_up`, :func:`next_down`, :func:`fraction_up`): for a value that is
  within half an ulp of the exact one (one correctly rounded operation), one step towards
  $\pm\infty$ makes it a bound. :func:`fraction_up` is exact: the smallest float $\ge$ a rational.
* **relative slack** (:func:`round_up`, :func:`round_down`): multiply by $1 \pm 2^{-40}$, which
  covers the error of a short chain of float64 operations ($k$ operations err by at most
  $k\,2^{-53}$ relative; $2^{-40}$ covers $k \le 8192$), the error of ``math.exp``/``math.log1p``/
  ``math.asinh`` (a few ulps), and the float64 evaluation of schedule functions.

Nothing here imports any other part of injcert.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional

__all__ = ["REL_SLACK", "EPS64", "next_up", "next_down", "fraction_up", "round_up", "round_down"]

#: The relative slack of :func:`round_up` / :func:`round_down`.
REL_SLACK = 2.0**-40
#: The float64 machine epsilon (spacing of floats at 1).
EPS64 = 2.0**-52


def next_up(v: float, ulps: int = 1) -> float:
    """``v`` moved ``ulps`` floats towards ``+inf`` (``inf`` and ``nan`` pass through)."""
    v = float(v)
    for _ in range(int(ulps)):
        v = math.nextafter(v, math.inf)
    return v


def next_down(v: float, ulps: int = 1) -> float:
    """``v`` moved ``ulps`` floats towards ``-inf``."""
    v = float(v)
    for _ in range(int(ulps)):
        v = math.nextafter(v, -math.inf)
    return v


def fraction_up(exact: Optional[Fraction]) -> float:
    """The smallest float ``>= exact`` (``inf`` for ``None`` or overflow)."""
    if exact is None:
        return math.inf
    try:
        v = float(exact)  # correctly rounded (nearest)
    except OverflowError:
        return math.inf
    if not math.isinf(v) and Fraction(v) < exact:
        v = math.nextafter(v, math.inf)
    return v


def round_up(x: float) -> float:
    """``x`` moved up by the relative slack :data:`REL_SLACK` (``inf`` passes, ``nan`` becomes ``inf``)."""
    x = float(x)
    if not math.isfinite(x) or x == 0.0:
        return x if x == x else math.inf
    return x * (1.0 + REL_SLACK) if x > 0 else x * (1.0 - REL_SLACK)


def round_down(x: float) -> float:
    """``x`` moved down by the relative slack :data:`REL_SLACK` (``nan`` becomes ``-inf``)."""
    x = float(x)
    if not math.isfinite(x) or x == 0.0:
        return x if x == x else -math.inf
    return x * (1.0 - REL_SLACK) if x > 0 else x * (1.0 + REL_SLACK)
