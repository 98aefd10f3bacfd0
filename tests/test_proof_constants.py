"""Numerical checks of the constants that steps of ``proofs/`` rest on (each recomputed independently).

* proofs/05, item 3: the GELU(tanh) constant by interval arithmetic (``mpmath.iv``: every operation
  rounded outward) over $[0, 3]$ plus the analytic tail, for the coefficients of the definition and
  of PyTorch's float64 and float32 kernels; the SiLU and GELU constants at their analytic maximisers.
* proofs/04, "Rounding": the twiddle error $\\tau$ and the entry error of the direct-DFT symbol
  blocks against 50-digit sums, below the derived $(2K + 17)u\\,A$ and the code's
  ``symbol_abs_error`` $4(K+8)u\\,A$; the threshold of ``ROUNDING_SLACK``; the arithmetic behind
  ``gram_rounding_slack``'s 16.
* proofs/02, "Floating point": the evaluation-error term $|h|\\,\\|e\\|/(1-q)$ is needed and attained.
"""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import torch
from mpmath import iv
from torch import nn

from injcert.theory.flow import fixed_point_inverse
from injcert.theory.lipschitz import GELU_LIPSCHITZ, GELU_TANH_LIPSCHITZ, SILU_LIPSCHITZ
from injcert.theory.spectral import (
    ROUNDING_SLACK,
    _symbol_block_range,
    gram_rounding_slack,
    operator_norm_bound,
    rounding_slack,
    symbol_abs_error,
)

U = 2.0**-53  # float64 unit roundoff


@pytest.fixture
def ivprec():
    old = iv.prec
    iv.prec = 120
    yield
    iv.prec = old


# ----------------------------------------------------------------------------- proofs/05: activations


def _tanh(u):
    return 1 - 2 / (iv.exp(2 * u) + 1)  # u enters once: no dependency overestimate


def _g1(y, a):
    """$G'(y) = \\tfrac12(1+t) + \\tfrac12 y(1+3ay^2)(1-t^2)$, $t = \\tanh(y + ay^3)$."""
    t = _tanh(y + a * y**3)
    return (1 + t) / 2 + y * (1 + 3 * a * y**2) * (1 - t**2) / 2


def _g2(y, a):
    """$G''(y) = (1-t^2)\\,(1 + 6ay^2 - y\\,t\\,(1+3ay^2)^2)$."""
    t = _tanh(y + a * y**3)
    return (1 - t**2) * (1 + 6 * a * y**2 - y * t * (1 + 3 * a * y**2) ** 2)


def _sup_g1_at_most(a, c: float, hi: float = 3.0) -> bool:
    """Whether $\\sup_{y \\ge 0} G'(y) \\le c$, proven by outward-rounded interval arithmetic.

    On $[0, hi]$: adaptive bisection with the mean-value form $\\sup_I G' \\le G'(m) +
    \\sup_I|G''|\\,|I|/2$. On $[hi, \\infty)$ ($hi = 3$): $G' \\le 1 + 6(1+27a)e^{-6-54a}$ (proofs/05)."""
    cc = iv.mpf(c)
    stack = [(0.0, hi)]
    while stack:
        lo, up = stack.pop()
        mid = 0.5 * (lo + up)  # dyadic: exact
        top = _g1(iv.mpf(mid), a) + abs(_g2(iv.mpf([lo, up]), a)) * iv.mpf(up - lo) / 2
        if top.b <= cc.a:
            continue
        if up - lo < 1e-13:
            return False
        stack += [(lo, mid), (mid, up)]
    assert hi == 3.0
    return (1 + 6 * (1 + 27 * a) * iv.exp(-6 - 54 * a)).b <= cc.a


def _gelu_tanh_ratios() -> dict:
    """$a' = \\kappa/\\beta^2$ (the sup of GELU(tanh)' depends on nothing else): the definition
    ($\\beta = \\sqrt{2/\\pi}$, $\\kappa = 0.044715$) and the constants of PyTorch's kernels,
    ``scalar_t(M_SQRT2 * M_2_SQRTPI * 0.5)`` and ``scalar_t(0.044715)`` (float16/bfloat16 compute
    in float32)."""
    beta64 = 1.4142135623730951 * 1.1283791670955126 * 0.5  # M_SQRT2 * M_2_SQRTPI * 0.5 in double
    return {
        "definition": iv.mpf("0.044715") * iv.pi / 2,
        "float64": iv.mpf(0.044715) / iv.mpf(beta64) ** 2,
        "float32": iv.mpf(float(np.float32(0.044715))) / iv.mpf(float(np.float32(beta64))) ** 2,
    }


def test_gelu_tanh_second_derivative_and_rescaling(ivprec):
    """$G''$ is the derivative of $G'$, and $\\sigma'(x) = G'(\\beta x)$ with $a' = \\kappa/\\beta^2$."""
    with mpmath.workdps(40):
        a = mpmath.mpf("0.044715") * mpmath.pi / 2
        g1 = lambda y: (1 + mpmath.tanh(y + a * y**3)) / 2 + y * (1 + 3 * a * y**2) * mpmath.sech(y + a * y**3) ** 2 / 2
        beta, kappa = mpmath.sqrt(2 / mpmath.pi), mpmath.mpf("0.044715")
        gelu = lambda x: x * (1 + mpmath.tanh(beta * (x + kappa * x**3))) / 2
        for y in ("0.3", "1.1318", "2.5", "-1.7"):
            y = mpmath.mpf(y)
            t = mpmath.tanh(y + a * y**3)
            g2 = (1 - t**2) * (1 + 6 * a * y**2 - y * t * (1 + 3 * a * y**2) ** 2)
            assert abs(mpmath.diff(g1, y) - g2) < mpmath.mpf(10) ** -30
            assert abs(mpmath.diff(gelu, y / beta) - g1(y)) < mpmath.mpf(10) ** -30
            assert abs(g1(y) + g1(-y) - 1) < mpmath.mpf(10) ** -35  # the symmetry of proofs/05


@pytest.mark.parametrize("which", ["definition", "float64", "float32"])
def test_gelu_tanh_constant_is_proven_by_interval_arithmetic(which, ivprec):
    a = _gelu_tanh_ratios()[which]
    assert _sup_g1_at_most(a, GELU_TANH_LIPSCHITZ)
    if which == "definition":  # not vacuous: 3e-12 below the constant (margin 1e-12 relative) it fails
        assert not _sup_g1_at_most(a, GELU_TANH_LIPSCHITZ - 3e-12)


def test_gelu_and_silu_constants_dominate_their_analytic_maxima(ivprec):
    # GELU: sup = sigma'(sqrt 2) = (1 + erf 1)/2 + 1/(e sqrt(pi)) (proofs/05); erf 1 by its alternating series
    s, n = iv.mpf(0), 0
    while True:
        term = iv.mpf(1) / (math.factorial(n) * (2 * n + 1))
        if term.b < 1e-40:
            break
        s, n = s + (-1) ** n * term, n + 1
    erf1 = 2 / iv.sqrt(iv.pi) * (s + iv.mpf([-term.b, term.b]))
    gelu_max = (1 + erf1) / 2 + 1 / (iv.exp(1) * iv.sqrt(iv.pi))
    assert gelu_max.b <= iv.mpf(GELU_LIPSCHITZ).a
    # the erf-GELU's constant does not depend on its coefficient: x (1 + erf(k x))/2 has derivative
    # (1 + erf(y))/2 + y exp(-y^2)/sqrt(pi) at y = k x, for every k > 0 (so float32's M_SQRT1_2 is covered)
    # SiLU: sup = sigma'(x*), x* tanh(x*/2) = 2; enclose x* by outward-rounded sign changes
    phi = lambda x: x * _tanh(x / 2) - 2
    lo, up = 2.0, 3.0
    for _ in range(60):
        mid = 0.5 * (lo + up)
        v = phi(iv.mpf(mid))
        if v.b < 0:
            lo = mid
        elif v.a > 0:
            up = mid
        else:
            break
    assert phi(iv.mpf(lo)).b < 0 < phi(iv.mpf(up)).a
    x = iv.mpf([lo, up])
    sg = 1 / (1 + iv.exp(-x))
    assert (sg * (1 + x * (1 - sg))).b <= iv.mpf(SILU_LIPSCHITZ).a


# ----------------------------------------------------------------------------- proofs/04: symbol blocks


def _exact_entry(w: torch.Tensor, o: int, i: int, x1: int, x2: int, grid, dil):
    m1, m2 = grid
    kh, kw = w.shape[-2:]
    ex, a_sum = mpmath.mpc(0), mpmath.mpf(0)
    for a in range(kh):
        for b in range(kw):
            wv = mpmath.mpf(float(w[0, o, i, a, b]))
            ex += wv * mpmath.expj(-2 * mpmath.pi * (mpmath.mpf(x1 * a * dil[0]) / m1 + mpmath.mpf(x2 * b * dil[1]) / m2))
            a_sum += abs(wv)
    return ex, a_sum


def test_symbol_twiddles_within_the_derived_tau():
    """One-hot kernels: each block entry *is* one computed twiddle; $|\\tilde\\phi - \\phi| \\le \\tau = 17u$."""
    rng = random.Random(0)
    worst = 0.0
    with mpmath.workdps(40):
        for m1, m2, kh, kw, d1, d2 in [(1, 1, 1, 3, 1, 1), (7, 9, 3, 3, 1, 1), (64, 64, 3, 3, 2, 2),
                                       (512, 512, 5, 5, 3, 1), (97, 113, 4, 2, 5, 7)]:
            k = kh * kw
            w = torch.zeros(1, k, 1, kh, kw, dtype=torch.float64)
            for j in range(k):
                w[0, j, 0, j // kw, j % kw] = 1.0
            total = m1 * (m2 // 2 + 1)
            for q in rng.sample(range(total), min(total, 60)):
                blk = _symbol_block_range(w.to(torch.complex128), (m1, m2), (d1, d2), q, q + 1)[0]
                x1, x2 = q // (m2 // 2 + 1), q % (m2 // 2 + 1)
                for j in range(k):
                    a, b = divmod(j, kw)
                    ex = mpmath.expj(-2 * mpmath.pi * (mpmath.mpf(x1 * a * d1) / m1 + mpmath.mpf(x2 * b * d2) / m2))
                    v = complex(blk[j, 0])
                    worst = max(worst, float(abs(mpmath.mpc(v.real, v.imag) - ex)) / U)
    assert worst <= 17.0


def test_symbol_entries_within_the_derived_and_the_code_constant():
    """$|\\hat W_{oi} - \\tilde W_{oi}| \\le (2K + 17)u\\,A_{oi} \\le 4(K+8)u\\,A_{oi}$, with cancelling taps too."""
    rng = random.Random(1)
    gen = torch.Generator().manual_seed(1)
    with mpmath.workdps(50):
        for trial in range(24):
            m1, m2 = rng.choice([(1, 1), (1, 3), (5, 5), (16, 16), (33, 47)])
            kh, kw, d1, d2 = rng.randint(1, 5), rng.randint(1, 5), rng.randint(1, 3), rng.randint(1, 3)
            o, i = rng.randint(1, 3), rng.randint(1, 3)
            w = torch.randn(1, o, i, kh, kw, dtype=torch.float64, generator=gen) * 10.0 ** rng.uniform(-3, 8)
            if trial % 3 == 0:  # taps that (nearly) cancel
                w[..., -1, -1] = -(w.sum(dim=(-2, -1)) - w[..., -1, -1]) + 1e-12
            k = kh * kw
            total = m1 * (m2 // 2 + 1)
            for q in rng.sample(range(total), min(total, 8)):
                blk = _symbol_block_range(w.to(torch.complex128), (m1, m2), (d1, d2), q, q + 1)[0]
                x1, x2 = q // (m2 // 2 + 1), q % (m2 // 2 + 1)
                for oo in range(o):
                    for ii in range(i):
                        ex, a_sum = _exact_entry(w, oo, ii, x1, x2, (m1, m2), (d1, d2))
                        v = complex(blk[oo, ii])
                        err = float(abs(mpmath.mpc(v.real, v.imag) - ex))
                        assert err <= (2 * k + 17) * U * float(a_sum) <= 4 * (k + 8) * U * float(a_sum)


def test_cancelling_taps_computed_block_zero_covered_only_absolutely():
    """The reproducer: exact norm 1.4e-12, and a summation order that computes the block as 0.

    Which order the FFT/BLAS kernel takes depends on the machine (vector width, library build): on
    one it returned 0, on another 1.41420190382839e-12. The bound must hold for every order, so the
    test takes the worst one explicitly: no relative slack covers it, the absolute term does.
    """
    conv = nn.Conv2d(2, 1, (1, 3), padding=(0, 1), padding_mode="circular", bias=False).double()
    taps = [[123456789.25, -123456789.0, -0.25 + 1e-12], [98765432.5, -98765432.0, -0.5 - 1e-12]]
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(taps, dtype=torch.float64).view(1, 2, 1, 3))
    sums = [sum((Fraction(v) for v in row), Fraction(0)) for row in taps]
    truth = math.sqrt(float(sum(s * s for s in sums)))

    def fold(values):
        acc = 0.0
        for v in values:
            acc += v
        return acc

    worst_rows = [min(abs(fold(p)) for p in itertools.permutations(row)) for row in taps]
    worst = math.sqrt(sum(r * r for r in worst_rows))
    w = conv.weight.detach().view(1, 1, 2, 1, 3)
    blk = _symbol_block_range(w.to(torch.complex128), (1, 1), (1, 1), 0, 1)
    computed = float(torch.linalg.matrix_norm(blk, ord=2).max())
    assert 1e-12 < truth < 2e-12
    assert worst == 0.0  # a legal summation order cancels the block completely
    assert worst * (1 + ROUNDING_SLACK) + 1e-30 < truth  # a relative slack (and 1e-30) cannot cover it
    assert worst + symbol_abs_error(w) >= truth
    assert computed + symbol_abs_error(w) >= truth
    assert operator_norm_bound(conv, (2, 1, 1)) >= truth


def test_rounding_slack_threshold_and_gram_constant():
    # 16 N^1.5 u <= 1e-9 exactly for N <= 6817 (not 10^4)
    assert 16 * 6817**1.5 * U <= 1e-9 < 16 * 6818**1.5 * U
    assert rounding_slack(6817) == ROUNDING_SLACK < rounding_slack(6818)
    # gram_rounding_slack: the derived per-step, final-norm and exponent terms (complex blocks, any
    # summation order, at most 64 steps, m*n < 2**64) fit in delta = 16 (mn + 1024) u
    for m, n in [(1, 1), (3, 2), (64, 64), (300, 7), (1024, 1024), (10**5, 10**4)]:
        m, n = max(m, n), min(m, n)
        step = 2 * math.sqrt(n) + math.sqrt(2) * 2 * m * n / (1 - 2 * m * U) * (1 + U) ** 2  # delta_t / u
        final = n * n + 3  # the last Frobenius norm
        exponent = (64 + 10) * max(math.log(m * n), 1.0)  # (T + 10)(|log f_0| + Lambda), T <= 64
        delta = 16 * (m * n + 1024) * U
        assert step <= 2 * math.sqrt(n) + 2.86 * m * n
        assert exponent < 3300
        assert (step + final + exponent + 6) * U <= (4 * m * n + 2 * math.sqrt(n) + 3309) * U <= delta
        assert gram_rounding_slack(m, n) >= delta


# ----------------------------------------------------------------------------- proofs/02: evaluation error


@pytest.mark.parametrize("kind", ["offset", "discontinuous"])
def test_fixed_point_bound_is_for_the_evaluated_field_plus_the_evaluation_error(kind):
    """$f = -Lx$ exactly; the field that runs is $\\tilde f = f + e$ with $\\|e\\| \\le \\delta$ ($\\tilde f$
    need not be Lipschitz at all). The returned bound alone does not reach the exact-network inverse
    $x^* = y/(1-q)$; with the term $|h|\\delta/(1-q)$ it does, and for a constant offset it is attained."""
    h, lip, delta = 0.5, 1.5, 1e-6
    q = h * lip
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(1, 16, dtype=torch.float64, generator=gen)
    v = torch.randn(1, 16, dtype=torch.float64, generator=gen)
    v = v / v.norm()

    def err(x):
        if kind == "offset":
            return delta * v
        parity = (x.view(torch.int64) & 1).to(x.dtype)  # the last bit of each entry: flips at every ulp
        return delta * (2 * parity - 1) / math.sqrt(x.numel())  # norm delta

    field = lambda x: -lip * x + err(x)  # noqa: E731
    if kind == "discontinuous":  # one-ulp difference quotients far above L, as for the float32 network
        x0 = torch.full((1, 16), 0.3, dtype=torch.float64)
        x1 = torch.nextafter(x0, torch.full_like(x0, 1.0))
        assert float((field(x0) - field(x1)).norm() / (x0 - x1).norm()) > 1e6 * lip
    res = fixed_point_inverse(field, y, h=h, lipschitz=lip, tol=1e-12 if kind == "offset" else 1e-5)
    x_star = y / (1 - q)
    dist = float((res.x - x_star).norm())
    assert dist <= res.error_bound + h * delta / (1 - q) * (1 + 1e-9)
    if kind == "offset":
        assert res.error_bound <= 1e-12 < dist  # the code's number alone bounds the distance to another point
        assert dist == pytest.approx(h * delta / (1 - q), rel=1e-6)  # the term is attained


# ----------------------------------------------------------------------------- proofs/08: the field's alpha


def test_float32_field_multiplies_by_the_float32_alpha():
    """``xbar * alpha`` with a float32 ``xbar``: PyTorch rounds the Python scalar to float32 first, so
    the field's coefficient is $\\alpha_{32} = \\mathrm{fl}_{32}(\\alpha)$, within $2^{-24}\\alpha$ of the
    float64 $\\alpha(\\varsigma_k)$ the certificate's constants use (proofs/08, "The field's alpha")."""
    from injcert.model.schedule import get_schedule
    from injcert.solvers import probability_flow_field

    schedule = get_schedule({"name": "cosine", "t_max": 0.995})
    field = probability_flow_field(lambda x, t: x, schedule)  # the "network" returns its input: alpha * xbar
    xbar = (torch.arange(1, 20001, dtype=torch.float32) * 1e-3).view(1, -1)
    for s in (0.37, 1.9, 25.0):
        alpha = float(schedule.alpha_of_varsigma(torch.tensor(s, dtype=torch.float64)))
        got = field(s, xbar).numpy()
        a32 = np.float32(alpha)
        assert np.array_equal(got, (xbar.numpy() * a32).astype(np.float32))  # fl32(xbar * fl32(alpha))
        assert abs(float(a32) - alpha) <= 2.0**-24 * alpha
    assert not np.array_equal(field(0.37, xbar).numpy(), (xbar.numpy().astype(np.float64) * float(
        schedule.alpha_of_varsigma(torch.tensor(0.37, dtype=torch.float64)))).astype(np.float32))
