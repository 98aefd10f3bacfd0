"""Chunked symbol evaluation and the batched Gram-iteration path of ``operator_norm_bound``.

Theorem 4 (proofs/04-operator-norms.md, part 1 and "Rounding"): the per-frequency blocks are
processed in memory-bounded chunks; on CUDA each block's norm is bounded by Gram iteration, which
must never fall below the exact norm once :func:`gram_rounding_slack` is applied.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import injcert.theory.spectral as spectral
from injcert.testing import conv_layers
from injcert.theory.spectral import (
    GRAM_TOL,
    ROUNDING_SLACK,
    _conv_bound,
    _conv_geometry,
    _gram_block_norms,
    _max_block_norm,
    _symbol_blocks,
    gram_rounding_slack,
    operator_norm_bound,
)

from helpers import linear_norm

_U = 2.0**-53


def _rfft_reference(w64: torch.Tensor, grid: tuple[int, int], dilation: tuple[int, int]) -> float:
    """The unchunked reference: all ``rfft2`` blocks at once, exact SVD."""
    return float(torch.linalg.matrix_norm(_symbol_blocks(w64, grid, dilation), ord=2).max())


@st.composite
def kernels(draw):
    g = draw(st.sampled_from([1, 2, 3]))
    o, i = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    grid = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    scale = 10.0 ** draw(st.integers(-3, 3))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    w = torch.randn((g, o, i, kh, kw), generator=gen, dtype=torch.float64) * scale
    return w, grid, dil


# ----------------------------------------------------------------------------- (a) chunking


@given(kernels(), st.integers(1, 5))
def test_chunked_equals_unchunked(case, freqs_per_chunk):
    w, grid, dil = case
    per_freq = w.shape[0] * w.shape[1] * w.shape[2] * 16
    whole = _max_block_norm(w, grid, dil, chunk_bytes=2**40)
    chunked = _max_block_norm(w, grid, dil, chunk_bytes=freqs_per_chunk * per_freq)
    ref = _rfft_reference(w, grid, dil)
    # the direct DFT differs from rfft2 (and a matmul from its chunks) only by float64 rounding
    assert chunked == pytest.approx(whole, rel=1e-13, abs=1e-300)
    assert whole == pytest.approx(ref, rel=1e-13, abs=1e-300)


@given(kernels())
def test_gram_path_chunked_equals_unchunked(case):
    w, grid, dil = case
    per_freq = w.shape[0] * w.shape[1] * w.shape[2] * 16
    whole = _max_block_norm(w, grid, dil, method="gram", chunk_bytes=2**40)
    chunked = _max_block_norm(w, grid, dil, method="gram", chunk_bytes=2 * per_freq)
    assert chunked == pytest.approx(whole, rel=1e-12, abs=1e-300)


def test_chunks_respect_the_memory_budget(monkeypatch):
    seen: list[int] = []
    inner = spectral._symbol_block_range

    def spy(*args, **kwargs):
        out = inner(*args, **kwargs)
        seen.append(out.numel() * out.element_size())
        return out

    monkeypatch.setattr(spectral, "_symbol_block_range", spy)
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False).double()
    whole = operator_norm_bound(conv, (8, 20, 20))
    budget = 8 * 8 * 16 * 7  # 7 frequencies per chunk
    seen.clear()
    monkeypatch.setattr(spectral, "BLOCK_CHUNK_BYTES", budget)
    chunked = operator_norm_bound(conv, (8, 20, 20))
    n_freq = 21 * (21 // 2 + 1)  # grid M = 20 + 1 per axis
    assert max(seen) <= budget and sum(seen) == n_freq * 8 * 8 * 16 and len(seen) == math.ceil(n_freq / 7)
    assert chunked == pytest.approx(whole, rel=1e-13)
    assert chunked >= linear_norm(conv, (8, 20, 20))


def test_method_choice():
    w = torch.randn(1, 2, 2, 3, 3, dtype=torch.float64)
    by_device = _max_block_norm(w, (5, 5), (1, 1))
    assert by_device == _max_block_norm(w, (5, 5), (1, 1), method="svd")  # CPU default: exact SVD
    assert by_device <= _max_block_norm(w, (5, 5), (1, 1), method="gram") <= by_device * (1 + 1e-10)
    with pytest.raises(ValueError, match="method"):
        _max_block_norm(w, (5, 5), (1, 1), method="eig")


# ----------------------------------------------------------------------------- (b) Gram soundness


def _unitary(n: int, gen: torch.Generator, complex_: bool) -> torch.Tensor:
    dt = torch.complex128 if complex_ else torch.float64
    q, r = torch.linalg.qr(torch.randn((n, n), generator=gen, dtype=dt))
    d = torch.diagonal(r)
    return q * (d / d.abs().clamp_min(1e-300))


@st.composite
def hostile_blocks(draw):
    """Matrices $U\\operatorname{diag}(\\sigma)V^H$ with adversarial spectra."""
    m, n = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    r = min(m, n)
    complex_ = draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["random", "rank1", "equal", "near_equal", "two_close", "graded", "zero_tail"]))
    if kind == "random":
        sig = torch.rand(r, generator=gen, dtype=torch.float64)
    elif kind == "rank1":
        sig = torch.zeros(r, dtype=torch.float64)
        sig[0] = 1.0
    elif kind == "equal":
        sig = torch.ones(r, dtype=torch.float64)
    elif kind == "near_equal":
        eps = 10.0 ** -draw(st.integers(6, 15))
        sig = 1.0 - eps * torch.arange(r, dtype=torch.float64)
    elif kind == "two_close":
        sig = torch.rand(r, generator=gen, dtype=torch.float64) * 0.5
        sig[0] = 1.0
        if r > 1:
            sig[1] = 1.0 - 10.0 ** -draw(st.integers(3, 15))
    elif kind == "graded":
        sig = 10.0 ** -torch.arange(r, dtype=torch.float64)
    else:
        sig = torch.ones(r, dtype=torch.float64)
        sig[r // 2 :] = 0.0
    scale = 10.0 ** draw(st.integers(-3, 3))
    u = _unitary(m, gen, complex_)[:, :r]
    v = _unitary(n, gen, complex_)[:, :r]
    a = (u * (sig * scale).to(u.dtype)) @ v.mH
    return a


@given(st.lists(hostile_blocks(), min_size=1, max_size=4), st.integers(0, 2))
def test_gram_bound_is_sound_on_hostile_blocks(mats, tol_kind):
    tol = [GRAM_TOL, 1e-6, 0.5][tol_kind]
    for a in mats:
        m, n = a.shape
        exact = float(torch.linalg.svdvals(a)[0])
        # give LAPACK's own error to the truth, against the bound
        truth = exact * (1 + 8 * max(m, n) * _U)
        raw = float(_gram_block_norms(a, tol=tol))
        assert raw * (1 + gram_rounding_slack(m, n)) >= truth
        assert raw >= exact * (1 - 1e-13)  # in practice even the raw value is above
        assert raw <= exact * math.exp(tol) * (1 + 1e-12) + 1e-300  # tight up to the stopping tolerance
    # batched call: a batch runs until its slowest block converges, which only tightens the others
    same = [a for a in mats if a.shape == mats[0].shape and a.dtype == mats[0].dtype]
    batch = _gram_block_norms(torch.stack(same), tol=tol)
    one = torch.stack([_gram_block_norms(a, tol=tol) for a in same])
    exact = torch.linalg.svdvals(torch.stack(same))[:, 0]
    assert torch.all(batch <= one * (1 + 1e-12))
    assert torch.all(batch * (1 + gram_rounding_slack(*same[0].shape)) >= exact * (1 + 8 * max(same[0].shape) * _U))


def test_gram_bound_edge_cases():
    z = torch.zeros(3, 4, 5, dtype=torch.complex128)
    assert torch.equal(_gram_block_norms(z), torch.zeros(3, dtype=torch.float64))
    big = torch.full((4, 4), 1e200, dtype=torch.float64)
    assert float(_gram_block_norms(big)) >= 4e200 * (1 - 1e-13)
    tiny = torch.eye(5, dtype=torch.float64) * 1e-300
    assert float(_gram_block_norms(tiny)) >= 1e-300 * (1 - 1e-13)
    bad = torch.tensor([[1.0, math.inf], [0.0, 1.0]], dtype=torch.float64)
    assert math.isnan(float(_gram_block_norms(bad)))
    inf_kernel = torch.full((1, 1, 1, 1, 1), math.inf, dtype=torch.float64)
    assert math.isnan(_max_block_norm(inf_kernel, (2, 2), (1, 1), method="gram"))  # certify_float makes it inf
    with pytest.raises(ValueError):
        _gram_block_norms(torch.ones(3))
    assert gram_rounding_slack(128, 128) < 1e-10 and gram_rounding_slack(2**30, 2**30) == math.inf


@given(conv_layers(max_channels=4, max_kernel=3, max_size=7, transpose=True), st.integers(-3, 3), st.booleans())
def test_gram_conv_bound_dominates_dense_truth(case, log_scale, size_independent):
    layer, shape = case
    if isinstance(layer, nn.ConvTranspose2d):  # the strategy may draw a padding too large for the output
        s, p, d = layer.stride[0], layer.padding[0], layer.dilation[0]
        assume(min((shape[1] - 1) * s - 2 * p + d * (k - 1) + 1 for k in layer.kernel_size) >= 1)
    with torch.no_grad():
        layer.weight.mul_(10.0**log_scale)
    truth = linear_norm(layer, shape)
    geo = _conv_geometry(layer, shape)
    gram = _conv_bound(geo, size_independent, method="gram")
    svd = _conv_bound(geo, size_independent, method="svd")
    assert gram >= truth
    assert svd >= truth
    assert svd * (1 - 1e-12) <= gram <= svd * (1 + ROUNDING_SLACK)


def test_equal_singular_values_worst_case_for_gram():
    """An orthogonal 1x1 conv: every block has all singular values equal (Gram's slowest case)."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    conv = nn.Conv2d(16, 16, 1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(q[:, :, None, None] * 3.0)
    geo = _conv_geometry(conv, (16, 6, 6))
    gram = _conv_bound(geo, False, method="gram")
    assert 3.0 <= gram <= 3.0 * (1 + 2 * ROUNDING_SLACK)


# ----------------------------------------------------------------------------- (c) CUDA


def _cuda_cases() -> list[tuple[nn.Module, tuple[int, int, int]]]:
    torch.manual_seed(0)
    return [
        (nn.Conv2d(32, 32, 3, padding=1), (32, 16, 16)),
        (nn.Conv2d(8, 12, 3, stride=2, padding=1, dilation=2, groups=4, padding_mode="reflect"), (8, 11, 9)),
        (nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1, groups=2), (6, 7, 7)),
        (nn.Conv2d(4, 4, 5, padding=2, padding_mode="circular"), (4, 8, 8)),
    ]


@pytest.mark.cuda
@pytest.mark.parametrize("idx", range(4))
@pytest.mark.parametrize("size_independent", [False, True])
def test_cuda_matches_cpu(idx, size_independent):
    layer, shape = _cuda_cases()[idx]
    cpu = operator_norm_bound(layer, shape, size_independent=size_independent)
    gpu = operator_norm_bound(layer.cuda(), shape, size_independent=size_independent)
    via_kw = operator_norm_bound(layer.cpu(), shape, size_independent=size_independent, device="cuda")
    assert cpu * (1 - 1e-12) <= gpu <= cpu * (1 + ROUNDING_SLACK)
    assert via_kw == pytest.approx(gpu, rel=1e-13)
    if math.prod(shape) <= 1024:
        assert gpu >= linear_norm(layer.cpu(), shape)


@pytest.mark.cuda
@given(st.lists(hostile_blocks(), min_size=1, max_size=3))
def test_cuda_gram_bound_is_sound_on_hostile_blocks(mats):
    for a in mats:
        m, n = a.shape
        exact = float(torch.linalg.svdvals(a)[0])
        raw = float(_gram_block_norms(a.cuda()))
        assert raw * (1 + gram_rounding_slack(m, n)) >= exact * (1 + 8 * max(m, n) * _U)
        assert raw <= exact * math.exp(GRAM_TOL) * (1 + 1e-12) + 1e-300
