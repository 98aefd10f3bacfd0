r"""Fixed-point integer lattice used by the bit-exact reversible integrators.

A real number $v$ is held as the int64 $q = \operatorname{round}(v\,2^{b})$ with $b$ fractional
bits (default $b = 40$, resolution $2^{-40} \approx 9.1\times 10^{-13}$). The int64 range is
$|v| < 2^{62-b}$; :func:`quantize` refuses every value from a quarter of it, $2^{60-b}$ ($2^{20}
\approx 1.05\times 10^{6}$ at $b = 40$), so sums of a few quantised values cannot overflow; far above the $\approx 130\,|x|$ that
$\bar x = x/\alpha_{t_{\max}}$ reaches with the default cosine schedule at $t_{\max} = 0.995$.
Integer additions are exact, so every update of the form ``state += Q(g(other state))`` is undone
exactly by ``state -= Q(g(other state))``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ArgumentTypeError

__all__ = ["DEFAULT_FRAC_BITS", "quantize", "dequantize", "split_remainder"]

DEFAULT_FRAC_BITS = 40


def _limit(frac_bits: int) -> float:
    # Leave one bit of headroom below 2**63 so that 2*y - yhat cannot overflow silently.
    return float(2 ** (62 - frac_bits))


def quantize(v: Tensor, frac_bits: int = DEFAULT_FRAC_BITS) -> Tensor:
    """Round ``v`` (any float dtype) to the lattice $2^{-b}\\mathbb{Z}$; returns int64.

    The rounding is done in float64 (round half to even), so it depends only on the value of ``v``.

    Raises:
        OverflowError: ``v`` holds a non-finite value or one outside the lattice's range.
    """
    v64 = v.to(torch.float64)
    if not bool(torch.isfinite(v64).all()):
        raise OverflowError("cannot quantize a non-finite value (the integration diverged)")
    big = float(v64.abs().max()) if v64.numel() else 0.0
    if big >= _limit(frac_bits) / 4:
        raise OverflowError(
            f"value {big:.3g} is outside the fixed-point range ±{_limit(frac_bits) / 4:.3g} "
            f"at {frac_bits} fractional bits; use fewer fractional bits"
        )
    return torch.round(torch.ldexp(v64, torch.tensor(frac_bits, dtype=torch.float64))).to(torch.int64)


def dequantize(q: Tensor, dtype: torch.dtype = torch.float64, frac_bits: int = DEFAULT_FRAC_BITS) -> Tensor:
    """The float value $q\\,2^{-b}$ (exact in float64 while $|q| < 2^{53}$), cast to ``dtype``."""
    if q.dtype != torch.int64:
        raise ArgumentTypeError(f"expected an int64 lattice tensor, got dtype {q.dtype}")
    v = torch.ldexp(q.to(torch.float64), torch.tensor(-frac_bits, dtype=torch.float64))
    return v.to(dtype)


def split_remainder(x: Tensor, frac_bits: int = DEFAULT_FRAC_BITS) -> tuple[Tensor, Tensor]:
    r"""Split ``x`` into a lattice point and a float64 remainder, ``x == dequantize(q) + r`` exactly.

    The remainder $r = x - q\,2^{-b}$ is computed exactly in float64 (both terms are representable,
    $|r| \le 2^{-b-1}$, and the difference needs at most 53 significant bits), and
    ``(dequantize(q) + r).to(x.dtype)`` reproduces ``x`` bit for bit.
    """
    q = quantize(x, frac_bits)
    r = x.to(torch.float64) - dequantize(q, torch.float64, frac_bits)
    return q, r
