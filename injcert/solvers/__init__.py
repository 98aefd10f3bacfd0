r"""Integrators of the probability-flow ODE $d\bar x/d\varsigma = \varepsilon_\theta(\alpha\bar x, t(\varsigma), c)$.

One loop, :func:`integrate`, runs every integrator: a solver only defines its steps
(``step``, ``unstep``, see :class:`Solver`). Every integrator takes the same field
``field(s, xbar, c)`` and a :class:`Grid` of $\varsigma$ values, and is looked up by name in
:data:`SOLVERS`:

- ``ddim``: Euler in $\varsigma$ (DDIM); run backwards it is naive DDIM inversion (approximate).
- ``fixed_point``: Euler encode; decode inverts each Euler step by a certified fixed-point
  iteration (``proofs/02``), recording a per-step error bound.
- ``reversible``: the default bit-exact scheme (``proofs/03``); see :class:`ReversibleHeun`
  and :class:`Leapfrog` for the alternatives it was measured against.
- ``dopri5``: torchdiffeq's adaptive solver, the accuracy reference.
"""

from __future__ import annotations

from ._base import DIRECTIONS as DIRECTIONS
from ._base import SOLVERS as SOLVERS
from ._base import Reset as Reset
from ._base import integrate as integrate
from ._base import Solver as Solver
from ._base import SolverState as SolverState
from ._base import get_solver as get_solver
from ._ddim import DDIM as DDIM
from ._ddim import euler_step as euler_step
from ._fixed_point import FixedPoint as FixedPoint
from ._dopri5 import Dopri5 as Dopri5
from ._dopri5 import flow_map as flow_map
from ._field import Field as Field
from ._field import ProbabilityFlowField as ProbabilityFlowField
from ._field import probability_flow_field as probability_flow_field
from ._field import unit_roundoff as unit_roundoff
from ._grid import GRIDS as GRIDS
from ._grid import Grid as Grid
from ._grid import make_grid as make_grid
from ._lattice import DEFAULT_FRAC_BITS as DEFAULT_FRAC_BITS
from ._lattice import dequantize as dequantize
from ._lattice import quantize as quantize
from ._reversible import Leapfrog as Leapfrog
from ._reversible import ReversibleHeun as ReversibleHeun

__all__ = [
    "integrate", "DIRECTIONS", "Reset", "Grid", "euler_step",
    "SOLVERS", "Solver", "SolverState", "get_solver", "DDIM", "Dopri5", "Field", "ProbabilityFlowField",
    "probability_flow_field", "unit_roundoff", "GRIDS", "make_grid", "DEFAULT_FRAC_BITS", "dequantize", "quantize",
    "Leapfrog", "ReversibleHeun", "FixedPoint", "flow_map",
]
