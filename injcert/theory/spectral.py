"""Certified operator norms of linear layers (Theorem 4, ``proofs/04-operator-norms.md``).

Long because it is the one home of Theorem 4 (proofs/04): the geometry of every convolution padding
mode, the chunked symbol blocks, Gram iteration and the rounding slack that makes each number a
bound.

Three kinds of numbers come out of this module, and they are never mixed up:

* **certified upper bounds** (:func:`operator_norm_bound`): computed in float64 and inflated by
  an explicit rounding slack (:data:`ROUNDING_SLACK`), valid for the layer acting on inputs of
  the given shape — or, with ``size_independent=True``, on inputs of *every* shape;
* **differentiable upper bounds** for training-time parametrizations
  (:func:`gram_iteration_bound`, :func:`conv_size_independent_bound`), upper bounds in exact
  arithmetic at every ``n_iter``, computed in the dtype of their argument;
* **lower bounds** (:func:`operator_norm_interval`'s first entry): the ratio
  $\\|Ax\\|/\\|x\\|$ of an explicit vector from power iteration, its numerator rounded down and
  reduced by the evaluation error of $Ax$, its denominator rounded up (:func:`certified_ratio`) —
  sound as a lower bound even under cancellation, never an upper bound.

Weights must be real floating-point tensors (:func:`real_float64`); complex ones are refused.

References:
    Delattre, Barthélemy, Araujo, Allauzen. *Efficient Bound of Lipschitz Constant for
    Convolutional Layers by Gram Iteration.* ICML 2023.
    Sedghi, Gupta, Long. *The Singular Values of Convolutional Layers.* ICLR 2019.
    Singla, Feizi. *Fantastic Four: Differentiable Bounds on Singular Values of Convolution
    Layers.* ICLR 2021.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from injcert.errors import ArgumentError, UnsupportedModuleError
from injcert.theory.rounding import next_down
from injcert.threads import threads

__all__ = [
    "ROUNDING_SLACK",
    "ABSOLUTE_SLACK",
    "rounding_slack",
    "certify_float",
    "gram_rounding_slack",
    "gram_iteration_bound",
    "gram_iteration_bound_closed_form_grad",
    "fantastic_four_bound",
    "fantastic_four_matrices",
    "conv_symbol_grid_bound",
    "conv_size_independent_bound",
    "conv_transpose_size_independent_bound",
    "circular_conv_singular_values",
    "operator_norm_bound",
    "operator_norm_interval",
    "power_iteration_lower_bound",
    "real_float64",
    "certified_ratio",
]

#: Relative slack added to every certified float64 bound. It covers the rounding errors of the
#: matrix products and of LAPACK's SVD, assumed at most ``c * n**1.5 * 2**-53`` relative to the bound
#: for matrices of dimension ``n`` (assumption (A) of proofs/04, "Rounding": LAPACK states no explicit
#: constant); with ``c = 16`` that is below ``1e-9`` for ``n <= 6817``. Larger dimensions use
#: :func:`rounding_slack`. No certified number goes through an FFT; the direct DFT of the symbol
#: blocks is charged absolutely (:func:`symbol_abs_error`).
ROUNDING_SLACK: float = 1e-9
#: Absolute slack added on top (covers underflow of tiny weights; irrelevant otherwise).
ABSOLUTE_SLACK: float = 1e-30

#: Memory budget, in bytes, for the per-frequency symbol blocks that :func:`operator_norm_bound`
#: evaluates at once: the frequencies are processed in chunks of at most this many bytes of
#: complex128 blocks (at least one frequency per chunk); the SVD / Gram-iteration workspace is a
#: small multiple of it.
BLOCK_CHUNK_BYTES: int = 2**28
#: Gram iteration on symbol blocks (the path used on CUDA) stops once every block's upper bound is
#: within a factor $e^{\text{tol}}$ of a lower bound on its norm, or after the maximum number of steps.
GRAM_TOL: float = 2.0**-40
GRAM_MAX_ITER: int = 64

_EPS64 = 2.0**-53


def real_float64(t: Tensor, what: str = "weight", device: torch.device | str | None = None) -> Tensor:
    """``t`` detached and cast to float64 (exact for every real floating dtype), or a refusal.

    ``Tensor.to(torch.float64)`` silently drops the imaginary part of a complex tensor (a
    ``1j * I`` weight would become the zero matrix and get the bound 0); integer and boolean
    weights are not what these rules are derived for. Both are refused.

    Raises:
        UnsupportedModuleError: ``t`` is complex or not a floating-point tensor.
    """
    if t.is_complex() or not t.is_floating_point():
        raise UnsupportedModuleError(
            f"{what} has dtype {t.dtype}: certified bounds are derived for real floating-point weights only "
            "(casting a complex tensor to float64 would drop its imaginary part); no certified bound"
        )
    return t.detach().to(device=t.device if device is None else torch.device(device), dtype=torch.float64)


def rounding_slack(dim: int) -> float:
    """Relative rounding slack for float64 computations on matrices of dimension ``dim``.

    Returns ``max(ROUNDING_SLACK, 16 * dim**1.5 * 2**-53)``.
    """
    return max(ROUNDING_SLACK, 16.0 * float(max(dim, 1)) ** 1.5 * _EPS64)


def gram_rounding_slack(m: int, n: int) -> float:
    r"""Relative slack covering float64 rounding inside Gram iteration on an ``m x n`` matrix.

    With $\delta = 16\,(mn + 1024)\,2^{-53}$, the float64 Gram-iteration value $\tilde B$ of a
    (stored) matrix $A$ satisfies $\tilde B \ge (1-\delta)\,\sigma_1(A)$, at every number of
    steps (proofs/04, "Rounding"). Returns $\delta/(1-\delta)$, so that
    $\tilde B\,(1 + \text{slack}) \ge \sigma_1(A)$; ``inf`` if $\delta \ge 1$. Apply it before
    :func:`certify_float`, which covers the rounding of the matrix's own computation.
    """
    delta = 16.0 * (float(max(m, 1)) * float(max(n, 1)) + 1024.0) * _EPS64
    return math.inf if delta >= 1.0 else delta / (1.0 - delta)


def certify_float(value: float, dim: int = 1) -> float:
    """Inflate a float64 value by the rounding slack: ``value*(1+rounding_slack(dim)) + ABSOLUTE_SLACK``."""
    value = float(value)
    if not math.isfinite(value):
        return math.inf
    return value * (1.0 + rounding_slack(dim)) + ABSOLUTE_SLACK


# ----------------------------------------------------------------------------- Gram iteration


def gram_iteration_bound(mat: Tensor, n_iter: int = 6) -> Tensor:
    r"""Upper bound on the spectral norm of ``mat`` by Gram iteration (Delattre et al., ICML 2023).

    With $G_0 = A$ and $G_{t+1} = G_t^{H} G_t$, the singular values of $G_t$ are
    $\sigma_i^{2^t}$, hence $\sigma_1(A) \le \|G_T\|_F^{1/2^T}$ for every $T \ge 0$ (``n_iter=0``
    is the Frobenius norm). The matrix is first divided by its largest entry modulus $s$ (so
    its Frobenius norm lies in $[1, \sqrt{mn}]$), each iterate is divided by its Frobenius norm
    and the scales are tracked in log space: no intermediate overflows or underflows, whatever the
    scale of the entries (the result is $+\infty$ only if $\sigma_1$ itself exceeds the dtype's
    range). Differentiable (the scale $s$ is detached: the bound is homogeneous of degree 1, so
    the gradient is unchanged); works for real and complex, batched ``(..., m, n)`` inputs.

    Arguments:
        mat: tensor of shape ``(..., m, n)``.
        n_iter: number of Gram steps $T \ge 0$; the overestimate is at most
            $\mathrm{rank}^{1/2^{T+1}}$.

    Returns:
        tensor of shape ``(...)`` (real), an upper bound in exact arithmetic.

    Raises:
        ValueError: if ``mat`` has fewer than 2 dimensions or ``n_iter < 0``.
    """
    _check_gram_args(mat, n_iter)
    g = mat
    if g.shape[-2] < g.shape[-1]:
        g = g.mH  # same singular values, smaller Gram matrix
    return _gram_iterates(g, n_iter, keep=False)[0]


def _check_gram_args(mat: Tensor, n_iter: int) -> None:
    if mat.dim() < 2:
        raise ArgumentError(f"gram_iteration_bound needs a (..., m, n) tensor, got shape {tuple(mat.shape)}")
    if n_iter < 0:
        raise ArgumentError(f"n_iter must be >= 0, got {n_iter!r}")


def _gram_iterates(g: Tensor, n_iter: int, keep: bool) -> tuple[Tensor, list[Tensor]]:
    r"""The Gram iteration of :func:`gram_iteration_bound` on a tall ``(..., m, n)`` matrix: the bound
    and, with ``keep``, the iterates $G_1, \dots, G_T$ (each a positive multiple of $(A^HA)^{2^{t-1}}$)."""
    real_dtype = g.real.dtype if g.is_complex() else g.dtype
    tiny = torch.finfo(real_dtype).tiny
    if g.numel() == 0:
        return torch.zeros(g.shape[:-2], dtype=real_dtype, device=g.device), []
    # prescale by the largest entry modulus: entries of 1e-200 or 1e160 (float64), 1e20 (float32)
    # would otherwise underflow to 0 or overflow to inf (then NaN) in the first Frobenius norm
    scale = g.detach().abs().amax(dim=(-2, -1)).clamp_min(tiny)
    g = g / scale[..., None, None]
    log_scale = torch.zeros(g.shape[:-2], dtype=real_dtype, device=g.device)
    iterates: list[Tensor] = []
    for _ in range(n_iter):
        f = torch.linalg.matrix_norm(g, ord="fro").clamp_min(tiny)
        g = g / f[..., None, None]
        g = g.mH @ g
        if keep:
            iterates.append(g)
        log_scale = 2.0 * (log_scale + torch.log(f))
    f = torch.linalg.matrix_norm(g, ord="fro")
    p = 2.0**n_iter
    return scale * (f.clamp_min(0) ** (1.0 / p) * torch.exp(log_scale / p)), iterates


class _GramBoundClosedFormGrad(torch.autograd.Function):
    """:func:`gram_iteration_bound` of a real tall matrix, whose backward is the closed-form gradient
    of the Schatten norm it equals (see :func:`gram_iteration_bound_closed_form_grad`)."""

    @staticmethod
    def forward(ctx, mat: Tensor, n_iter: int) -> Tensor:  # type: ignore[override]
        value, iterates = _gram_iterates(mat, n_iter, keep=True)
        ctx.save_for_backward(mat, value, *iterates)
        return value

    @staticmethod
    def backward(ctx, grad_value: Tensor):  # type: ignore[override]
        mat, value, *iterates = ctx.saved_tensors
        shape = mat.shape
        a = mat.reshape(-1, *shape[-2:])
        its = [t.reshape(-1, *t.shape[-2:]) for t in iterates]
        gv, val = grad_value.reshape(-1), value.reshape(-1)
        idx = None
        if not grad_value.is_cuda:
            # only the items that receive a gradient (the batched normalisation stacks every reshape
            # of every layer and differentiates one per layer); a host read, free on the CPU
            idx = torch.nonzero(gv).reshape(-1)
            a, its, gv, val = a[idx], [t[idx] for t in its], gv[idx], val[idx]
        tiny = torch.finfo(a.dtype).tiny
        # P = G_1 G_2 ... G_T, a positive multiple of (A^T A)^(2^T - 1); renormalised as it grows
        prod = None
        for t in its:
            prod = t if prod is None else prod @ t
            prod = prod / torch.linalg.matrix_norm(prod, ord="fro").clamp_min(tiny)[..., None, None]
        q = a if prod is None else a @ prod
        # grad = B q / <q, A> (Euler: B is homogeneous of degree 1, so <grad B, A> = B)
        inner = (q * a).sum(dim=(-2, -1))
        coef = torch.where(inner > 0, gv * val / inner.clamp_min(tiny), torch.zeros_like(inner))
        g = q * coef[..., None, None]
        if idx is not None:
            g = torch.zeros_like(mat).reshape(-1, *shape[-2:]).index_copy_(0, idx, g)
        return g.reshape(shape), None


def gram_iteration_bound_closed_form_grad(mat: Tensor, n_iter: int = 6) -> Tensor:
    r""":func:`gram_iteration_bound` (the same values: the same operations) with a cheaper backward.

    In exact arithmetic the Gram bound with $T$ steps is a Schatten norm:
    $\|G_T\|_F^{1/2^T} = \bigl(\operatorname{tr}(A^HA)^{2^T}\bigr)^{1/2^{T+1}} = \|A\|_{S_p}$, $p = 2^{T+1}$,
    whose gradient (real $A \ne 0$) is $A(A^\top A)^{p/2-1}/\|A\|_{S_p}^{p-1}$. Since
    $p/2 - 1 = 1 + 2 + \dots + 2^{T-1}$, the matrix power is the product of the forward's iterates
    $G_1 \cdots G_T$ up to a positive factor, which Euler's identity $\langle\nabla B, A\rangle = B$ fixes:
    the backward is $B\,Q/\langle Q, A\rangle$ with $Q = A\,G_1\cdots G_T$ — $T$ small matrix products
    instead of differentiating the $T$ squarings and normalisations, and none for batch items whose
    incoming gradient is zero (on the CPU). Nothing certified depends on a gradient; it is tested
    against autograd's. Real matrices only (complex ones take :func:`gram_iteration_bound`).
    """
    _check_gram_args(mat, n_iter)
    if mat.is_complex() or not (torch.is_grad_enabled() and mat.requires_grad):
        return gram_iteration_bound(mat, n_iter)
    g = mat.mH if mat.shape[-2] < mat.shape[-1] else mat
    if g.numel() == 0:
        return gram_iteration_bound(mat, n_iter)
    return _GramBoundClosedFormGrad.apply(g, n_iter)


# ----------------------------------------------------------------------------- size-independent


def _group_split(weight: Tensor, groups: int) -> Tensor:
    """(C0, C1, kh, kw) with C0 divisible by groups -> (groups, C0/groups, C1, kh, kw)."""
    if weight.dim() != 4:
        raise ArgumentError(f"expected a 4-D convolution kernel, got shape {tuple(weight.shape)}")
    c0 = weight.shape[0]
    if groups < 1 or c0 % groups:
        raise ArgumentError(f"groups={groups!r} does not divide the kernel's first dimension {c0}")
    return weight.reshape(groups, c0 // groups, *weight.shape[1:])


def fantastic_four_bound(weight: Tensor, n_iter: int = 6, groups: int = 1) -> Tensor:
    r"""Singla–Feizi (2021) bound $\sqrt{k_h k_w}\,\min(\|R_1\|,\|R_2\|,\|R_3\|,\|R_4\|)$.

    Valid for every input size, padding, stride and dilation (proofs/04, Lemma 4.4), for a
    ``Conv2d`` kernel ``(C_out, C_in/groups, kh, kw)`` or a ``ConvTranspose2d`` kernel
    ``(C_in, C_out/groups, kh, kw)``. The four matrix norms are Gram-iteration bounds, so the
    result is differentiable and an upper bound at every ``n_iter``. Returns a 0-d tensor.
    """
    kh, kw = weight.shape[-2:]
    norms = torch.stack([gram_iteration_bound(m, n_iter) for m in fantastic_four_matrices(weight, groups)])  # (4, g)
    return math.sqrt(kh * kw) * norms.min(dim=0).values.max()


def fantastic_four_matrices(weight: Tensor, groups: int = 1) -> list[Tensor]:
    r"""The four reshapes $R_1, \dots, R_4$ of :func:`fantastic_four_bound`, each ``(groups, m, n)``.

    The one place that defines them: the batched training normalisation
    (:func:`~injcert.model.layers.batched_effective_weights`) stacks the same matrices."""
    w = _group_split(weight, groups)  # (g, o, i, kh, kw)
    g, o, i, kh, kw = w.shape
    return [
        w.permute(0, 1, 3, 2, 4).reshape(g, o * kh, i * kw),  # block (a, b) = w[:, :, a, b]
        w.permute(0, 1, 4, 2, 3).reshape(g, o * kw, i * kh),  # block (b, a)
        w.permute(0, 3, 4, 1, 2).reshape(g, kh * kw * o, i),  # vertical stack of taps
        w.permute(0, 1, 3, 4, 2).reshape(g, o, kh * kw * i),  # horizontal stack of taps
    ]


def _dilated_grid(w: Tensor, grid: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
    """Place the (dilated) kernel taps on an M1 x M2 grid, adding taps that wrap around."""
    *lead, kh, kw = w.shape
    m1, m2 = grid
    d1, d2 = dilation
    rows = [(a * d1) % m1 for a in range(kh)]
    cols = [(b * d2) % m2 for b in range(kw)]
    out = w.new_zeros(*lead, m1, m2)
    if len(set(rows)) == kh and len(set(cols)) == kw:
        ri = torch.tensor(rows, device=w.device)
        ci = torch.tensor(cols, device=w.device)
        out[..., ri[:, None], ci[None, :]] = w
        return out
    for a in range(kh):  # the dilated kernel is wider than the grid: taps wrap around and add
        for b in range(kw):
            out[..., rows[a], cols[b]] += w[..., a, b]
    return out


def _symbol_blocks(w: Tensor, grid: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
    """Per-frequency blocks ``(..., F, o, i)`` of the kernel ``(..., o, i, kh, kw)`` on ``grid``.

    Uses ``rfft2`` (the kernel is real: the symbol at $-\\xi$ is the conjugate of the symbol at
    $\\xi$ and has the same singular values), so only half of the frequencies are computed.
    """
    k = _dilated_grid(w, grid, dilation)
    f = torch.fft.rfft2(k)  # (..., o, i, M1, M2//2+1)
    f = f.flatten(-2)  # (..., o, i, F)
    return f.movedim(-1, -3)  # (..., F, o, i)


def _sampling_factor(extent_minus_one: tuple[int, int], grid: tuple[int, int]) -> float:
    r"""$1/\sqrt{1-\tau^2/2}$ with $\tau = \pi (D_1/M_1 + D_2/M_2)$ (proofs/04, Lemma 4.5)."""
    tau = math.pi * (extent_minus_one[0] / grid[0] + extent_minus_one[1] / grid[1])
    if tau * tau >= 2.0:
        return math.inf
    return 1.0 / math.sqrt(1.0 - tau * tau / 2.0)


def _default_grid(extent_minus_one: tuple[int, int], factor: int = 16) -> tuple[int, int]:
    return tuple(max(1, min(factor * d, 512)) for d in extent_minus_one)  # type: ignore[return-value]


def conv_symbol_grid_bound(
    weight: Tensor,
    grid: int | tuple[int, int] | None = None,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
    n_iter: int | None = None,
) -> Tensor:
    r"""Size-independent bound from the kernel's symbol sampled on a grid (proofs/04, Lemma 4.5).

    $\sup_\omega \sigma_{\max}(\hat W(\omega)) \le \max_{\text{grid}} \sigma_{\max} /
    \sqrt{1-\tau^2/2}$, $\tau = \pi(D_1/M_1 + D_2/M_2)$, $D_i = d_i(k_i-1)$ (Bernstein's
    inequality applied twice at the maximiser). ``n_iter=None`` computes each block's norm with
    ``torch.linalg.svdvals`` (differentiable); an integer uses Gram iteration per block (an upper
    bound, differentiable, cheaper for small grids). Returns a 0-d tensor (``inf`` if the grid is
    too coarse: $\tau^2 \ge 2$).
    """
    dil = _pair(dilation)
    w = _group_split(weight, groups)
    kh, kw = w.shape[-2:]
    dm1 = (dil[0] * (kh - 1), dil[1] * (kw - 1))
    g = _default_grid(dm1) if grid is None else _pair(grid)
    factor = _sampling_factor(dm1, g)
    if not math.isfinite(factor):
        return weight.new_tensor(math.inf)
    blocks = _symbol_blocks(w, g, dil)
    if n_iter is None:
        s = torch.linalg.matrix_norm(blocks, ord=2)
    else:
        s = gram_iteration_bound(blocks, n_iter)
    return s.max() * factor


def conv_size_independent_bound(
    weight: Tensor,
    n_iter: int = 6,
    *,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
    grid: int | tuple[int, int] | None = 0,
) -> Tensor:
    r"""Differentiable bound on a convolution's operator norm, valid for **every input size**.

    Valid for zero and circular padding, every stride and dilation, and groups (max over
    groups), for a ``Conv2d`` kernel ``(C_out, C_in/groups, kh, kw)``; pass the ``ConvTranspose2d``
    kernel ``(C_in, C_out/groups, kh, kw)`` unchanged for the transposed layer (it is the adjoint,
    proofs/04, Lemma 4.3). It is the minimum of

    * the Fantastic-Four bound $\sqrt{k_hk_w}\min_j\|R_j\|$ (Singla & Feizi 2021), each
      $\|R_j\|$ by Gram iteration with ``n_iter`` steps; and, when ``grid`` is not ``0``,
    * the sampled-symbol bound :func:`conv_symbol_grid_bound` (Gram iteration per block), on the
      given grid (``None``: $16 d(k-1)$ points per axis).

    Reflect/replicate padding multiply the bound by the padding operator's norm; use
    :func:`operator_norm_bound` for those. Returns a 0-d tensor of ``weight``'s dtype.
    """
    ff = fantastic_four_bound(weight, n_iter, groups)
    if grid == 0:
        return ff
    sampled = conv_symbol_grid_bound(weight, grid, groups, dilation, n_iter=n_iter)
    return torch.minimum(ff, sampled)


#: The same bound for a ``ConvTranspose2d`` kernel ``(C_in, C_out/groups, kh, kw)``: the transposed
#: layer is the adjoint, which has the same norm (proofs/04, Lemma 4.3), so the kernel passes unchanged.
conv_transpose_size_independent_bound = conv_size_independent_bound


# ----------------------------------------------------------------------------- geometry


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(x) for x in v)
    if len(t) == 1:
        return (t[0], t[0])
    if len(t) != 2:
        raise ArgumentError(f"expected an int or a pair, got {v!r}")
    return t  # type: ignore[return-value]


class _ConvGeometry:
    """A 2-D convolution written as: pad (P), circular conv on an M-grid (C), select (S)."""

    def __init__(
        self,
        weight: Tensor,
        groups: int,
        in_size: tuple[int, int],
        out_size: tuple[int, int],
        stride: tuple[int, int],
        dilation: tuple[int, int],
        pad_left: tuple[int, int],
        pad_right: tuple[int, int],
        mode: str,
    ) -> None:
        self.weight = weight
        self.groups = groups
        self.in_size = in_size
        self.out_size = out_size
        self.stride = stride
        self.dilation = dilation
        self.pad_left = pad_left
        self.pad_right = pad_right
        self.mode = mode
        self.k = tuple(weight.shape[-2:])


def _conv_geometry(layer: nn.Module, input_shape: Sequence[int]) -> _ConvGeometry:
    if len(input_shape) != 3:
        raise ArgumentError(f"a 2-D convolution needs input_shape=(C, H, W), got {tuple(input_shape)!r}")
    c, h, w_ = (int(v) for v in input_shape)
    k = tuple(layer.weight.shape[-2:])
    s = _pair(layer.stride)
    d = _pair(layer.dilation)
    ext = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    if isinstance(layer, nn.ConvTranspose2d):
        if c != layer.in_channels:
            raise ArgumentError(f"ConvTranspose2d expects {layer.in_channels} input channels, got {c}")
        if layer.padding_mode != "zeros":
            raise UnsupportedModuleError(f"ConvTranspose2d with padding_mode={layer.padding_mode!r} is not supported")
        p = _pair(layer.padding)
        op = _pair(layer.output_padding)
        n_out_t = tuple((n - 1) * s[i] - 2 * p[i] + ext[i] + op[i] for i, n in enumerate((h, w_)))
        # adjoint of conv2d on the transposed layer's output grid, restricted to (h, w) outputs
        return _ConvGeometry(layer.weight, layer.groups, n_out_t, (h, w_), s, d, p, p, "zeros")  # type: ignore[arg-type]
    if not isinstance(layer, nn.Conv2d):
        raise UnsupportedModuleError(f"no operator-norm rule for {type(layer).__name__}")
    if c != layer.in_channels:
        raise ArgumentError(f"Conv2d expects {layer.in_channels} input channels, got {c}")
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            pl, pr = (0, 0), (0, 0)
        else:  # "same" (stride 1): total d(k-1), left half rounded down, as in PyTorch
            tot = (ext[0] - 1, ext[1] - 1)
            pl = (tot[0] // 2, tot[1] // 2)
            pr = (tot[0] - pl[0], tot[1] - pl[1])
    else:
        pl = pr = _pair(layer.padding)
    n_in = (h, w_)
    n_out = tuple((n_in[i] + pl[i] + pr[i] - ext[i]) // s[i] + 1 for i in range(2))
    if min(n_out) < 1:
        raise ArgumentError(f"input_shape {tuple(input_shape)!r} is too small for {layer!r}")
    return _ConvGeometry(layer.weight, layer.groups, n_in, n_out, s, d, pl, pr, layer.padding_mode)  # type: ignore[arg-type]


def _pad_multiplicity(n: int, pl: int, pr: int, mode: str) -> int:
    """Max number of copies of one input pixel made by reflect/replicate padding (1-D)."""
    idx = list(range(n))
    left, right = [], []
    for j in range(1, pl + 1):
        left.append(j if mode == "reflect" else 0)
    for j in range(1, pr + 1):
        right.append(n - 1 - j if mode == "reflect" else n - 1)
    counts = [0] * n
    for v in idx + left + right:
        if not 0 <= v < n:
            raise ArgumentError(f"padding {max(pl, pr)} is too large for {mode} padding of size {n}")
        counts[v] += 1
    return max(counts)


def _select_multiplicity(n_out: int, stride: int, pl: int, m: int) -> int:
    counts: dict[int, int] = {}
    for i in range(n_out):
        u = (i * stride - pl) % m
        counts[u] = counts.get(u, 0) + 1
    return max(counts.values())


def _axis_plan(geo: _ConvGeometry, ax: int) -> tuple[int, float]:
    """(grid size M, factor) for one axis: factor = sqrt(pad multiplicity * select multiplicity)."""
    n, no, s = geo.in_size[ax], geo.out_size[ax], geo.stride[ax]
    pl, pr = geo.pad_left[ax], geo.pad_right[ax]
    ext = geo.dilation[ax] * (geo.k[ax] - 1) + 1
    mult = 1
    if geo.mode in ("reflect", "replicate"):
        mult *= _pad_multiplicity(n, pl, pr, geo.mode)
        n, pl, pr = n + pl + pr, 0, 0
    if geo.mode == "circular":
        if pl > n or pr > n:
            raise ArgumentError(f"circular padding {max(pl, pr)} exceeds the input size {n}")
        m = n
    else:  # zeros (and reflect/replicate after explicit padding)
        max_j = (no - 1) * s - pl + ext - 1
        m = max(n + pl, max_j + 1, (no - 1) * s + 1)
    mult *= _select_multiplicity(no, s, pl, m)
    return m, float(mult)


def _axis_plan_size_independent(geo: _ConvGeometry, ax: int) -> float:
    """Factor valid for every input size along one axis (the symbol's sup does the rest)."""
    s, pl, pr = geo.stride[ax], geo.pad_left[ax], geo.pad_right[ax]
    ext = geo.dilation[ax] * (geo.k[ax] - 1) + 1
    if geo.mode == "zeros":
        return 1.0  # the grid M can always be chosen large enough for S to be injective
    worst = 1
    top = 4 * (pl + pr + ext + s) + 8
    for n in range(1, top + 1):
        if geo.mode == "circular":
            if pl > n or pr > n:
                continue
            no = (n + pl + pr - ext) // s + 1
            if no < 1:
                continue
            worst = max(worst, _select_multiplicity(no, s, pl, n))
        else:
            if geo.mode == "reflect" and (pl >= n or pr >= n):
                continue
            npad = n + pl + pr
            if npad < ext:
                continue
            worst = max(worst, _pad_multiplicity(n, pl, pr, geo.mode))
    if geo.mode == "circular" and pl + pr >= ext:
        worst = max(worst, 2)  # large n: at most two output positions read one circular position
    return float(worst)


# ----------------------------------------------------------------------------- exact spectrum


def circular_conv_singular_values(weight: Tensor, grid: tuple[int, int], dilation: int | tuple[int, int] = 1, groups: int = 1) -> Tensor:
    """All singular values of the stride-1 circular convolution on ``grid`` (Sedghi et al. 2019).

    Returns a float64 tensor ``(groups, F, min(o, i))``, each frequency of the ``rfft2`` half
    plane (the other half repeats them). Computed with ``torch.linalg.svdvals`` in float64.
    """
    w = _group_split(real_float64(weight, "the kernel"), groups)
    blocks = _symbol_blocks(w, _pair(grid), _pair(dilation))
    return torch.linalg.svdvals(blocks)


def _symbol_block_range(wc: Tensor, grid: tuple[int, int], dilation: tuple[int, int], start: int, stop: int) -> Tensor:
    r"""Symbol blocks at the ``rfft2`` frequencies ``start..stop-1`` (flattened), by a direct DFT.

    ``wc`` is the complex kernel ``(g, o, i, kh, kw)``. Frequency $q$ is
    $\xi = (q \,\mathrm{div}\, H_2,\ q \bmod H_2)$, $H_2 = M_2/\!/2+1$ (the order of
    :func:`_symbol_blocks`), and $\hat W(\xi) = \sum_{a,b} w_{ab}\,e^{-2\pi i\,r_{ab}(\xi)/(M_1M_2)}$
    with the integer $r_{ab}(\xi) = ((\xi_1ad_1 \bmod M_1)M_2 + (\xi_2bd_2 \bmod M_2)M_1) \bmod M_1M_2$:
    the same blocks as ``rfft2`` of the dilated, wrapped kernel (taps that wrap add up because
    the phase is periodic), computed for these frequencies only. Returns ``(F * g, o, i)``.
    """
    g, o, i, kh, kw = wc.shape
    m1, m2 = grid
    dev = wc.device
    q = torch.arange(start, stop, device=dev)
    x1, x2 = q // (m2 // 2 + 1), q % (m2 // 2 + 1)
    a = torch.arange(kh, device=dev) * dilation[0]
    b = torch.arange(kw, device=dev) * dilation[1]
    r = ((x1[:, None, None] * a[None, :, None]) % m1) * m2 + ((x2[:, None, None] * b[None, None, :]) % m2) * m1
    angle = (r % (m1 * m2)).to(torch.float64) * (-2.0 * math.pi / (m1 * m2))
    phase = torch.polar(torch.ones_like(angle), angle).reshape(len(q), kh * kw)  # (F, K)
    blocks = phase @ wc.reshape(g * o * i, kh * kw).T  # (F, g*o*i)
    return blocks.reshape(len(q) * g, o, i)


def _gram_block_norms(blocks: Tensor, tol: float = GRAM_TOL, max_iter: int = GRAM_MAX_ITER) -> Tensor:
    r"""Upper bounds on the spectral norms of a batch ``(..., m, n)`` by Gram iteration, no autograd.

    The batched, certified-path variant of :func:`gram_iteration_bound` (Delattre et al., ICML 2023;
    proofs/04, part 1): each block is first divided by its largest entry modulus $s$, then
    $G_{t+1} = \tilde G_t^H\tilde G_t$ with $\tilde G_t = G_t/\|G_t\|_F$ and the scale kept in log
    space. After $T$ steps $\sigma_1 \le U_T = s\|G_T\|_F^{1/2^T}$ and
    $\sigma_1 \ge s(\|G_T\|_F/\|G_{T-1}\|_F)^{1/2^{T-1}}$ (as $\sum\sigma_i^{2p}/\sum\sigma_i^{p}
    \le\sigma_1^{p}$), so in the normalised iterates $\log(U_T/L_T) = -\log\|\tilde G_{T-1}^H
    \tilde G_{T-1}\|_F/2^T$. The loop stops when that gap is at most ``tol`` for every block of the
    batch (one host synchronisation per step), or after ``max_iter`` steps; the result is an upper
    bound in exact arithmetic whenever it stops. Works on any device, in the blocks' dtype.

    Rounding: the float64 result $\tilde B$ satisfies $\tilde B \ge (1-\delta)\sigma_1$ with
    $1/(1-\delta) = 1+$ :func:`gram_rounding_slack` ``(m, n)`` (proofs/04, "Rounding"); callers
    apply it.

    Returns:
        real tensor of shape ``(...)``; ``nan`` where a block is not finite.
    """
    if blocks.dim() < 2:
        raise ArgumentError(f"_gram_block_norms needs a (..., m, n) tensor, got shape {tuple(blocks.shape)}")
    with torch.no_grad():
        g = blocks if blocks.shape[-2] >= blocks.shape[-1] else blocks.mH
        real_dtype = g.real.dtype if g.is_complex() else g.dtype
        tiny = torch.finfo(real_dtype).tiny
        scale = g.abs().amax(dim=(-2, -1)).clamp_min(tiny)
        g = g / scale[..., None, None]
        log_scale = torch.zeros_like(scale)
        f = torch.linalg.matrix_norm(g, ord="fro")
        steps = 0
        for steps in range(1, max_iter + 1):
            fc = f.clamp_min(tiny)
            g = g / fc[..., None, None]
            g = g.mH @ g
            log_scale = 2.0 * (log_scale + torch.log(fc))
            f = torch.linalg.matrix_norm(g, ord="fro")
            gap = torch.where(f > 0, -torch.log(f), torch.zeros_like(f)) / 2.0**steps
            if bool((gap.max() <= tol) | gap.isnan().any()):  # a nan block makes the result nan anyway
                break
        return scale * torch.exp((log_scale + torch.log(f)) / 2.0**steps)


def _max_block_norm(
    w64: Tensor,
    grid: tuple[int, int],
    dilation: tuple[int, int],
    *,
    method: str | None = None,
    chunk_bytes: int | None = None,
) -> float:
    r"""$\max_{g,\xi}\sigma_1(\hat W_g(\xi))$ over the ``rfft2`` half plane of ``grid``, up to rounding.

    The blocks are evaluated in chunks of at most ``chunk_bytes`` (default
    :data:`BLOCK_CHUNK_BYTES`) of complex128 matrices, never all at once, on ``w64``'s device.
    ``method="svd"`` (default on CPU) takes each block's exact norm with a batched LAPACK SVD;
    ``method="gram"`` (default on CUDA, where the batched SVD is slow) bounds it by batched Gram
    iteration (:func:`_gram_block_norms`) and multiplies by $1+$:func:`gram_rounding_slack`, so
    both return a value that :func:`certify_float` turns into a certified bound.

    Arguments:
        w64: float64 kernel ``(groups, o, i, kh, kw)``.
        grid, dilation: the circular grid $M_1\times M_2$ and the dilation.
        method: ``"svd"``, ``"gram"`` or ``None`` (by device).
        chunk_bytes: memory budget per chunk, in bytes.

    Raises:
        ValueError: for an unknown ``method``.
    """
    if method is None:
        method = "gram" if w64.device.type == "cuda" else "svd"
    if method not in ("svd", "gram"):
        raise ArgumentError(f"method must be 'svd', 'gram' or None, got {method!r}")
    g, o, i = w64.shape[:3]
    m1, m2 = grid
    total = m1 * (m2 // 2 + 1)
    budget = BLOCK_CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
    per_freq = g * o * i * 16  # complex128
    chunk = max(1, budget // per_freq)
    wc = w64.to(torch.complex128)
    best = w64.new_zeros(())
    # The CPU's batched SVD of these small blocks gains nothing from a second thread and loses a
    # lot to waking it (timed by hand on the shipped model's kernels; the figures are in
    # docs/notes/history.md): run the sweep on one thread.
    one_thread = method == "svd" and w64.device.type == "cpu"
    with threads(1) if one_thread else nullcontext():
        for start in range(0, total, chunk):
            blocks = _symbol_block_range(wc, grid, dilation, start, min(start + chunk, total))
            if method == "svd":
                s = torch.linalg.matrix_norm(blocks, ord=2)
            else:
                s = _gram_block_norms(blocks)
            best = torch.maximum(best, s.max())  # propagates nan
            del blocks, s
    val = float(best)
    if method == "gram":
        val *= 1.0 + gram_rounding_slack(o, i)
    return val


def _conv_bound(
    geo: _ConvGeometry,
    size_independent: bool,
    device: torch.device | str | None = None,
    method: str | None = None,
) -> float:
    dev = geo.weight.device if device is None else torch.device(device)
    w64 = _group_split(real_float64(geo.weight, "the convolution's weight", dev), geo.groups)
    dim = max(w64.shape[1], w64.shape[2]) * max(geo.k)
    if size_independent:
        factor = math.sqrt(_axis_plan_size_independent(geo, 0) * _axis_plan_size_independent(geo, 1))
        dm1 = (geo.dilation[0] * (geo.k[0] - 1), geo.dilation[1] * (geo.k[1] - 1))
        grid = _default_grid(dm1)
        sampled = (_max_block_norm(w64, grid, geo.dilation, method=method) + symbol_abs_error(w64)) \
            * _sampling_factor(dm1, grid)
        ff = float(fantastic_four_bound(w64.flatten(0, 1), n_iter=12, groups=geo.groups))
        ff *= 1.0 + gram_rounding_slack(w64.shape[1] * w64.shape[2], geo.k[0] * geo.k[1])  # R_j: m*n = o*i*kh*kw
        return certify_float(factor * min(sampled, ff), dim * max(grid))
    (m1, f1), (m2, f2) = _axis_plan(geo, 0), _axis_plan(geo, 1)
    val = _max_block_norm(w64, (m1, m2), geo.dilation, method=method) + symbol_abs_error(w64)
    return certify_float(math.sqrt(f1 * f2) * val, dim * max(m1, m2))


def symbol_abs_error(w64: Tensor) -> float:
    r"""An absolute bound on the spectral norm of the rounding error of any computed symbol block.

    Each entry $\hat K_{oi}(\omega) = \sum_j w_{oij} e^{-i\omega\cdot j}$ of a block is a sum of
    ``taps`` products; computed in float64 its error is at most $\gamma\sum_j|w_{oij}|$ with
    $\gamma = 4(\text{taps} + 8)\,2^{-53}$ (products with rounded twiddles, complex sums;
    Higham, *Accuracy and Stability*, §3.1 and §3.6). The error matrix $E$ then has
    $\|E\|_2 \le \|E\|_F \le \gamma\,\|A\|_F$ with $A_{oi} = \sum_j |w_{oij}|$, at every frequency.
    A relative slack on the computed norm cannot cover this: when the taps cancel (a norm of
    $10^{-12}$ from taps of $10^{8}$) the computed block can be $0$ (proofs/04, "Rounding").
    ``w64``: grouped float64 weight ``(groups, out, in, kh, kw)`` or ``(out, in, kh, kw)``.
    """
    taps = int(w64.shape[-1] * w64.shape[-2])
    a = w64.abs().sum(dim=(-2, -1))  # (..., out, in)
    fro = float(a.reshape(-1, a.shape[-2] * a.shape[-1]).norm(dim=1).max()) if a.numel() else 0.0
    gamma = 4.0 * (taps + 8) * _EPS64
    return gamma * fro * (1.0 + 1e-12)


# ----------------------------------------------------------------------------- public API


def operator_norm_bound(
    layer: nn.Module,
    input_shape: Sequence[int],
    *,
    size_independent: bool = False,
    device: torch.device | str | None = None,
) -> float:
    r"""Certified upper bound on the operator ($\ell_2$) norm of a linear layer, bias excluded.

    * ``nn.Linear`` (``input_shape=(features,)``, or any shape whose last entry is the number
      of features): Gram iteration (12 steps) on the weight in float64.
    * ``nn.Conv2d`` / ``nn.ConvTranspose2d`` (``input_shape=(C, H, W)``): the convolution is
      written as padding $P$, a stride-1 circular convolution $C_M$ on an $M_1\times M_2$ grid,
      and a subsampling/selection $S$: $\|A\| \le \|S\|\,\|C_M\|\,\|P\|$, with $\|C_M\|$ the
      largest per-frequency singular value of the kernel's DFT. The frequencies are processed
      in chunks of at most :data:`BLOCK_CHUNK_BYTES`; on CPU each block's norm is exact (float64
      SVD), on CUDA it is bounded by batched float64 Gram iteration (a batched SVD is slow
      there), at most ``GRAM_TOL`` (relative) above the exact value. Every
      stride, dilation, padding (ints or ``"same"``/``"valid"``), groups (max over groups) and
      ``padding_mode`` (zeros, circular, reflect, replicate) is covered (proofs/04).
      ``size_independent=True`` gives a bound valid for every input size instead.

    The result is inflated by :data:`ROUNDING_SLACK` (see :func:`rounding_slack`), and Gram
    iteration's values also by :func:`gram_rounding_slack`.

    ``device`` is where the float64 computation runs (default: the weight's device).

    The bound is computed from the layer's ``weight`` as read now (a
    :mod:`torch.nn.utils.parametrize` parametrization recomputes it on access, so it is fine). A
    layer with forward (pre-)hooks — e.g. the legacy hook-based ``nn.utils.weight_norm`` /
    ``spectral_norm``, whose ``.weight`` is stale until the next forward — or a subclass that
    overrides ``forward`` is refused: its map is not the one the weight describes.

    Raises:
        UnsupportedModuleError: for any other module type, a layer with forward hooks (its own or
            global ones), a subclass overriding ``forward`` (or ``forward`` replaced on the
            instance), or a complex/non-floating weight (a cast to float64 would drop its
            imaginary part).
        ValueError: if ``input_shape`` does not fit the layer.
    """
    if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        _reject_forward_hooks(layer)
        base = nn.Linear if isinstance(layer, nn.Linear) else (nn.ConvTranspose2d if isinstance(layer, nn.ConvTranspose2d) else nn.Conv2d)
        _require_inherited_forward(layer, base)
    if isinstance(layer, nn.Linear):
        if len(input_shape) < 1 or int(input_shape[-1]) != layer.in_features:
            raise ArgumentError(f"Linear expects input_shape ending in {layer.in_features}, got {tuple(input_shape)!r}")
        w = real_float64(layer.weight, "Linear's weight", device)
        val = float(gram_iteration_bound(w, 12)) * (1.0 + gram_rounding_slack(*w.shape))
        return certify_float(val, max(w.shape))
    if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
        return _conv_bound(_conv_geometry(layer, input_shape), size_independent, device)
    raise UnsupportedModuleError(f"operator_norm_bound has no rule for {type(layer).__name__}; supported: Linear, Conv2d, ConvTranspose2d")


#: Methods through which ``nn.Module.__call__`` reaches the computation; a subclass that overrides
#: any of them computes something else than the class whose rule it would inherit.
_FORWARD_ATTRS = ("forward", "_conv_forward", "__call__", "_call_impl", "_wrapped_call_impl")


def _export_bookkeeping(module: nn.Module, hook: object) -> bool:
    """A hook that ``torch.export`` puts on its program's ``.module()``: it checks the inputs against the
    exported shapes or (de)registers nn.Module inputs for pytree, and returns None -- it changes neither
    the input nor the output (the bound is of the graph itself, which runs without it)."""
    import torch.fx as fx

    return isinstance(module, fx.GraphModule) and getattr(hook, "__module__", None) == "torch.export._unlift"


def _reject_forward_hooks(module: nn.Module) -> None:
    """Raise :class:`UnsupportedModuleError` if ``module`` (or the global registry) has forward hooks.

    Forward hooks can replace the output and forward pre-hooks the input (or, as the legacy
    hook-based ``weight_norm``/``spectral_norm`` do, the weight), so a rule reading the module's
    attributes would bound a different map.
    """
    own = [n for n in ("_forward_hooks", "_forward_pre_hooks")
           if any(not _export_bookkeeping(module, h) for h in (getattr(module, n, None) or {}).values())]
    if own:
        raise UnsupportedModuleError(
            f"{type(module).__name__} has forward hooks ({', '.join(own)}) that may change its output or "
            "weights (e.g. legacy hook-based nn.utils.weight_norm/spectral_norm); no certified bound. "
            "Remove the hooks (use torch.nn.utils.parametrize / nn.utils.parametrizations instead)"
        )
    from torch.nn.modules import module as _mm

    glob = [n for n in ("_global_forward_hooks", "_global_forward_pre_hooks") if len(getattr(_mm, n, None) or {})]
    if glob:
        raise UnsupportedModuleError(
            f"global forward hooks are registered ({', '.join(glob)}); they may change the output of "
            f"{type(module).__name__}, so no certified bound. Remove them first"
        )


#: Class attributes a strictly checked subclass may redefine without changing the map: construction,
#: copying/pickling and printing (``__getstate__``/``__deepcopy__`` are what
#: :mod:`torch.nn.utils.parametrize` adds), and the class bookkeeping Python creates itself.
_HARMLESS_ATTRS = frozenset({
    "__init__", "__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__annotations__",
    "__firstlineno__", "__static_attributes__", "__orig_bases__", "__parameters__", "__slots__",
    "__getstate__", "__setstate__", "__deepcopy__", "__reduce__", "__reduce_ex__",
    "__repr__", "extra_repr", "_get_name", "__abstractmethods__", "_abc_impl",
})


def _strict_base(base: type) -> bool:
    """Whether subclasses of ``base`` are checked strictly (any override refused).

    Containers (``nn.Sequential`` and its relatives) compute through ``__iter__``, ``__len__``,
    ``__getitem__``, ``_modules`` and whatever else their methods reach, and classes outside
    PyTorch (injcert's own layers, users' registered classes) may call any of their methods from
    ``forward`` or from their rule: for those only an unchanged class body is trusted. PyTorch's leaf
    layers reach their computation only through the attributes in :data:`_FORWARD_ATTRS` (and
    subclasses commonly override e.g. ``reset_parameters``), so only those are compared.
    """
    if issubclass(base, (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)):
        return True
    return not (base.__module__ or "").startswith("torch.")


def _require_inherited_forward(module: nn.Module, base: type) -> None:
    """Raise unless ``module`` computes ``base``'s map: same forward path, no instance-level patch.

    * An instance attribute named like a forward-path method (``module.forward = ...``) replaces
      it for this instance: refused, even when ``type(module) is base``.
    * A proper subclass of a leaf PyTorch layer must inherit every attribute of
      :data:`_FORWARD_ATTRS` from ``base`` unchanged.
    * A proper subclass of a container or of a non-PyTorch class (:func:`_strict_base`) must not
      redefine *any* attribute that ``base`` has, nor any private (``_``-prefixed) name such as a
      ``_modules`` property, except the harmless ones in :data:`_HARMLESS_ATTRS` and the properties
      :mod:`torch.nn.utils.parametrize` injects for parametrized tensors. E.g. an ``nn.Sequential``
      subclass overriding only ``__iter__`` runs its children in another order (or skips some):
      Sequential's rule does not apply to it.
    """
    cls = type(module)
    patched = [n for n in _FORWARD_ATTRS if n in getattr(module, "__dict__", {})]
    if patched:
        raise UnsupportedModuleError(
            f"{cls.__module__}.{cls.__qualname__} instance has {'/'.join(patched)} replaced on the instance, so "
            f"{base.__name__}'s rule does not describe the map it computes; no certified bound"
        )
    if cls is base:
        return
    changed = [n for n in _FORWARD_ATTRS if getattr(cls, n, None) is not getattr(base, n, None)]
    if _strict_base(base):
        own: list[str] = []
        base_mro = set(base.__mro__)
        param_names: set[str] = set()
        if isinstance(getattr(module, "parametrizations", None), nn.ModuleDict):
            param_names = set(module.parametrizations.keys())  # type: ignore[union-attr]
        for klass in cls.__mro__:
            if klass in base_mro:
                continue
            for name in vars(klass):
                if name in _HARMLESS_ATTRS or name in own or name in changed:
                    continue
                if name in param_names and isinstance(vars(klass)[name], property):
                    continue  # a parametrized tensor: recomputed on access, read alike by forward and rule
                if hasattr(base, name) or name.startswith("_"):
                    own.append(name)
        changed += own
    if changed:
        raise UnsupportedModuleError(
            f"{cls.__module__}.{cls.__qualname__} subclasses {base.__name__} but overrides {'/'.join(changed)}, "
            f"so {base.__name__}'s rule does not apply; register a Lipschitz rule for {cls.__name__} "
            "(injcert.theory.lipschitz.register_lipschitz_rule)"
        )


def _linear_part(layer: nn.Module):
    """The layer's map with the bias removed (functional call with a zero bias)."""
    params = {k: v.detach() for k, v in layer.named_parameters()}
    if params.get("bias") is not None:
        params["bias"] = torch.zeros_like(params["bias"])
    buffers = {k: v.detach() for k, v in layer.named_buffers()}

    def fn(x: Tensor) -> Tensor:
        return torch.func.functional_call(layer, (params, buffers), (x,))

    return fn


def _down(v: float) -> float:
    return next_down(v) if v > 0 else v


def _norm_bounds(v: Tensor) -> tuple[float, float]:
    r"""``(lo, hi)`` with ``lo <= ||v||_2 <= hi`` for the exact Euclidean norm of the stored ``v``.

    The computed norm of $n$ entries (any summation order) is within a relative $(n/2+2)u$ of the
    exact one (Higham, §3.1; $u$ the unit roundoff of ``v``'s dtype); it is moved out by
    $(n+8)\varepsilon$, $\varepsilon = 2u$, and one ulp.
    """
    n = max(v.numel(), 1)
    eps = torch.finfo(v.dtype).eps
    nv = float(torch.linalg.vector_norm(v.detach().reshape(-1)))
    rel = (n + 8) * eps
    if not math.isfinite(nv):
        return 0.0, math.inf
    return max(0.0, _down(nv * (1.0 - rel))), math.nextafter(nv * (1.0 + rel), math.inf)


def certified_ratio(v: Tensor, y: Tensor, eval_error: float = 0.0) -> float:
    r"""A float $\le\|Av\|/\|v\|$, given $y = \mathrm{fl}(Av)$ with $\|y - Av\|\le$ ``eval_error``.

    The numerator is rounded down and reduced by the evaluation error (never below 0), the
    denominator rounded up (:func:`_norm_bounds`), the quotient rounded down: the result is a
    sound lower bound on $\|A\|$ for the explicit vector ``v``, even under cancellation (where
    the computed $\|y\|$ may be far above the exact $\|Av\|$; proofs/04, part 5).
    """
    if not (eval_error >= 0.0):
        raise ArgumentError(f"eval_error must be >= 0, got {eval_error!r}")
    y_lo, _ = _norm_bounds(y)
    _, v_hi = _norm_bounds(v)
    num = y_lo - eval_error
    if not (num > 0.0) or not math.isfinite(v_hi) or v_hi <= 0.0:
        return 0.0
    num = _down(num)  # the subtraction rounded to nearest
    return max(0.0, _down(num / v_hi))


def power_iteration_lower_bound(fn, x0: Tensor, n_iter: int = 50, *, eval_error=None) -> float:
    r"""Sound lower bound on $\|J\|$ for a linear ``fn``: power iteration, then a certified ratio.

    ``fn`` must be linear (e.g. a layer without bias); the vjp is taken with ``torch.func``. Power
    iteration on $J^\top J$ chooses the explicit vector $v$ with the largest computed ratio; the
    returned number is :func:`certified_ratio` of that $v$: the computed $\|\mathrm{fl}(Jv)\|$
    rounded down and reduced by the evaluation error of $\mathrm{fl}(Jv)$, over $\|v\|$ rounded up.

    ``fn`` may be an ``nn.Linear``/``nn.Conv2d``/``nn.ConvTranspose2d`` (its bias is removed and
    its evaluation error derived: :func:`_layer_eval_error`), or any callable with
    ``eval_error(v, y) -> float``, an upper bound on $\|y - Jv\|$ for the computed ``y = fn(v)``.
    A callable without ``eval_error`` is taken to be evaluated exactly; without that assumption
    the computed ratio is only an estimate (cancellation can make it arbitrarily larger than
    $\|J\|$).
    """
    if isinstance(fn, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        layer = _plain_layer(fn)
        fn = _linear_part(layer)
        if eval_error is None:
            eval_error = _layer_eval_error(layer)
    if eval_error is None:
        eval_error = lambda v, y: 0.0  # noqa: E731  (fn evaluated exactly, by assumption)
    v = x0 / x0.norm().clamp_min(torch.finfo(x0.dtype).tiny)
    best, best_v = -1.0, v
    _, vjp = torch.func.vjp(fn, torch.zeros_like(v))
    for _ in range(n_iter + 1):
        y = fn(v)
        ny, nv = float(y.norm()), float(v.norm())
        if nv > 0 and math.isfinite(ny) and ny / nv > best:
            best, best_v = ny / nv, v
        (g,) = vjp(y)
        ng = g.norm()
        if not float(ng) > 0.0 or not math.isfinite(float(ng)):
            break
        v = g / ng
    with torch.no_grad():
        y = fn(best_v)
        err = float(eval_error(best_v, y))
    return certified_ratio(best_v, y, err)


def _layer_eval_error(layer: nn.Module):
    r"""``eval_error(v, y)`` for the bias-free linear part of a Linear/Conv2d/ConvTranspose2d layer.

    Each output entry is a sum of at most $K$ products $w\,v$ ($K$ = input features, or
    $(C_\text{in}/\text{groups})k_hk_w$ for convolutions; padding only copies entries, the zero
    bias adds exactly), computed in any order (GEMM, im2col, col2im): its error is at most
    $\gamma_{K}\sum|w||v|$, $\gamma_K = Ku/(1-Ku)$ (Higham, §3.1). The vector of those sums
    is $|A||v|$, evaluated by the same layer with $|W|$ on $|v|$; being a sum of non-negative
    terms its computed value $z$ satisfies $|A||v| \le z/(1-\gamma_K)$. Hence
    $\|\mathrm{fl}(Av) - Av\| \le \gamma_K/(1-\gamma_K)\,\|z\|$, with $\|z\|$ rounded up. The
    layer must run a direct summation (true of PyTorch's CPU kernels for float64; not of FFT or
    Winograd convolution algorithms).
    """
    w = layer.weight
    if isinstance(layer, nn.Linear):
        k = int(w.shape[1])  # (out, in)
    elif isinstance(layer, nn.ConvTranspose2d):
        k = int(w.shape[0] // layer.groups) * int(w.shape[-2] * w.shape[-1])  # (C_in, C_out/g, kh, kw)
    else:
        k = int(w.shape[1]) * int(w.shape[-2] * w.shape[-1])  # (C_out, C_in/g, kh, kw)
    params = {n: p.detach() for n, p in layer.named_parameters()}
    params["weight"] = params["weight"].abs()
    if params.get("bias") is not None:
        params["bias"] = torch.zeros_like(params["bias"])
    buffers = {n: b.detach() for n, b in layer.named_buffers()}

    def err(v: Tensor, y: Tensor) -> float:
        u = torch.finfo(v.dtype).eps / 2
        ku = (k + 2) * u
        if ku >= 0.5:
            return math.inf
        gamma = ku / (1.0 - ku)
        with torch.no_grad():
            z = torch.func.functional_call(layer, (params, buffers), (v.abs(),))
        _, z_hi = _norm_bounds(z)
        return math.nextafter(gamma / (1.0 - gamma) * z_hi * (1.0 + 4 * u), math.inf)

    return err


def operator_norm_interval(
    layer: nn.Module,
    input_shape: Sequence[int],
    n_iter: int = 50,
    *,
    size_independent: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """``(lower, upper)`` on the layer's operator norm (bias excluded).

    ``upper`` is :func:`operator_norm_bound`; ``lower`` is :func:`power_iteration_lower_bound`
    with ``n_iter`` steps on the actual layer in float64 (``torch.func.vjp``): the certified
    ratio of an explicit vector, its numerator rounded down and reduced by the layer's
    evaluation error, its denominator rounded up — sound (proofs/04, part 5), never an upper bound.
    """
    upper = operator_norm_bound(layer, input_shape, size_independent=size_independent)
    dtype = torch.float64
    layer64 = _as_float64(_plain_layer(layer))
    x0 = torch.randn((1, *tuple(int(v) for v in input_shape)), dtype=dtype, generator=generator)
    lower = power_iteration_lower_bound(layer64, x0, n_iter)
    return min(lower, upper), upper


def _plain_layer(layer: nn.Module) -> nn.Module:
    """``layer`` itself, or for a parametrized layer (``nn.utils.parametrizations.spectral_norm``,
    ``orthogonal``, ``weight_norm``, ...) a copy without parametrizations holding the tensors read now
    through the layer's attributes (``layer.weight`` evaluates the parametrization). Its parameters are
    then named ``weight``/``bias`` as the layer's map uses them (no ``parametrizations.weight.original``).
    """
    from torch.nn.utils import parametrize

    if not parametrize.is_parametrized(layer):
        return layer
    import copy

    names = list(layer.parametrizations.keys())  # type: ignore[union-attr]
    with torch.no_grad():
        values = {name: getattr(layer, name).detach().clone() for name in names}
    clone = copy.deepcopy(layer)
    # not parametrize.remove_parametrizations: a deep copy shares the generated Parametrized<cls>
    # class, whose properties removal deletes, breaking the original layer
    clone.__class__ = type(layer).__bases__[0]  # the class parametrize derived Parametrized<cls> from
    del clone._modules["parametrizations"]
    for name, v in values.items():
        clone._parameters[name] = nn.Parameter(v, requires_grad=False)
    return clone


def _as_float64(layer: nn.Module) -> nn.Module:
    import copy

    clone = copy.deepcopy(layer)
    return clone.to(torch.float64)
