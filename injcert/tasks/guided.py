r"""The guided reversible flow shared by localized editing and reconstruction (Theorem 7, ``proofs/07``).

Given a reference image $x_{\text{ref}}$, a region $R$ (1 = free to change) and a target image:

1. Encode $x_{\text{ref}}$ with reversible Heun on the integer lattice from $\varsigma = 0$ to
   $\varsigma_e = \varsigma(t_e)$, **storing** the two-state trajectory $(Y_n, \hat Y_n)$.
2. Inside $R$, replace the hidden state at $\varsigma_e$ by the noised target
   $\bar x = x_{\text{target}} + \varsigma_e\,\varepsilon$ (seeded $\varepsilon$; the lattice holds
   $x = \alpha_e\bar x$), or (``encode_target=True``) by the target's own hidden state: the
   target encoded by the same flow from 0 to $\varsigma_e$ (both lattice states), so that a target
   equal to $x_{\text{ref}}$ decodes back to $x_{\text{ref}}$ bit for bit.
3. Decode back to $\varsigma = 0$ with the exact inverse steps; after every sub-update, reset the state
   **outside** $R$ to the stored trajectory. The network sees the whole image at every step, so the
   inside stays coherent with the outside across the border, and the outside pixels steer the
   inside *during* the whole trajectory, not only at the end.

At $\varsigma = 0$ the state outside $R$ is $Y_0 = Q(x_{\text{ref}})$ and the stored remainder restores
$x_{\text{ref}}$ there bit for bit. The decode with resets is a bijection of the inside given the
stored outside: :func:`guided_encode` (the encode with the same resets) maps the final lattice pair
back to the starting pair at $\varsigma_e$ exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor

from ..errors import InputError
from ..solvers import DEFAULT_FRAC_BITS, Grid, ReversibleHeun, SolverState, dequantize, integrate, \
    probability_flow_field

__all__ = ["GuidedResult", "guided_decode", "guided_encode"]


@dataclass
class GuidedResult:
    """The output of :func:`guided_decode` and what is needed to invert it.

    Attributes:
        image: the result ($x_{\\text{ref}}$ exactly outside the region).
        start: the lattice pair at $\\varsigma_e$ the decode started from.
        final: the lattice pair at $\\varsigma = 0$.
        trajectory: the stored outside trajectory (lattice pairs at every grid point).
        grid: the $\\varsigma$ grid.
        region: the boolean region (expanded to the image's channels).
        nfe: network evaluations (encode + decode).
        frac_bits: the lattice resolution.
        cond: the network's condition.
    """

    image: Tensor
    start: Tuple[Tensor, Tensor]
    final: Tuple[Tensor, Tensor]
    trajectory: List[Tuple[Tensor, Tensor]]
    grid: List[float]
    region: Tensor
    nfe: int
    frac_bits: int = DEFAULT_FRAC_BITS
    cond: Optional[Tuple[Tensor, Tensor]] = None


def _reset(region: Tensor, traj: List[Tuple[Tensor, Tensor]]):
    def reset(n: int, which: str, q: Tensor) -> Tensor:
        return torch.where(region, q, traj[n][0 if which == "main" else 1])

    return reset


@torch.no_grad()
def _inside_start(solver: ReversibleHeun, field: Any, grid_: Grid, x_ref: Tensor, target: Tensor,
                  cond: Optional[Tuple[Tensor, Tensor]], s_e: Any, *, encode_target: bool, noise: Optional[Tensor],
                  seed: int, progress: bool) -> tuple:
    """``(x, aux, remainder)`` the inside starts from at ``s_e``: the target's hidden state (its
    remainder kept), or the lattice point of the target plus ``s_e`` times the noise (no remainder)."""
    if encode_target:
        tenc = integrate(solver, field, grid_, target.to(x_ref.dtype), cond, direction="encode", progress=progress)
        return tenc.x, tenc.aux, tenc.remainder
    if noise is None:
        gen = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(x_ref.shape, generator=gen, dtype=torch.float64)
    eps = noise.to(device=x_ref.device, dtype=torch.float64)
    tq = solver.lattice_noise(target.to(torch.float64) + s_e * eps, s_e)
    return tq, tq, None


def guided_decode(model: Any, x_ref: Tensor, region: Tensor, target: Tensor, t_e: float, steps: int,
                  cond: Optional[Tuple[Tensor, Tensor]] = None, *, seed: int = 0, frac_bits: int = DEFAULT_FRAC_BITS,
                  progress: bool = False, noise: Optional[Tensor] = None, grid: str = "geometric",
                  encode_target: bool = False) -> GuidedResult:
    """Run the guided flow (module docstring) and return the result with its inverse data.

    Arguments:
        model: the conditional $\\varepsilon$-network.
        x_ref: the reference image N×C×H×W (kept exactly outside ``region``).
        region: N×1×H×W (or N×C×H×W), nonzero where the image may change.
        target: the image the inside starts from at $\\varsigma_e$ (same shape as ``x_ref``).
        t_e: the start time in $(0, t_{\\max}]$.
        steps: grid steps from $t_e$ to 0.
        cond: the network's condition $(y, m)$ or ``None``.
        seed: seed of the noise added inside (ignored when ``noise`` is given).
        frac_bits: lattice resolution.
        progress: progress bars.
        noise: the standard normal $\\varepsilon$ to add inside (default: drawn from ``seed``).
        grid: the kind of $\\varsigma$ grid from $t_e$ to 0 (``"geometric"`` or ``"uniform"``).
        encode_target: start the inside from the target's hidden state at $\\varsigma_e$ (the target
            encoded with the same condition; ``noise`` and ``seed`` are then unused) instead of
            the noised target.

    Raises:
        ValueError: shapes that do not fit, ``t_e`` outside $(0, t_{\\max}]$, ``steps < 1``.
    """
    if target.shape != x_ref.shape:
        raise InputError(f"target must have the shape of x_ref {tuple(x_ref.shape)}, got {tuple(target.shape)}")
    if region.ndim != 4 or region.shape[0] != x_ref.shape[0] or region.shape[2:] != x_ref.shape[2:]:
        raise InputError(f"region must be N×1×H×W matching {tuple(x_ref.shape)}, got {tuple(region.shape)}")
    field = probability_flow_field(model)
    grid_ = Grid.make(field.schedule, steps, grid, t_end=float(t_e))
    g = grid_.points()
    s_e = g[-1]
    solver = ReversibleHeun(frac_bits)
    inside = (region != 0).expand_as(x_ref)
    kept: List[SolverState] = []
    enc = integrate(solver, field, grid_, x_ref, cond, direction="encode", keep=kept, progress=progress)
    traj = [(st.x, st.aux) for st in kept]
    rem = enc.remainder
    tq, tq_aux, inside_rem = _inside_start(solver, field, grid_, x_ref, target, cond, s_e, encode_target=encode_target,
                                           noise=noise, seed=seed, progress=progress)
    start = (torch.where(inside, tq, traj[-1][0]), torch.where(inside, tq_aux, traj[-1][1]))
    dec = integrate(solver, field, grid_, SolverState(x=start[0], aux=start[1], dtype=x_ref.dtype, frac_bits=frac_bits,
                                                     scale=solver.scale(s_e)),
                    cond, direction="decode", reset=_reset(inside, traj), progress=progress)
    yd, yhd = dec.x, dec.aux
    dt = x_ref.dtype
    # the input's remainder outside; inside, the target's when it was encoded (so that a target equal
    # to x_ref comes back bit for bit), else none
    out64 = dequantize(yd, torch.float64, frac_bits) + torch.where(
        inside, torch.zeros_like(rem) if inside_rem is None else inside_rem, rem)
    return GuidedResult(image=out64.to(dt), start=start, final=(yd, yhd), trajectory=traj, grid=g,
                        region=inside, nfe=field.nfe, frac_bits=frac_bits, cond=cond)


@torch.no_grad()
def guided_encode(model: Any, result: GuidedResult, dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """The exact inverse of :func:`guided_decode`: encode ``result.final`` with the same resets (and
    the same condition); returns the lattice pair at $\\varsigma_e$ (equal to ``result.start`` bit
    for bit). ``dtype``: the network's evaluation dtype (default: that of ``result.image``)."""
    field = probability_flow_field(model)
    solver = ReversibleHeun(result.frac_bits)
    dtype = result.image.dtype if dtype is None else dtype
    state = SolverState(x=result.final[0], aux=result.final[1], dtype=dtype, frac_bits=result.frac_bits)
    out = integrate(solver, field, result.grid, state, result.cond, direction="encode",
                    reset=_reset(result.region, result.trajectory))
    return out.x, out.aux
