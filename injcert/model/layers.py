r"""Certifiable layers: every block that touches $x$ carries a sound Lipschitz rule.

The score network is Lipschitz in $x$ *by construction*:

* :class:`LipConv2d` uses the effective weight $W_{\text{eff}} = W \cdot \min(1, c'/B(W))$,
  where $B$ is the differentiable, certified, input-size-independent bound
  :func:`~injcert.theory.spectral.conv_size_independent_bound` (Gram iteration, Delattre et al.
  2023, 2024) and $c' = c(1-\delta)$ the per-layer cap $c$ less a small margin $\delta$ that absorbs
  the float32 rounding of $W_{\text{eff}}$. Its registered rule does **not** trust $B$: it
  recomputes a certified float64 bound of the weight actually used in ``forward``.
* :class:`ResBlock` is $x \mapsto S x + \alpha\, g(x, t, c)$ with $|\alpha| \le \alpha_{\max}$
  ($\alpha = \alpha_{\max}\tanh(a)$), $S$ the identity or a 1×1 :class:`LipConv2d`. Time and
  condition enter $g$ only additively (a bias: Lipschitz constant 0 in $x$) and through a
  per-channel scale $1 + s_{\max}\tanh(\cdot) \in [1 - s_{\max}, 1 + s_{\max}]$, whose sup over every
  $t$ and $c$, $1 + s_{\max}$, is what the rule charges. Hence
  $\operatorname{Lip}_x \le \operatorname{Lip}(S) + |\alpha|\, a^2 (1+s_{\max}) \|W_1\| \|W_2\|$
  with $a$ the activation's constant (theorem 5, ``proofs/``).

No normalisation layer or attention sits on the path from $x$.
"""

from __future__ import annotations

import math
import contextlib
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, InputError, UnsupportedModuleError
from ..theory.lipschitz import product_bound, register_lipschitz_rule, residual_bound, sum_bound
from ..theory.spectral import (conv_size_independent_bound, fantastic_four_matrices, gram_iteration_bound,
                               gram_iteration_bound_closed_form_grad)

__all__ = ["LipConv2d", "batched_normalisation", "batched_effective_weights", "ResBlock", "MaxMin", "make_activation", "ACTIVATIONS", "conv_output_shape"]

BoundFn = Callable[[nn.Module, tuple, str], "tuple[float, tuple]"]

class MaxMin(nn.Module):
    r"""MaxMin / GroupSort with groups of 2 (Anil, Lucas, Grosse 2019): channels are split in two
    halves $(a, b)$ and mapped to $(\max(a, b), \min(a, b))$.

    It is 1-Lipschitz (per pixel it sorts pairs, a piecewise permutation) and gradient-norm
    preserving, which makes it more expressive than ReLU under a Lipschitz budget. It is also
    *exact* arithmetic (no transcendental function), so its value at a pixel never depends on the
    tensor's size or memory layout — unlike PyTorch's vectorised ``exp``-based activations, whose
    vector and scalar-tail code paths differ by an ulp. That is what makes tiled evaluation
    bit-identical to whole-image evaluation (``injcert.tasks.tiling``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c % 2:
            raise InputError(f"MaxMin needs an even number of channels, got {c}")
        a, b = x[:, : c // 2], x[:, c // 2 :]
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


@register_lipschitz_rule(MaxMin)
def _maxmin_rule(module: MaxMin, input_shape: tuple, ctx: Any) -> tuple[float, tuple]:
    if input_shape[0] % 2:
        raise UnsupportedModuleError(f"MaxMin on an odd number of channels ({input_shape[0]})")
    return 1.0, tuple(input_shape)


#: activation name -> module factory (each has a registered Lipschitz rule)
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "maxmin": MaxMin,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (``maxmin``, ``silu``, ``relu``, ``gelu``, ``tanh``).

    Raises:
        ConfigError: an unknown name; the message lists the choices.
    """
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choices: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if not isinstance(v, (tuple, list)) else (int(v[0]), int(v[1]))


def conv_output_shape(shape: tuple, out_channels: int, kernel_size: tuple, stride: tuple,
                      padding: tuple, dilation: tuple) -> tuple[int, int, int]:
    """``(C_out, H_out, W_out)`` of a 2-D convolution on an input of shape ``(C, H, W)``."""
    _, h, w = shape
    ho = (h + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    return (out_channels, ho, wo)


class LipConv2d(nn.Module):
    r"""A 2-D convolution whose operator norm is at most ``cap`` for *every* input size.

    ``forward`` convolves with :meth:`effective_weight`,
    $W_{\text{eff}} = W \min\bigl(1, c(1-\delta)/B(W)\bigr)$, recomputed from the raw parameter
    ``weight`` at every training step (so autograd, and DDP, see the raw parameter). Without grad
    the effective weight is cached together with a **copy** of the raw weight (and the cap, margin,
    ``n_iter``, dtype, device) it was computed from, and reused only while ``weight`` is equal to that
    copy element for element (``torch.equal``): any change — including in-place writes through
    ``weight.data``, which bump neither the version counter nor the storage pointer — invalidates it,
    so a stale cache is impossible. The check costs one comparison of the weight per call, a small
    fraction of a forward and far less than recomputing the bound (timed by hand; the figures are in
    ``docs/notes/history.md``).

    ``forward`` never rounds the weight to a narrower dtype: an input of another dtype is computed in
    the wider of the two (``torch.promote_types``) and the output cast back to the input's dtype, so
    the weight that runs is exactly :meth:`effective_weight`, the one the rule bounds.

    Arguments:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as
            :class:`torch.nn.Conv2d` (zero padding; ``padding=None`` means ``"same"`` for odd
            kernels, ``dilation * (k // 2)``).
        cap: the per-layer budget $c > 0$; ``math.inf`` (or ``None``) disables the
            normalisation (a plain convolution, still certified by its rule).
        n_iter: Gram iterations of the differentiable bound.
        margin: $\delta$, relative slack kept below the cap for float rounding.

    Raises:
        ConfigError: a non-positive cap or margin outside ``[0, 0.1]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: Optional[int | tuple[int, int]] = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        cap: Optional[float] = 1.0,
        n_iter: int = 6,
        margin: float = 1e-4,
    ) -> None:
        super().__init__()
        cap = math.inf if cap is None else float(cap)
        if not cap > 0:
            raise ConfigError(f"cap must be > 0 (or None for unconstrained), got {cap!r}")
        if not 0.0 <= margin <= 0.1:
            raise ConfigError(f"margin must lie in [0, 0.1], got {margin!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.dilation = _pair(dilation)
        if padding is None:
            padding = (self.dilation[0] * (self.kernel_size[0] // 2), self.dilation[1] * (self.kernel_size[1] // 2))
        self.padding = _pair(padding)
        self.groups = int(groups)
        self.cap = cap
        self.n_iter = int(n_iter)
        self.margin = float(margin)
        # Same initialisation as nn.Conv2d (Kaiming-uniform, a = sqrt(5)).
        ref = nn.Conv2d(in_channels, out_channels, self.kernel_size, self.stride, self.padding,
                        self.dilation, self.groups, bias=bias)
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone()) if bias else None
        self._cache: Optional[tuple[tuple, Tensor, Tensor]] = None  # (key, raw weight copy, effective weight)
        self._batched: Optional[Tensor] = None  # set only inside batched_normalisation()

    @property
    def constrained(self) -> bool:
        """Whether the normalisation is active (finite cap)."""
        return math.isfinite(self.cap)

    def _compute_effective_weight(self) -> Tensor:
        w = self.weight
        if not self.constrained:
            return w
        b = conv_size_independent_bound(w, n_iter=self.n_iter)
        target = self.cap * (1.0 - self.margin)
        scale = torch.clamp(target / b.to(w.dtype), max=1.0)
        return w * scale

    def effective_weight(self) -> Tensor:
        """The weight ``forward`` convolves with (differentiable in ``weight`` when grad is on)."""
        w = self.weight
        if torch.is_grad_enabled() and w.requires_grad:
            self._cache = None
            if self._batched is not None:
                return self._batched
            return self._compute_effective_weight()
        key = (w.dtype, w.device, tuple(w.shape), self.cap, self.n_iter, self.margin)
        wd = w.detach()
        if self._cache is not None and self._cache[0] == key and torch.equal(self._cache[1], wd):
            return self._cache[2]
        with torch.no_grad():
            raw = self._compute_effective_weight()
            eff = wd if raw is w else raw.detach()  # unconstrained: the weight itself
        self._cache = (key, wd.clone(), eff)
        return eff

    def forward(self, x: Tensor) -> Tensor:
        w = self.effective_weight()
        b = self.bias
        if w.dtype == x.dtype:
            return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        # never round the weight down to the input's dtype (the rule bounds the weight as stored):
        # compute in the wider dtype, return the input's dtype
        dt = torch.promote_types(w.dtype, x.dtype)
        out = F.conv2d(x.to(dt), w.to(dt), b.to(dt) if b is not None else None,
                       self.stride, self.padding, self.dilation, self.groups)
        return out.to(x.dtype)

    def as_conv2d(self) -> nn.Conv2d:
        """A plain :class:`torch.nn.Conv2d` in float64 holding exactly :meth:`effective_weight`."""
        if self.weight.is_complex():
            raise UnsupportedModuleError(
                f"LipConv2d with a complex weight ({self.weight.dtype}): certified bounds are derived for real "
                "weights only (a cast to float64 would drop the imaginary part)"
            )
        with torch.no_grad():
            w = self.effective_weight().detach().to(torch.float64).cpu()
            conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                             self.dilation, self.groups, bias=self.bias is not None).to(torch.float64)
            conv.weight.copy_(w)
            if self.bias is not None:
                conv.bias.copy_(self.bias.detach().to(torch.float64).cpu())
        return conv

    def output_shape(self, shape: tuple) -> tuple[int, int, int]:
        return conv_output_shape(shape, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, cap={self.cap}")


def batched_effective_weights(layers: list[LipConv2d]) -> list[Tensor]:
    r"""``[layer.effective_weight() for layer in layers]`` (differentiable), computed in a few batched calls.

    The Fantastic-Four bound of a layer is $\sqrt{k_hk_w}\min_j \|R_j\|$ over four reshapes $R_j$
    of its kernel (:func:`~injcert.theory.spectral.fantastic_four_bound`). Here every $R_j$ of every
    layer is put in its tall orientation (same singular values) and the matrices of one shape are
    stacked into a single :func:`~injcert.theory.spectral.gram_iteration_bound` call: a U-Net with
    17 layers of 10 kernel shapes needs 6 batched Gram iterations instead of 68 separate ones (the
    per-step normalisation costs launches, not flops). The values equal the per-layer ones up to
    float rounding, and no guarantee depends on them: a layer's certified rule recomputes its bound
    in float64 from the weight its ``forward`` ran. Layers with ``groups > 1`` or no cap take the
    per-layer path.
    """
    out: list[Optional[Tensor]] = [None] * len(layers)
    mats: dict[int, list[Tensor]] = {}
    for li, layer in enumerate(layers):
        if not layer.constrained:
            out[li] = layer.weight
        elif layer.groups != 1:
            out[li] = layer._compute_effective_weight()
        else:
            mats[li] = [m.mH if m.shape[0] < m.shape[1] else m for m in (r[0] for r in fantastic_four_matrices(layer.weight))]
    # One batched pass over every reshape of every layer, with grad through
    # gram_iteration_bound_closed_form_grad: its forward is the plain Gram iteration (no backward graph
    # of the squarings is built) and its backward is the closed-form Schatten-norm gradient, computed
    # only for the items that receive one. The scale of a layer is clamp(target / (c * min_j B_j), max=1),
    # whose gradient goes to the minimising reshape only (indexed below, read from the host once for all
    # layers) and to nothing where the cap is inactive; so of the ~4 * layers Gram iterations in the
    # forward, only one per active layer is differentiated.
    norms = _bucketed_gram_bounds([(li, j, m) for li, ms in mats.items() for j, m in enumerate(ms)],
                                  {li: layers[li].n_iter for li in mats}, gram_iteration_bound_closed_form_grad)
    order = list(mats)
    # per layer: sqrt(kh * kw) and the target cap * (1 - margin)
    consts = {li: (math.sqrt(layers[li].weight.shape[2] * layers[li].weight.shape[3]),
                   layers[li].cap * (1.0 - layers[li].margin)) for li in order}
    stats = []
    for li in order:
        c, target = consts[li]
        vals = torch.stack([norms[(li, j)].detach() for j in range(len(mats[li]))])
        b = c * vals.min()
        stats.append(torch.stack([vals.argmin().to(vals.dtype), (target / b.to(layers[li].weight.dtype) < 1.0).to(vals.dtype)]))
    for li, (j, on) in zip(order, torch.stack(stats).tolist() if stats else []):
        w = layers[li].weight
        if on:
            c, target = consts[li]
            out[li] = w * torch.clamp(target / (c * norms[(li, int(j))]).to(w.dtype), max=1.0)
        else:  # cap inactive: the scale is clamp(., max=1) = 1 and passes the gradient of w unchanged
            out[li] = w * torch.ones((), dtype=w.dtype, device=w.device)
    return out  # type: ignore[return-value]


def _bucketed_gram_bounds(items: list[tuple[int, int, Tensor]], n_iter: dict[int, int],
                          bound: Callable[[Tensor, int], Tensor] = gram_iteration_bound) -> dict[tuple[int, int], Tensor]:
    """Gram-iteration bounds of ``(layer, reshape, matrix)`` items, one batched ``bound`` call per matrix shape."""
    buckets: dict[tuple, list[tuple[int, int, Tensor]]] = {}
    for li, j, m in items:
        buckets.setdefault((tuple(m.shape), m.dtype, m.device, n_iter[li]), []).append((li, j, m))
    res: dict[tuple[int, int], Tensor] = {}
    for key, group in buckets.items():
        vals = bound(torch.stack([m for _, _, m in group]), key[3])
        for (li, j, _), v in zip(group, vals.unbind(0)):
            res[(li, j)] = v
    return res


@contextlib.contextmanager
def batched_normalisation(model: nn.Module) -> Iterator[None]:
    """Within the block, every :class:`LipConv2d` of ``model`` that runs with grad uses the effective
    weight computed once for all layers by :func:`batched_effective_weights` (one training step)."""
    layers = [m for m in model.modules() if isinstance(m, LipConv2d) and m.weight.requires_grad]
    if not layers or not torch.is_grad_enabled():
        yield
        return
    weights = batched_effective_weights(layers)
    try:
        for layer, w in zip(layers, weights):
            layer._batched = w
        yield
    finally:
        for layer in layers:
            layer._batched = None


@register_lipschitz_rule(LipConv2d)
def _lipconv_rule(module: LipConv2d, input_shape: tuple, ctx: Any) -> tuple[float, tuple]:
    """Certified float64 bound of the weight ``forward`` actually uses (never the cached $B$)."""
    conv = module.as_conv2d()
    return float(ctx.op_norm(conv, tuple(input_shape))), module.output_shape(tuple(input_shape))


class ResBlock(nn.Module):
    r"""Residual block $x \mapsto S x + \alpha\, W_2 \,\phi\bigl(\mu(e) \odot (W_1 \phi(x) + b(e) + P c_\ell)\bigr)$.

    $e$ is the time embedding, $c_\ell$ the condition features at this resolution,
    $\mu(e) = 1 + s_{\max}\tanh(\cdot)$ a per-channel scale and $\alpha = \alpha_{\max}\tanh(a)$.

    Arguments:
        in_channels, out_channels: channels of $x$ and of the output.
        emb_dim: size of the time embedding.
        cond_channels: channels of the condition features $c_\ell$ (0: none).
        activation: name of the activation $\phi$.
        cap: cap of each :class:`LipConv2d` (``None``: unconstrained).
        alpha_max: $\alpha_{\max}$.
        modulation: $s_{\max} \in [0, 1)$.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, cond_channels: int,
                 activation: str = "silu", cap: Optional[float] = 1.0, alpha_max: float = 1.0,
                 modulation: float = 0.5, alpha_init: float = 0.2) -> None:
        super().__init__()
        if not alpha_max > 0:
            raise ConfigError(f"alpha_max must be > 0, got {alpha_max!r}")
        if not 0.0 <= modulation < 1.0:
            raise ConfigError(f"modulation must lie in [0, 1), got {modulation!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.alpha_max = float(alpha_max)
        self.modulation = float(modulation)
        self.act = make_activation(activation)
        self.conv1 = LipConv2d(in_channels, out_channels, 3, cap=cap)
        self.conv2 = LipConv2d(out_channels, out_channels, 3, cap=cap)
        self.skip = None if in_channels == out_channels else LipConv2d(in_channels, out_channels, 1, cap=cap)
        self.emb = nn.Linear(emb_dim, 2 * out_channels)
        self.cond = nn.Conv2d(cond_channels, out_channels, 1) if cond_channels > 0 else None
        self.alpha_raw = nn.Parameter(torch.tensor(math.atanh(alpha_init / self.alpha_max)))

    def alpha(self) -> Tensor:
        """$\\alpha = \\alpha_{\\max}\\tanh(a)$, so $|\\alpha| < \\alpha_{\\max}$."""
        return self.alpha_max * torch.tanh(self.alpha_raw)

    def forward(self, x: Tensor, emb: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        h = self.conv1(self.act(x))
        shift, scale = self.emb(emb).to(h.dtype).chunk(2, dim=1)
        h = h + shift[:, :, None, None]
        if self.cond is not None and cond is not None:
            h = h + self.cond(cond)
        if self.modulation > 0:
            h = h * (1.0 + self.modulation * torch.tanh(scale))[:, :, None, None]
        h = self.conv2(self.act(h))
        s = x if self.skip is None else self.skip(x)
        return s + self.alpha().to(h.dtype) * h

    def lipschitz_terms(self, input_shape: tuple, bound: BoundFn, structural: bool = False) -> tuple[float, tuple]:
        """Bound in $x$ (uniform in $t$, $c$) from the bounds of the sub-layers.

        ``bound(module, shape, name) -> (L, out_shape)`` gives a sub-layer's bound;
        ``structural=True`` charges $\\alpha_{\\max}$ instead of the current $|\\alpha|$.
        """
        a1, s = bound(self.act, input_shape, "act1")
        c1, s = bound(self.conv1, s, "conv1")
        mod = sum_bound(1.0, self.modulation)
        a2, s = bound(self.act, s, "act2")
        c2, out_shape = bound(self.conv2, s, "conv2")
        lip_g = product_bound(a1, c1, mod, a2, c2)
        if structural:
            alpha = self.alpha_max
        else:
            # the value forward uses (in the parameter's dtype) and its float64 evaluation, whichever is larger
            # and its float32 rounding (what ``.to(h.dtype)`` gives for a float32 h)
            a = self.alpha().detach()
            alpha = max(abs(float(a)), abs(float(a.float())),
                        abs(float(self.alpha_max * torch.tanh(self.alpha_raw.detach().double()))))
        if self.skip is None:
            return residual_bound(lip_g, alpha), out_shape
        ls, _ = bound(self.skip, input_shape, "skip")
        return sum_bound(ls, product_bound(alpha, lip_g)), out_shape


@register_lipschitz_rule(ResBlock)
def _resblock_rule(module: ResBlock, input_shape: tuple, ctx: Any) -> tuple[float, tuple]:
    return module.lipschitz_terms(tuple(input_shape), ctx.bound)
