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
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from ..model.schedule import VPSchedule
from ._base import SOLVERS, Solver, SolverState, _Counter, _steps, register
from ._field import Cond, Field
from ._lattice import DEFAULT_FRAC_BITS, dequantize, quantize, split_remainder

__all__ = ["ReversibleHeun", "Leapfrog", "LatticeCoordinates", "COORDINATES", "Reset"]

#: ``reset(n, which, q) -> q``: called after each sub-update of a decode with the grid index ``n``
#: the state now belongs to and ``which`` in ``{"main", "aux"}``; used by localized editing.
Reset = Callable[[int, str, Tensor], Tensor]


COORDINATES = ("vp", "xbar")


def _check_coordinates(coordinates: str) -> None:
    if coordinates not in COORDINATES:
        raise ValueError(f"unknown coordinates {coordinates!r}; choices: {list(COORDINATES)}")


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

    def __init__(self, frac_bits: int = DEFAULT_FRAC_BITS, coordinates: str = "vp") -> None:
        if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not (8 <= frac_bits <= 52):
            raise ValueError(f"frac_bits must be an int in [8, 52], got {frac_bits!r}")
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

    def _state(self, x: Tensor, aux: Tensor, like: SolverState, s: float) -> SolverState:
        return SolverState(x=x, aux=aux, remainder=like.remainder, dtype=like.dtype, frac_bits=self.frac_bits,
                           scale=self.scale(s))

    def _check(self, state: SolverState, s: float) -> None:
        if not state.is_lattice or state.aux is None or state.aux.dtype != torch.int64:
            raise ValueError(f"{self.name} needs a two-state int64 lattice state, got x of dtype {state.x.dtype}"
                             f" and aux {None if state.aux is None else state.aux.dtype}")
        if state.frac_bits is not None and state.frac_bits != self.frac_bits:
            raise ValueError(f"state has {state.frac_bits} fractional bits, the solver {self.frac_bits}")
        want = self.scale(s)
        if abs(state.scale - want) > 1e-12 * want:
            raise ValueError(f"the state belongs to varsigma with scale {state.scale!r}, but the grid starts "
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

    def _encode(self, field: _Counter, state: SolverState, g: List[float], c: Cond, progress: bool) -> SolverState:
        self._check(state, g[0])
        y, yh = self.encode_pair(field, self.coords(g), state.x, state.aux, state.dtype, c, progress)
        return self._state(y, yh, state, g[-1])

    def _decode(self, field: _Counter, state: SolverState, g: List[float], c: Cond, progress: bool) -> SolverState:
        self._check(state, g[-1])
        y, yh = self.decode_pair(field, self.coords(g), state.x, state.aux, state.dtype, c, progress)
        return self._state(y, yh, state, g[0])

    def encode_pair(self, field: Field, k: LatticeCoordinates, y: Tensor, yh: Tensor, dtype: torch.dtype,
                    c: Cond, progress: bool = False,
                    keep: Optional[List[Tuple[Tensor, Tensor]]] = None) -> Tuple[Tensor, Tensor]:
        """Integrate the lattice pair along ``k`` from its first to its last point; with ``keep``, the pair
        at every grid point (the first included) is appended to it."""
        raise NotImplementedError

    def decode_pair(self, field: Field, k: LatticeCoordinates, y: Tensor, yh: Tensor, dtype: torch.dtype,
                    c: Cond, progress: bool = False, reset: Optional[Reset] = None) -> Tuple[Tensor, Tensor]:
        """The exact inverse of :meth:`encode_pair`; ``reset`` (see :data:`Reset`) is applied after every
        sub-update (with ``reset`` the map is no longer the inverse where it changes the state)."""
        raise NotImplementedError


def _noreset(n: int, which: str, q: Tensor) -> Tensor:
    return q


@register
class ReversibleHeun(_LatticeSolver):
    r"""Reversible Heun (Kidger, Foster, Li, Lyons 2021, Algorithm 1) on the lattice, in $(\rho, x)$.

    State $(y, \hat y)$; with $a_n = Q(\tfrac{h_n}{2} F(\rho_n, \hat y_n))$:
    $\hat y_{n+1} = 2y_n - \hat y_n + 2a_n$, $b_n = Q(\tfrac{h_n}{2} F(\rho_{n+1}, \hat y_{n+1}))$,
    $y_{n+1} = y_n + a_n + b_n$. The inverse recomputes $b_n$, then
    $\hat y_n = 2y_{n+1} - 2b_n - \hat y_{n+1}$, $a_n$, $y_n = y_{n+1} - a_n - b_n$.
    One network evaluation per step (the value at $\hat y$ is carried between steps).
    """

    name = "reversible_heun"

    def encode_pair(self, field, k, y, yh, dtype, c, progress=False, keep=None, reset=None):
        # ``reset`` (applied after every sub-update with the index the state now belongs to) makes this
        # the exact inverse of ``decode_pair`` with the same ``reset`` (proofs/07).
        reset = reset or _noreset
        if keep is not None:
            keep.append((y, yh))
        f = self.drift(field, k, 0, yh, dtype, c)
        for n in _steps(k.g, progress, "encode"):
            h2 = 0.5 * k.h(n)
            a = self._q(f, h2)
            yh = reset(n + 1, "aux", 2 * y - yh + 2 * a)
            f = self.drift(field, k, n + 1, yh, dtype, c)
            y = reset(n + 1, "main", y + a + self._q(f, h2))
            if keep is not None:
                keep.append((y, yh))
        return y, yh

    def decode_pair(self, field, k, y, yh, dtype, c, progress=False, reset=None):
        reset = reset or _noreset
        f = self.drift(field, k, len(k.g) - 1, yh, dtype, c)
        for n in _steps(k.g, progress, "decode", reverse=True):
            h2 = 0.5 * k.h(n)
            b = self._q(f, h2)
            yh = reset(n, "aux", 2 * y - 2 * b - yh)
            f = self.drift(field, k, n, yh, dtype, c)
            y = reset(n, "main", y - self._q(f, h2) - b)
        return y, yh


@register
class Leapfrog(_LatticeSolver):
    r"""Variable-step leapfrog = BDIA with $\gamma = 1$ (Zhang, Lewis, Kleijn 2024) on the lattice, in $(\rho, x)$.

    State $(x_n, x_{n-1})$ (main, aux): $x_{n+1} = x_{n-1} + Q((\rho_{n+1} - \rho_{n-1})
    F(\rho_n, x_n))$ with $\rho_{-1} := \rho_0$, $x_{-1} := x_0$ (the first step is Euler). Inverse:
    $x_{n-1} = x_{n+1} - Q(\dots F(\rho_n, x_n))$. Sampling from noise starts with one Euler step (one
    extra evaluation) to make $x_{N-1}$.
    """

    name = "leapfrog"

    def noise_state(self, field: Field, xbar_T: Tensor, grid: Tensor, c: Cond = None) -> SolverState:
        g = [float(v) for v in grid]
        k = self.coords(g)
        q = self.lattice_noise(xbar_T, g[-1])
        prev = q - self._q(self.drift(field, k, len(g) - 1, q, xbar_T.dtype, c), k.h(len(g) - 2))
        return SolverState(x=q, aux=prev, dtype=xbar_T.dtype, frac_bits=self.frac_bits, scale=self.scale(g[-1]))

    def encode_pair(self, field, k, x, prev, dtype, c, progress=False, keep=None):
        if keep is not None:
            keep.append((x, prev))
        for n in _steps(k.g, progress, "encode"):
            lo = k.rho[n - 1] if n > 0 else k.rho[0]
            nxt = prev + self._q(self.drift(field, k, n, x, dtype, c), k.rho[n + 1] - lo)
            prev, x = x, nxt
            if keep is not None:
                keep.append((x, prev))
        return x, prev

    def decode_pair(self, field, k, x, prev, dtype, c, progress=False, reset=None):
        reset = reset or _noreset
        for n in _steps(k.g, progress, "decode", reverse=True):  # (x, prev) = (x_{n+1}, x_n)
            lo = k.rho[n - 1] if n > 0 else k.rho[0]
            older = x - self._q(self.drift(field, k, n, prev, dtype, c), k.rho[n + 1] - lo)
            x, prev = reset(n, "main", prev), reset(n, "aux", older)
        return x, prev


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
