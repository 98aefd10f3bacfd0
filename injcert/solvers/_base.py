"""The integrator interface, its state, the one integration loop (:func:`integrate`), and the
name -> class registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
import dataclasses
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, ClassVar, Dict, List, Optional, Type, Union

import torch
from torch import Tensor

from ..errors import ArgumentError
from ._field import Cond, Field
from ._grid import Grid
from ._lattice import DEFAULT_FRAC_BITS, dequantize

__all__ = ["SolverState", "Solver", "SOLVERS", "Reset", "register", "get_solver", "integrate", "DIRECTIONS"]

#: The two directions of :func:`integrate`: ``"encode"`` (data to noise) and ``"decode"``.
DIRECTIONS = ("encode", "decode")


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
        own: the solver's own small state (its ``State`` dataclass, e.g. reversible Heun's drift,
            ``fixed_point``'s per-step bounds), opaque to the driver: :func:`integrate` starts every
            run with ``None`` and keeps of it only what :meth:`Solver.rest` says outlives a step.

    The solver-specific results are read through properties of :attr:`own`: :attr:`error_bounds`,
    :attr:`error_bound` and :attr:`margins` (``fixed_point`` decode), :attr:`carry`.
    """

    x: Tensor
    aux: Optional[Tensor] = None
    remainder: Optional[Tensor] = None
    dtype: torch.dtype = torch.float32
    frac_bits: Optional[int] = None
    scale: float = 1.0
    nfe: int = 0
    own: Any = dc_field(default=None, repr=False)

    @property
    def error_bounds(self) -> List[float]:
        """Per-step certified error bounds (``fixed_point`` decode only), in grid order."""
        return list(getattr(self.own, "error_bounds", ()))

    @property
    def error_bound(self) -> Optional[float]:
        """Certified bound on the whole decode's distance to the exact inverse of the encode map,
        propagated through the steps (``fixed_point`` decode only; exact arithmetic for the field,
        i.e. up to the rounding of the field evaluations)."""
        return getattr(self.own, "error_bound", None)

    @property
    def margins(self) -> List[float]:
        """The certified margins $q_n = h_nL_n$ of those steps, in the same order (``fixed_point`` decode only)."""
        return list(getattr(self.own, "margins", ()))

    @property
    def carry(self) -> Optional[Tensor]:
        """The value a scheme carries from one step to the next within one run (reversible Heun's
        drift at ``aux``, ``fixed_point``'s last drift); ``None`` outside a run: it never outlives
        the state it was computed from."""
        return getattr(self.own, "carry", None)

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
    """Counts calls of a field (and checks the shape it returns); other attributes (``lipschitz``,
    ``schedule``) are those of the wrapped field."""

    def __init__(self, field: Field) -> None:
        self.field = field
        self.count = 0

    def __call__(self, s: float, xbar: Tensor, c: Cond) -> Tensor:
        self.count += 1
        out = self.field(s, xbar, c)
        if out.shape != xbar.shape:
            raise ArgumentError(f"the field returned shape {tuple(out.shape)} for a state of shape {tuple(xbar.shape)}")
        return out

    def __getattr__(self, name: str) -> Any:
        if name == "field":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.field, name)


#: ``reset(n, which, q) -> q``: called by the exact schemes after each sub-update with the grid index
#: ``n`` the state now belongs to and ``which`` in ``{"main", "aux"}`` (localized editing).
Reset = Callable[[int, str, Tensor], Tensor]


class Solver(ABC):
    r"""An integrator of $d\bar x/d\varsigma = f(\varsigma, \bar x, c)$ along a $\varsigma$ grid.

    A solver is defined by its steps; :func:`~injcert.solvers.integrate` owns the loop:

    - :meth:`prepare` turns the grid's points into the constants its steps use (a *plan*);
    - :meth:`step` takes the state from grid point ``n`` to ``n + 1`` (the encode direction);
    - :meth:`unstep` takes it from ``n + 1`` back to ``n`` (the decode direction): the exact inverse
      of :meth:`step` for the exact schemes, its certified inverse for ``fixed_point``, a plain
      step backwards otherwise;
    - :meth:`initial_state` / :meth:`noise_state` make a state from a plain tensor, and
      :meth:`finish` completes a state after the last step (``fixed_point``'s propagated bound).

    ``encode`` integrates from ``grid[0]`` ($\varsigma = 0$, data) to ``grid[-1]`` (noise) and
    ``decode`` back; both are the driver.
    """

    name: ClassVar[str] = "abstract"
    #: decode(encode(x)) == x bit for bit.
    exact: ClassVar[bool] = False
    #: the state has a second component.
    two_state: ClassVar[bool] = False
    #: the steps apply ``reset`` hooks (the exact lattice schemes).
    supports_reset: ClassVar[bool] = False

    def initial_state(self, x0bar: Tensor) -> SolverState:
        r"""The state at $\varsigma = 0$ for the data point $\bar x_0 = x_0$."""
        return SolverState(x=x0bar, dtype=x0bar.dtype)

    def noise_state(self, field: Field, xbar_T: Tensor, grid: Any, c: Cond = None) -> SolverState:
        r"""The state at $\varsigma_{\max}$ for a plain $\bar x_T$ (sampling); two states start equal."""
        return SolverState(x=xbar_T, dtype=xbar_T.dtype)

    def prepare(self, g: List[float]) -> Any:
        """The constants of the steps along the grid's points ``g`` (default: ``g`` itself)."""
        return g

    def n_steps(self, plan: Any, g: List[float]) -> int:
        """Number of steps the driver runs on this plan (default: one per grid interval)."""
        return len(g) - 1

    def check_state(self, state: SolverState, plan: Any, s: float) -> None:
        r"""Refuse a state that does not belong to grid point $\varsigma$ = ``s`` (default: accept)."""

    @abstractmethod
    def step(self, field: Field, plan: Any, n: int, state: SolverState, c: Cond,
             reset: Optional[Reset] = None) -> SolverState:
        """From grid point ``n`` to ``n + 1``."""

    @abstractmethod
    def unstep(self, field: Field, plan: Any, n: int, state: SolverState, c: Cond,
               reset: Optional[Reset] = None) -> SolverState:
        """From grid point ``n + 1`` to ``n``."""

    def finish(self, state: SolverState, plan: Any, direction: str) -> SolverState:
        """The state after the last step of a run in ``direction`` (default: as is); ``state.own``
        is still that of the last step (the driver applies :meth:`rest` afterwards)."""
        return state

    def rest(self, own: Any) -> Any:
        """What of the solver's own state outlives a step (the states ``keep`` records, the state a
        run returns): default nothing (a step-to-step value must not outlive its run)."""
        return None

    def encode(self, field: Field, x0: Union[Tensor, SolverState], grid: Any, c: Cond = None,
               *, progress: bool = False) -> SolverState:
        r"""Integrate from ``grid[0]`` to ``grid[-1]``; ``x0`` is $\bar x_0$ or a full state
        (:func:`~injcert.solvers.integrate` with ``direction="encode"``)."""
        return integrate(self, field, grid, x0, c, direction="encode", progress=progress)

    def decode(self, field: Field, state: Union[Tensor, SolverState], grid: Any, c: Cond = None,
               *, progress: bool = False) -> SolverState:
        r"""Integrate from ``grid[-1]`` to ``grid[0]``; ``state`` is $\bar x_T$ or a full state
        (:func:`~injcert.solvers.integrate` with ``direction="decode"``)."""
        return integrate(self, field, grid, state, c, direction="decode", progress=progress)


SOLVERS: Dict[str, Type[Solver]] = {}


def register(cls: Type[Solver]) -> Type[Solver]:
    SOLVERS[cls.name] = cls
    return cls


def get_solver(name: Union[str, Solver], **options: Any) -> Solver:
    """The integrator called ``name`` (options go to its constructor); a :class:`Solver` passes through.

    Raises:
        ArgumentError: an unknown name; the message lists the choices.
    """
    if isinstance(name, Solver):
        return name
    if not isinstance(name, str) or name not in SOLVERS:
        raise ArgumentError(f"unknown method {name!r} of type {type(name).__name__}; choices: {sorted(SOLVERS)}")
    return SOLVERS[name](**options)


def _progress(idx: range, progress: bool, desc: str) -> Any:
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            return idx
        return tqdm(idx, desc=desc, total=len(idx))
    return idx


def integrate(solver: Union[str, Solver], field: Field, grid: Any, state: Union[Tensor, SolverState],
              cond: Cond = None, *, direction: str = "encode", keep: Optional[List[SolverState]] = None,
              reset: Optional[Reset] = None, progress: bool = False) -> SolverState:
    r"""The one integration loop of injcert: run ``solver`` along ``grid`` in ``direction``.

    Every task (invert, reconstruct, edit), every certificate check and the log-determinant
    checks call this function, so the integrator that is certified is the integrator that runs.

    Arguments:
        solver: a :class:`Solver` or a name from :data:`SOLVERS`.
        field: ``field(s, xbar, c)``, e.g. :func:`~injcert.solvers.probability_flow_field`.
        grid: a :class:`~injcert.solvers.Grid` or an increasing 1-D tensor of $\varsigma$ values.
        state: a :class:`SolverState`, or a plain tensor: $\bar x_0$ for ``"encode"`` (made by
            ``solver.initial_state``), $\bar x_T$ for ``"decode"`` (``solver.noise_state``).
        cond: the condition ``(y, m)`` or ``None``.
        direction: ``"encode"`` (``grid[0]`` to ``grid[-1]``) or ``"decode"`` (back).
        keep: a list; the state at every grid point visited is appended to it, the start included,
            in the order visited (``keep[i]`` is at grid index ``i`` for encode, ``N - i`` for decode).
        reset: a :data:`Reset` hook applied after every sub-update (exact lattice schemes only).
        progress: a progress bar over the steps.

    Returns:
        The state at the far end, with ``nfe`` the network evaluations of this call.

    Raises:
        ArgumentError: an unknown direction or solver, a bad grid, ``reset`` for a solver that
            cannot apply it, a state that belongs to another grid point.
    """
    if direction not in DIRECTIONS:
        raise ArgumentError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    solver = get_solver(solver)
    if reset is not None and not solver.supports_reset:
        raise ArgumentError(f"the {solver.name} solver does not apply reset hooks; use an exact lattice scheme")
    g = Grid.coerce(grid).points()
    counter = _Counter(field)
    encode = direction == "encode"
    if not isinstance(state, SolverState):
        state = solver.initial_state(state) if encode else solver.noise_state(counter, state, grid, cond)
    plan = solver.prepare(g)
    solver.check_state(state, plan, g[0] if encode else g[-1])
    state = dataclasses.replace(state, own=None, nfe=0)
    if keep is not None:
        keep.append(state)
    n = solver.n_steps(plan, g)
    order = range(n) if encode else range(n - 1, -1, -1)
    move = solver.step if encode else solver.unstep
    for k in _progress(order, progress, direction):
        state = move(counter, plan, k, state, cond, reset)
        if keep is not None:
            keep.append(dataclasses.replace(state, own=solver.rest(state.own)))
    state = solver.finish(state, plan, direction)
    state = dataclasses.replace(state, own=solver.rest(state.own))
    state.nfe = counter.count
    return state
