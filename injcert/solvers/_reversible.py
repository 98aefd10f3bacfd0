r"""Bit-exact two-state integrators on a fixed-point integer lattice (``proofs/03``).

Every sub-update adds to one state the quantised value of a function of the *other* state, so it is
undone exactly by the corresponding integer subtraction. The state is int64 with ``frac_bits``
fractional bits (:mod:`._lattice`); the network is evaluated in the caller's dtype on the
dequantised state, and $Q(h\,F)$ is rounded in float64.

**Coordinates.** The lattice does not hold $\bar x$ but the VP state $x = \alpha\bar x$, integrated
in $\rho = \operatorname{asinh}\varsigma$ (so $\alpha = 1/\cosh\rho$, $\sigma = \tanh\rho$):

$$\frac{dx}{d\rho} = F(\rho, x) = \varepsilon_\theta(x, t, c) - \sigma_t\,x.$$

A volume-preserving two-state scheme has a parasitic mode that grows by the inverse of the flow's
contraction (``proofs/03``). In $\bar x$ the sampling flow contracts by $\approx\varsigma_{\min}
/\varsigma_{\max}$ ($\sim 10^{-4}$) and reversible Heun is useless on a trained model; in $x$ the
contraction is $\approx\varsigma_{\min}$ along the data manifold's normals and $1$ along it, and
reversible Heun becomes second order and more accurate than DDIM at equal NFE (table in
``proofs/03``). At $\varsigma = 0$ both coordinates coincide, so data in and out are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor

from ..model.schedule import VPSchedule
from ..errors import ArgumentError
from ._base import SOLVERS, Reset, Solver, SolverState, register
from ._field import Cond, Field
from ._grid import Grid
from ._lattice import DEFAULT_FRAC_BITS, dequantize, quantize, split_remainder

__all__ = ["ReversibleHeun", "Leapfrog", "LatticeCoordinates", "COORDINATES", "Reset"]


COORDINATES = ("vp", "xbar")


def _check_coordinates(coordinates: str) -> None:
    if coordinates not in COORDINATES:
        raise ArgumentError(f"unknown coordinates {coordinates!r}; choices: {list(COORDINATES)}")


class LatticeCoordinates:
    r"""The integration variable and the lattice scale along a $\varsigma$ grid.

    ``"vp"`` (default): time $\rho = \operatorname{asinh}\varsigma$, state $x = \alpha\bar x$,
    drift $\varepsilon - \sigma x$. ``"xbar"``: time $\varsigma$, state $\bar x$, drift
    $\varepsilon$ (the textbook form; kept as the ablation that ``proofs/03`` measures).

    Arguments:
        g: the $\varsigma$ grid (increasing floats).
        coordinates: one of :data:`COORDINATES`.
    """

    def __init__(self, g: List[float], coordinates: str = "vp") -> None:
        _check_coordinates(coordinates)
        self.g = g
        if coordinates == "vp":
            self.rho = [math.asinh(s) for s in g]
            self.alpha = VPSchedule.alpha_of_varsigma(torch.tensor(g, dtype=torch.float64)).tolist()
            self.sigma = [s * a for s, a in zip(g, self.alpha)]
        else:
            self.rho = list(g)
            self.alpha = [1.0] * len(g)
            self.sigma = [0.0] * len(g)

    def h(self, n: int) -> float:
        r"""The step $\rho_{n+1} - \rho_n$."""
        return self.rho[n + 1] - self.rho[n]


class _LatticeSolver(Solver):
    exact = True
    two_state = True
    supports_reset = True

    def __init__(self, frac_bits: int = DEFAULT_FRAC_BITS, coordinates: str = "vp") -> None:
        if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not (8 <= frac_bits <= 52):
            raise ArgumentError(f"frac_bits must be an int in [8, 52], got {frac_bits!r}")
        _check_coordinates(coordinates)
        self.frac_bits = frac_bits
        self.coordinates = coordinates

    def coords(self, g: List[float]) -> LatticeCoordinates:
        r"""The integration variable and scales of this solver along the $\varsigma$ grid ``g``."""
        return LatticeCoordinates(g, self.coordinates)

    def scale(self, s: float) -> float:
        r"""The lattice holds ``scale(s) * xbar`` at $\varsigma = s$."""
        return float(VPSchedule.alpha_of_varsigma(float(s))) if self.coordinates == "vp" else 1.0

    # helpers -----------------------------------------------------------------------------------
    def _q(self, v: Tensor, scale: float) -> Tensor:
        return quantize(v.to(torch.float64) * scale, self.frac_bits)

    def drift(self, field: Field, k: LatticeCoordinates, n: int, q: Tensor, dtype: torch.dtype, c: Cond) -> Tensor:
        r"""$F(\rho_n, x) = \varepsilon(x) - \sigma_n x$ at the lattice point ``q`` (float64).

        The network sees $\bar x = x/\alpha_n$ through ``field`` (which evaluates it at
        $\alpha_n\bar x$), in ``dtype``.
        """
        x64 = dequantize(q, torch.float64, self.frac_bits)
        eps = field(k.g[n], (x64 / k.alpha[n]).to(dtype), c)
        return eps.to(torch.float64) - k.sigma[n] * x64

    def _check(self, state: SolverState, s: float) -> None:
        if not state.is_lattice or state.aux is None or state.aux.dtype != torch.int64:
            raise ArgumentError(f"{self.name} needs a two-state int64 lattice state, got x of dtype {state.x.dtype}"
                             f" and aux {None if state.aux is None else state.aux.dtype}")
        if state.frac_bits is not None and state.frac_bits != self.frac_bits:
            raise ArgumentError(f"state has {state.frac_bits} fractional bits, the solver {self.frac_bits}")
        want = self.scale(s)
        if abs(state.scale - want) > 1e-12 * want:
            raise ArgumentError(f"the state belongs to varsigma with scale {state.scale!r}, but the grid starts "
                             f"at varsigma = {s!r} (scale {want!r}): wrong grid for this state")

    # entry points ------------------------------------------------------------------------------
    def initial_state(self, x0bar: Tensor) -> SolverState:
        q, r = split_remainder(x0bar, self.frac_bits)
        return SolverState(x=q, aux=q.clone(), remainder=r, dtype=x0bar.dtype, frac_bits=self.frac_bits)

    def lattice_noise(self, xbar_T: Tensor, s: float) -> Tensor:
        r"""The lattice point of ``scale(s)`` $\cdot\,\bar x_T$ (rounded once, in float64)."""
        return quantize(xbar_T.to(torch.float64) * self.scale(s), self.frac_bits)

    def noise_state(self, field: Field, xbar_T: Tensor, grid: Tensor, c: Cond = None) -> SolverState:
        s = float(grid[-1])
        q = self.lattice_noise(xbar_T, s)
        return SolverState(x=q, aux=q.clone(), dtype=xbar_T.dtype, frac_bits=self.frac_bits, scale=self.scale(s))

    def prepare(self, g: List[float]) -> LatticeCoordinates:
        return self.coords(g)

    def check_state(self, state: SolverState, plan: LatticeCoordinates, s: float) -> None:
        self._check(state, s)

    def _pair(self, y: Tensor, yh: Tensor, like: SolverState, k: LatticeCoordinates, n: int,
              own: Any = None) -> SolverState:
        return SolverState(x=y, aux=yh, remainder=like.remainder, dtype=like.dtype, frac_bits=self.frac_bits,
                           scale=self.scale(k.g[n]), own=own)


def _noreset(n: int, which: str, q: Tensor) -> Tensor:
    return q


@dataclass(frozen=True)
class _HeunState:
    r"""Reversible Heun's own state: the drift $F$ at ``aux`` (and the state's grid point), computed by
    the step that made the state and reused by the next step of the same run (one evaluation per step)."""
    carry: Tensor


@register
class ReversibleHeun(_LatticeSolver):
    r"""Reversible Heun (Kidger, Foster, Li, Lyons 2021, Algorithm 1) on the lattice, in $(\rho, x)$.

    State $(y, \hat y)$; with $a_n = Q(\tfrac{h_n}{2} F(\rho_n, \hat y_n))$:
    $\hat y_{n+1} = 2y_n - \hat y_n + 2a_n$, $b_n = Q(\tfrac{h_n}{2} F(\rho_{n+1}, \hat y_{n+1}))$,
    $y_{n+1} = y_n + a_n + b_n$. The inverse recomputes $b_n$, then
    $\hat y_n = 2y_{n+1} - 2b_n - \hat y_{n+1}$, $a_n$, $y_n = y_{n+1} - a_n - b_n$.
    One network evaluation per step: the value $F(\rho_n, \hat y_n)$ is carried in the solver's own
    state (``_HeunState``) between the steps of one run. With the same ``reset`` hooks, :meth:`unstep` is the exact
    inverse of :meth:`step` (``proofs/07``).
    """

    name = "reversible_heun"

    def _f(self, field: Field, k: LatticeCoordinates, n: int, state: SolverState, c: Cond) -> Tensor:
        if isinstance(state.own, _HeunState):
            return state.own.carry
        return self.drift(field, k, n, state.aux, state.dtype, c)

    def step(self, field: Field, k: LatticeCoordinates, n: int, state: SolverState, c: Cond,
             reset: Optional[Reset] = None) -> SolverState:
        reset = reset or _noreset
        y, yh, h2 = state.x, state.aux, 0.5 * k.h(n)
        a = self._q(self._f(field, k, n, state, c), h2)
        yh = reset(n + 1, "aux", 2 * y - yh + 2 * a)
        f = self.drift(field, k, n + 1, yh, state.dtype, c)
        y = reset(n + 1, "main", y + a + self._q(f, h2))
        return self._pair(y, yh, state, k, n + 1, _HeunState(f))

    def unstep(self, field: Field, k: LatticeCoordinates, n: int, state: SolverState, c: Cond,
               reset: Optional[Reset] = None) -> SolverState:
        reset = reset or _noreset
        y, yh, h2 = state.x, state.aux, 0.5 * k.h(n)
        b = self._q(self._f(field, k, n + 1, state, c), h2)
        yh = reset(n, "aux", 2 * y - 2 * b - yh)
        f = self.drift(field, k, n, yh, state.dtype, c)
        y = reset(n, "main", y - self._q(f, h2) - b)
        return self._pair(y, yh, state, k, n, _HeunState(f))


@register
class Leapfrog(_LatticeSolver):
    r"""Variable-step leapfrog = BDIA with $\gamma = 1$ (Zhang, Lewis, Kleijn 2024) on the lattice, in $(\rho, x)$.

    State $(x_n, x_{n-1})$ (main, aux): $x_{n+1} = x_{n-1} + Q((\rho_{n+1} - \rho_{n-1})
    F(\rho_n, x_n))$ with $\rho_{-1} := \rho_0$, $x_{-1} := x_0$ (the first step is Euler). Inverse:
    $x_{n-1} = x_{n+1} - Q(\dots F(\rho_n, x_n))$. Sampling from noise starts with one Euler step (one
    extra evaluation) to make $x_{N-1}$.
    """

    name = "leapfrog"

    def noise_state(self, field: Field, xbar_T: Tensor, grid: Any, c: Cond = None) -> SolverState:
        g = Grid.coerce(grid).points()
        k = self.coords(g)
        q = self.lattice_noise(xbar_T, g[-1])
        prev = q - self._q(self.drift(field, k, len(g) - 1, q, xbar_T.dtype, c), k.h(len(g) - 2))
        return SolverState(x=q, aux=prev, dtype=xbar_T.dtype, frac_bits=self.frac_bits, scale=self.scale(g[-1]))

    @staticmethod
    def _span(k: LatticeCoordinates, n: int) -> float:
        return k.rho[n + 1] - (k.rho[n - 1] if n > 0 else k.rho[0])

    def step(self, field: Field, k: LatticeCoordinates, n: int, state: SolverState, c: Cond,
             reset: Optional[Reset] = None) -> SolverState:
        reset = reset or _noreset
        x, prev = state.x, state.aux
        nxt = prev + self._q(self.drift(field, k, n, x, state.dtype, c), self._span(k, n))
        return self._pair(reset(n + 1, "main", nxt), reset(n + 1, "aux", x), state, k, n + 1)

    def unstep(self, field: Field, k: LatticeCoordinates, n: int, state: SolverState, c: Cond,
               reset: Optional[Reset] = None) -> SolverState:
        reset = reset or _noreset
        x, prev = state.x, state.aux  # (x_{n+1}, x_n)
        older = x - self._q(self.drift(field, k, n, prev, state.dtype, c), self._span(k, n))
        return self._pair(reset(n, "main", prev), reset(n, "aux", older), state, k, n)


# The default bit-exact scheme, ``method="reversible"``: reversible Heun in (rho, x), which beats both
# leapfrog/BDIA and DDIM at equal NFE from 20 steps up (measured table in ``proofs/03``).
SOLVERS["reversible"] = ReversibleHeun


@register
class ReversibleHeunXbar(ReversibleHeun):
    r"""Reversible Heun in the textbook coordinates $(\varsigma, \bar x)$: the ablation of ``proofs/03``
    (bit-exact too, but its parasitic mode grows by $\approx\varsigma_{\max}/\varsigma_{\min}$ and it
    samples poorly from a trained model)."""

    name = "reversible_heun_xbar"

    def __init__(self, frac_bits: int = DEFAULT_FRAC_BITS) -> None:
        super().__init__(frac_bits, coordinates="xbar")
