"""The integrator interface, its state, and the name -> class registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, ClassVar, Dict, List, Optional, Type, Union

import torch
from torch import Tensor

from ._field import Cond, Field
from ._lattice import DEFAULT_FRAC_BITS, dequantize

__all__ = ["SolverState", "Solver", "SOLVERS", "register", "get_solver"]


@dataclass
class SolverState:
    r"""An integrator's state at one end of the grid.

    Attributes:
        x: the main state: a float $\bar x$, or an int64 lattice tensor for the exact schemes, which
            holds ``scale`` $\cdot\,\bar x$ (the VP state $x = \alpha\bar x$, see :mod:`._reversible`).
        aux: the second state of a two-state scheme (same kind as ``x``), else ``None``.
        remainder: float64 rounding remainder of the encoded input (lattice schemes only):
            ``x0 == dequantize(x_0) + remainder`` exactly; it is carried through and added back
            by :meth:`value` so that decoding reproduces the input bit for bit.
        dtype: the float dtype the network is evaluated in (and of :meth:`value`).
        frac_bits: fractional bits of the lattice (lattice schemes only).
        scale: the lattice holds ``scale * xbar``; $\alpha(\varsigma)$ of the state's end of the grid
            (exactly 1 at $\varsigma = 0$, so data in and out is unscaled).
        nfe: network evaluations spent by the call that produced this state.
        error_bounds: per-step certified error bounds (``fixed_point`` decode only), in grid order.
        error_bound: certified bound on the whole decode's distance to the exact inverse of the
            encode map, propagated through the steps (``fixed_point`` decode only; exact arithmetic
            for the field, i.e. up to the rounding of the field evaluations).
    """

    x: Tensor
    aux: Optional[Tensor] = None
    remainder: Optional[Tensor] = None
    dtype: torch.dtype = torch.float32
    frac_bits: Optional[int] = None
    scale: float = 1.0
    nfe: int = 0
    error_bounds: List[float] = dc_field(default_factory=list)
    error_bound: Optional[float] = None

    @property
    def is_lattice(self) -> bool:
        return self.x.dtype == torch.int64

    def main_value(self) -> Tensor:
        r"""The main state as a float $\bar x$ in :attr:`dtype` (no remainder)."""
        if self.is_lattice:
            return self._lattice_value(with_remainder=False)
        return self.x.to(self.dtype)

    def value(self) -> Tensor:
        r"""The main state with the stored remainder added back (exact in float64), in :attr:`dtype`."""
        if not self.is_lattice:
            return self.x.to(self.dtype)
        return self._lattice_value(with_remainder=True)

    def _lattice_value(self, with_remainder: bool) -> Tensor:
        # float64 throughout: the remainder addition is exact, and scale == 1 at varsigma = 0 divides by nothing
        v = dequantize(self.x, torch.float64, self.frac_bits or DEFAULT_FRAC_BITS)
        if with_remainder and self.remainder is not None:
            v = v + self.remainder
        return (v if self.scale == 1.0 else v / self.scale).to(self.dtype)


class _Counter:
    """Counts calls of a field."""

    def __init__(self, field: Field) -> None:
        self.field = field
        self.count = 0

    def __call__(self, s: float, xbar: Tensor, c: Cond) -> Tensor:
        self.count += 1
        out = self.field(s, xbar, c)
        if out.shape != xbar.shape:
            raise ValueError(f"the field returned shape {tuple(out.shape)} for a state of shape {tuple(xbar.shape)}")
        return out


def _check_grid(grid: Tensor) -> List[float]:
    if not isinstance(grid, Tensor) or grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"grid must be a 1-D tensor with at least 2 points, got {grid!r}")
    g = [float(v) for v in grid.to(torch.float64)]
    if any(b <= a for a, b in zip(g, g[1:])):
        raise ValueError("grid must be strictly increasing (encode runs along it, decode against it)")
    return g


def _steps(g: List[float], progress: bool, desc: str, reverse: bool = False):
    idx = range(len(g) - 2, -1, -1) if reverse else range(len(g) - 1)
    if progress:
        try:
            from tqdm.auto import tqdm

            return tqdm(idx, desc=desc, total=len(g) - 1)
        except ImportError:  # pragma: no cover - tqdm is optional
            pass
    return idx


class Solver(ABC):
    r"""An integrator of $d\bar x/d\varsigma = f(\varsigma, \bar x, c)$ along a $\varsigma$ grid.

    ``encode`` integrates from ``grid[0]`` ($\varsigma = 0$, data) to ``grid[-1]`` (noise);
    ``decode`` integrates back. Both take the field, a state (or a plain float tensor $\bar x$),
    the grid and the conditioning, and return a :class:`SolverState`.
    """

    name: ClassVar[str] = "abstract"
    #: decode(encode(x)) == x bit for bit.
    exact: ClassVar[bool] = False
    #: the state has a second component.
    two_state: ClassVar[bool] = False

    def initial_state(self, x0bar: Tensor) -> SolverState:
        r"""The state at $\varsigma = 0$ for the data point $\bar x_0 = x_0$."""
        return SolverState(x=x0bar, dtype=x0bar.dtype)

    def noise_state(self, field: Field, xbar_T: Tensor, grid: Tensor, c: Cond = None) -> SolverState:
        r"""The state at $\varsigma_{\max}$ for a plain $\bar x_T$ (sampling); two states start equal."""
        return SolverState(x=xbar_T, dtype=xbar_T.dtype)

    def encode(self, field: Field, x0: Union[Tensor, SolverState], grid: Tensor, c: Cond = None,
               *, progress: bool = False) -> SolverState:
        """Integrate from ``grid[0]`` to ``grid[-1]``; ``x0`` is $\\bar x_0$ or a full state."""
        state = x0 if isinstance(x0, SolverState) else self.initial_state(x0)
        counter = _Counter(field)
        out = self._encode(counter, state, _check_grid(grid), c, progress)
        out.nfe = counter.count
        return out

    def decode(self, field: Field, state: Union[Tensor, SolverState], grid: Tensor, c: Cond = None,
               *, progress: bool = False) -> SolverState:
        """Integrate from ``grid[-1]`` to ``grid[0]``; ``state`` is $\\bar x_T$ or a full state."""
        counter = _Counter(field)
        g = _check_grid(grid)
        if not isinstance(state, SolverState):
            state = self.noise_state(counter, state, grid, c)
        out = self._decode(counter, state, g, c, progress)
        out.nfe = counter.count
        return out

    @abstractmethod
    def _encode(self, field: _Counter, state: SolverState, g: List[float], c: Cond, progress: bool) -> SolverState: ...

    @abstractmethod
    def _decode(self, field: _Counter, state: SolverState, g: List[float], c: Cond, progress: bool) -> SolverState: ...


SOLVERS: Dict[str, Type[Solver]] = {}


def register(cls: Type[Solver]) -> Type[Solver]:
    SOLVERS[cls.name] = cls
    return cls


def get_solver(name: Union[str, Solver], **options: Any) -> Solver:
    """The integrator called ``name`` (options go to its constructor); a :class:`Solver` passes through.

    Raises:
        ValueError: an unknown name; the message lists the choices.
    """
    if isinstance(name, Solver):
        return name
    if not isinstance(name, str) or name not in SOLVERS:
        raise ValueError(f"unknown method {name!r} of type {type(name).__name__}; choices: {sorted(SOLVERS)}")
    return SOLVERS[name](**options)
