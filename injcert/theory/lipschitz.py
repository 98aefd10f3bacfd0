r"""Certified compositional Lipschitz bounds and sound empirical lower bounds (Theorem 5).

Long because it is the one home of Theorem 5: every rule for a PyTorch layer and the sound lower
bounds (proofs/05). The registry itself and the activation constants live one level down, in
:mod:`injcert.theory._rules` (shared with :mod:`injcert.theory.traced`, which installs its traced rule
there as the fallback); every name is re-exported here.

``lipschitz_bound(module, input_shape)`` walks a module tree through a registry of rules,
one per module type (looked up along the type's MRO; a subclass inherits its parent's rule only
if it does not change the parent's forward path, :func:`get_lipschitz_rule`). Modules with complex
parameters or buffers are refused. Each rule returns a certified bound on the $\ell_2$
Lipschitz constant **in the input x** and the output shape, rounded up to a float. A module
without a rule, a subclass overriding ``forward`` without its own rule, and a module with forward
(pre-)hooks raise :class:`~injcert.errors.UnsupportedModuleError` naming the module; nothing is
ever skipped. Conditioning inputs other than ``x`` (time, observation, mask)
are held fixed: they contribute nothing to the Lipschitz constant in ``x`` (proofs/05).

A module of a class defined outside PyTorch without a rule is traced instead
(:mod:`injcert.theory.traced`): its ``forward`` graph is bounded op by op, submodules with rules
kept whole.

``lipschitz_lower_bound(fn, points)`` returns an *achieved* ratio, a sound lower bound.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from fractions import Fraction
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

from injcert.errors import ArgumentError, ArgumentTypeError, UnsupportedModuleError
from injcert.theory._rules import (  # the registry and the activation constants (re-exported)
    GELU_LIPSCHITZ,
    GELU_TANH_LIPSCHITZ,
    SILU_LIPSCHITZ,
    _C_TANH,
    _GELU_TANH_ARGMAX,
    _RULES,
    _SILU_ARGMAX,
    _SOFTPLUS_REASON,
    Rule,
    _bisect,
    _find_rule,
    _gelu_d1,
    _gelu_tanh_d1,
    _gelu_tanh_d2,
    _has_rule_class,
    _rule_or_trace,
    _sig,
    _silu_d1,
    get_lipschitz_rule,
    register_lipschitz_rule,
)
from injcert.theory.rounding import fraction_up
from injcert.theory.spectral import (
    _reject_forward_hooks,
    certify_float,
    operator_norm_bound,
    real_float64,
)
from .._compat import quiet_jvp_decompositions

__all__ = [
    "LayerBound",
    "LipschitzBound",
    "BoundContext",
    "Rule",
    "register_lipschitz_rule",
    "get_lipschitz_rule",
    "lipschitz_bound",
    "residual_bound",
    "sum_bound",
    "concat_bound",
    "product_bound",
    "activation_constant",
    "SILU_LIPSCHITZ",
    "GELU_LIPSCHITZ",
    "GELU_TANH_LIPSCHITZ",
    "lipschitz_lower_bound",
    "finite_difference_lower_bound",
]


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class LayerBound:
    """One row of a Lipschitz certificate: a leaf layer's dotted name, type and bound."""
    name: str
    type: str
    bound: float


@dataclasses.dataclass
class LipschitzBound:
    """A certified upper bound on the $\\ell_2$ Lipschitz constant of a module in ``x``."""
    value: float
    layers: list[LayerBound]
    input_shape: tuple
    size_independent: bool

    def table(self) -> str:
        """A readable per-layer table (name, type, bound) followed by the total."""
        rows = [(lb.name or "<root>", lb.type, f"{lb.bound:.6g}") for lb in self.layers]
        head = ("layer", "type", "bound")
        widths = [max([len(head[i])] + [len(r[i]) for r in rows]) for i in range(3)]
        fmt = "  ".join("{:<%d}" % w for w in widths)
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*r) for r in rows]
        kind = "every input size" if self.size_independent else f"input shape {self.input_shape}"
        lines.append(f"Lipschitz bound (certified, {kind}): {self.value:.6g}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "value": self.value,
            "input_shape": list(self.input_shape),
            "size_independent": self.size_independent,
            "layers": [dataclasses.asdict(lb) for lb in self.layers],
        }


# ----------------------------------------------------------------------------- combinators


def _exact(v: float, what: str) -> Fraction | None:
    """``v`` as an exact rational (``None`` for ``+inf``); NaN or negative values raise."""
    v = float(v)
    if math.isnan(v) or v < 0:
        raise ArgumentError(f"{what} must be a Lipschitz constant >= 0, got {v!r}")
    return None if math.isinf(v) else Fraction(v)


def residual_bound(lip_g: float, alpha: float = 1.0) -> float:
    r"""$\mathrm{Lip}(x + \alpha g(x)) \le 1 + |\alpha|\,\mathrm{Lip}(g)$, rounded up to a float."""
    a, g = abs(float(alpha)), _exact(lip_g, "lip_g")
    if math.isnan(a):
        raise ArgumentError(f"alpha must be a number, got {alpha!r}")
    if a == 0:
        return 1.0
    if g is None or math.isinf(a):
        return math.inf
    return fraction_up(1 + Fraction(a) * g)


def sum_bound(*lips: float) -> float:
    r"""$\mathrm{Lip}(\sum_i f_i) \le \sum_i \mathrm{Lip}(f_i)$ (maps of the same input), rounded up."""
    vals = [_exact(v, "sum_bound term") for v in lips]
    if any(v is None for v in vals):
        return math.inf
    return fraction_up(sum(vals, Fraction(0)))


def concat_bound(*lips: float) -> float:
    r"""$\mathrm{Lip}(x \mapsto (f_1(x), \dots, f_n(x))) \le \sqrt{\sum_i \mathrm{Lip}(f_i)^2}$, rounded up."""
    vals = [_exact(v, "concat_bound term") for v in lips]
    if any(v is None for v in vals):
        return math.inf
    target = sum((v * v for v in vals), Fraction(0))
    r = math.hypot(*(float(v) for v in lips))  # error < 1 ulp, no under/overflow of the squares
    while not math.isinf(r) and Fraction(r) ** 2 < target:
        r = math.nextafter(r, math.inf)
    return r


def _sqrt_up(n: int) -> float:
    """The smallest float ``>= sqrt(n)`` for an integer ``n >= 0`` (``math.sqrt`` rounds to nearest)."""
    r = math.sqrt(n)
    while Fraction(r) ** 2 < n:
        r = math.nextafter(r, math.inf)
    return r


def product_bound(*lips: float) -> float:
    r"""$\mathrm{Lip}(f_n \circ \dots \circ f_1) \le \prod_i \mathrm{Lip}(f_i)$, rounded up.

    A zero factor gives exactly 0 (a constant map composed with anything is constant).
    """
    vals = [_exact(v, "product_bound factor") for v in lips]
    if any(v == 0 for v in vals):
        return 0.0
    if any(v is None for v in vals):
        return math.inf
    out = Fraction(1)
    for v in vals:
        out *= v
    return fraction_up(out)


# ----------------------------------------------------------------------------- registry
# The registry (``Rule``, ``register_lipschitz_rule``, ``get_lipschitz_rule``, the lookup along the MRO
# and the traced fallback) lives in :mod:`injcert.theory._rules`, below the tracer; imported above.


class BoundContext:
    """State passed to rules: the size-independence flag and the per-layer rows."""
    def __init__(self, size_independent: bool = False, t: Optional[float] = None) -> None:
        self.size_independent = bool(size_independent)
        #: the noise level: rules of time-dependent modules bound the map for every t' >= t
        #: (``None``: uniformly over every t). Modules that do not depend on t ignore it.
        self.t = None if t is None else float(t)
        self.layers: list[LayerBound] = []
        #: extra forward inputs of modules bounded by tracing, by ``id(module)`` (the root's args/kwargs)
        self._forward_inputs: dict[int, tuple[tuple, dict]] = {}

    def bound(self, module: nn.Module, input_shape: Sequence[int], name: str) -> tuple[float, tuple]:
        """Bound a submodule through the registry; records a row when ``module`` is a leaf."""
        shape = tuple(int(v) for v in input_shape)
        _reject_forward_hooks_named(module, ".".join(p for p in [*self._prefix, name] if p))
        _reject_complex(module, recurse=False)  # also when a context is used without lipschitz_bound
        rule = _rule_or_trace(module)
        n_before = len(self.layers)
        self._prefix.append(name)
        try:
            value, out_shape = rule(module, shape, self)
        finally:
            self._prefix.pop()
        full = ".".join(p for p in [*self._prefix, name] if p)
        value = float(value)
        if not value >= 0.0:  # also catches NaN
            raise ArgumentError(f"rule for {type(module).__name__} returned an invalid bound {value!r}")
        if len(self.layers) == n_before:  # leaf (its rule recorded nothing itself)
            self.layers.append(LayerBound(full, type(module).__name__, value))
        return value, tuple(out_shape)

    def op_norm(self, layer: nn.Module, input_shape: Sequence[int]) -> float:
        """:func:`~injcert.theory.spectral.operator_norm_bound` with this context's flag."""
        return operator_norm_bound(layer, input_shape, size_independent=self.size_independent)

    @property
    def _prefix(self) -> list[str]:
        if not hasattr(self, "_prefix_stack"):
            self._prefix_stack: list[str] = []
        return self._prefix_stack


def lipschitz_bound(module: nn.Module, input_shape: Sequence[int], *, args: Sequence[Any] = (),
                    kwargs: Optional[dict[str, Any]] = None, size_independent: bool = False,
                    t: Optional[float] = None) -> LipschitzBound:
    """Certified upper bound on the $\\ell_2$ Lipschitz constant of ``module`` in its input.

    A module with a registered rule (:func:`register_lipschitz_rule`) is bounded by it; a module
    whose class (defined outside PyTorch) has none is traced with :mod:`torch.fx` and its graph
    bounded op by op (:mod:`injcert.theory.traced`, proofs/05 items 12–18); submodules with rules
    stay whole and keep their rules.

    Arguments:
        module: the network.
        input_shape: the input shape **without** the batch dimension, e.g. ``(C, H, W)``.
        args, kwargs: further inputs of ``module.forward`` after ``x`` (time, condition), held fixed:
            the bound is in ``x`` only. Used when the module is traced; a registered rule bounds the
            module uniformly over them.
        size_independent: bound valid for every spatial input size (convolutions use
            :func:`~injcert.theory.spectral.conv_size_independent_bound`-type bounds).
        t: a noise level: a time-dependent network (a noise-adaptive budget) is bounded for every
            $t' \\ge t$ instead of uniformly over $t$ (``None``).

    Returns:
        :class:`LipschitzBound` with the value and one row per leaf layer.

    Raises:
        UnsupportedModuleError: for a PyTorch module without a rule, a module in an unsupported
            state (e.g. BatchNorm or Dropout in training mode), or a traced op without a rule (one
            line naming the op, the module path and the source line).
    """
    if isinstance(module, torch.export.ExportedProgram):
        module = module.module()  # parameters and buffers back as get_attr constants; the inputs are the user's
    ctx = BoundContext(size_independent, t)
    shape = tuple(int(v) for v in input_shape)
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise ArgumentTypeError(f"args must be a tuple of extra forward inputs, got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ArgumentTypeError(f"kwargs must be a dict, got {type(kwargs).__name__}")
    if args or kwargs:
        ctx._forward_inputs[id(module)] = (tuple(args), dict(kwargs or {}))
    for sub_name, sub in module.named_modules():  # also submodules a custom rule reads directly
        _reject_forward_hooks_named(sub, sub_name)
    _reject_complex(module)
    value, _ = ctx.bound(module, shape, "")
    return LipschitzBound(float(value), list(ctx.layers), shape, bool(size_independent))


def _reject_complex(module: nn.Module, recurse: bool = True) -> None:
    """Refuse a module holding any complex parameter or buffer (proofs/05, item 6).

    The rules cast weights with ``.to(torch.float64)``, which silently drops imaginary parts (a
    ``1j * I`` weight would be certified with bound 0); none of them is derived for complex maps.
    """
    for kind, items in (("parameter", module.named_parameters(recurse=recurse)),
                        ("buffer", module.named_buffers(recurse=recurse))):
        for name, t in items:
            if t.is_complex():
                raise UnsupportedModuleError(
                    f"{kind} {name!r} of {type(module).__name__} is complex ({t.dtype}); certified Lipschitz bounds "
                    "are derived for real floating-point weights only (a cast to float64 would drop the imaginary part)"
                )


def _reject_forward_hooks_named(module: nn.Module, name: str) -> None:
    try:
        _reject_forward_hooks(module)
    except UnsupportedModuleError as e:
        raise UnsupportedModuleError(f"module {name or '<root>'!r}: {e}") from None


def _output_shape(module: nn.Module, shape: tuple) -> tuple:
    p = next(iter(module.parameters()), None)
    dtype = p.dtype if p is not None else torch.get_default_dtype()
    with torch.no_grad():
        y = module(torch.zeros((1, *shape), dtype=dtype))
    return tuple(y.shape[1:])


# ----------------------------------------------------------------------------- rules: structure


@register_lipschitz_rule(nn.Sequential)
def _sequential_rule(module: nn.Sequential, shape: tuple, ctx: BoundContext) -> tuple[float, tuple]:
    # Sequential.forward runs ``for m in self`` = every entry of ``_modules`` in order, *with*
    # repetitions: named_children() would skip a module that appears twice (Sequential(a, a)).
    # Subclasses changing __iter__/_modules/... are refused by get_lipschitz_rule.
    lips = []
    for name, child in list(module._modules.items()):
        if child is None:
            raise UnsupportedModuleError(f"{type(module).__name__} entry {name!r} is None; its forward would fail")
        lip, shape = ctx.bound(child, shape, name)
        lips.append(lip)
    return product_bound(*lips), shape


@register_lipschitz_rule(nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
def _linear_rule(module: nn.Module, shape: tuple, ctx: BoundContext) -> tuple[float, tuple]:
    lip = ctx.op_norm(module, shape)
    if isinstance(module, nn.Linear):
        return lip, (*shape[:-1], module.out_features)
    return lip, _output_shape(module, shape)


@register_lipschitz_rule(nn.Identity, nn.Flatten, nn.Unflatten)
def _reshape_rule(module: nn.Module, shape: tuple, ctx: BoundContext) -> tuple[float, tuple]:
    return 1.0, _output_shape(module, shape)


@register_lipschitz_rule(nn.Dropout, nn.Dropout2d, nn.Dropout1d)
def _dropout_rule(module: nn.Module, shape: tuple, ctx: BoundContext) -> tuple[float, tuple]:
    if module.training and module.p > 0:
        raise UnsupportedModuleError(f"{type(module).__name__} in training mode is random; call .eval() first")
    return 1.0, shape


@register_lipschitz_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def _batchnorm_rule(module: nn.modules.batchnorm._BatchNorm, shape: tuple, ctx: BoundContext) -> tuple[float, tuple]:
    if module.training or module.running_var is None:
        raise UnsupportedModuleError(
            f"{type(module).__name__} in training mode (or without running statistics) depends on the batch; "
            "call .eval() first"
        )
    # The module computes its per-channel coefficient in its own dtype (CPU: w * rsqrt(var + eps));
    # in float32 that differs from the float64 value by a few ulps, more than certify_float's 1e-9.
    # Bound both: the coefficients as the module computes them, and the float64 value inflated by
    # 10u of the module's dtype, which covers eps rounded to the dtype, a correctly rounded sum and
    # product and an rsqrt within 3 ulps: (1 + 6u)(1 + u)/(1 - u) <= 1 + 10u (proofs/05, item 6).
    var_t = module.running_var.detach()
    var = real_float64(var_t, f"{type(module).__name__}.running_var")
    scale = 1.0 / torch.sqrt(var + module.eps)
    w_t = module.weight.detach() if (module.affine and module.weight is not None) else None
    if w_t is not None:
        scale = scale * real_float64(w_t, f"{type(module).__name__}.weight").abs()
    dt = var_t.dtype if w_t is None else torch.promote_types(var_t.dtype, w_t.dtype)
    u = torch.finfo(dt).eps / 2
    coef = torch.rsqrt(var_t.to(dt) + module.eps)
    if w_t is not None:
        coef = w_t.to(dt) * coef
    as_run = float(coef.abs().max().to(torch.float64)) if coef.numel() else 0.0
    exact = float(scale.max()) if scale.numel() else 0.0
    inflated = exact * (1.0 + 10.0 * u)
    if math.isnan(as_run) or math.isnan(inflated):
        return math.inf, shape
    return certify_float(max(as_run, inflated)), shape


@register_lipschitz_rule(nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.MultiheadAttention)
def _unsupported_rule(module: nn.Module, shape: tuple, ctx: BoundContext) -> tuple[float, tuple]:
    raise UnsupportedModuleError(
        f"{type(module).__name__} has no certified global Lipschitz bound (it is not globally Lipschitz "
        "or its constant depends on the input); replace it by a certifiable layer"
    )


# ----------------------------------------------------------------------------- rules: activations
# The constants (SILU_LIPSCHITZ, GELU_LIPSCHITZ, GELU_TANH_LIPSCHITZ, the Softplus refusal) live in
# :mod:`injcert.theory._rules`, shared with the tracer; imported above.


def activation_constant(module: nn.Module) -> float:
    """The exact global Lipschitz constant (rounded up) of a supported activation module.

    Every value is exact in float64 (0, 1/4, 1, ``max(1, |s|)``) or rounded up (SiLU, GELU).

    Raises:
        UnsupportedModuleError: for an activation without a known constant, and for
            ``nn.Softplus`` (PyTorch's threshold switch makes it discontinuous).
    """
    if isinstance(module, nn.Softplus):
        raise UnsupportedModuleError(_SOFTPLUS_REASON.format(beta=module.beta, threshold=module.threshold))
    if isinstance(module, (nn.ReLU, nn.ReLU6, nn.Tanh, nn.Hardtanh, nn.Identity)):
        if isinstance(module, nn.Hardtanh) and module.max_val <= module.min_val:
            return 0.0
        return 1.0
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(float(module.negative_slope)))
    if isinstance(module, nn.ELU):
        return max(1.0, abs(float(module.alpha)))
    if isinstance(module, nn.Sigmoid):
        return 0.25
    if isinstance(module, nn.SiLU):
        return SILU_LIPSCHITZ
    if isinstance(module, nn.GELU):
        return GELU_TANH_LIPSCHITZ if module.approximate == "tanh" else GELU_LIPSCHITZ
    raise UnsupportedModuleError(f"no Lipschitz constant known for activation {type(module).__name__}")


@register_lipschitz_rule(nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.GELU, nn.Softplus, nn.Hardtanh)
def _activation_rule(module: nn.Module, shape: tuple, ctx: BoundContext) -> tuple[float, tuple]:
    return activation_constant(module), shape


# ----------------------------------------------------------------------------- rules: pooling


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (int, float)):
        return (int(v), int(v))
    t = tuple(int(x) for x in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


@register_lipschitz_rule(nn.AvgPool2d)
def _avgpool_rule(module: nn.AvgPool2d, shape: tuple, ctx: BoundContext) -> tuple[float, tuple]:
    k, s, p = _pair(module.kernel_size), _pair(module.stride if module.stride is not None else module.kernel_size), _pair(module.padding)
    out_shape = _output_shape(module, shape)
    div = module.divisor_override
    if ctx.size_independent:
        # Schur test: ||A||^2 <= (max row sum)(max column sum)
        norm = 1.0
        for ax in range(2):
            wmax = 1.0 / k[ax] if (module.count_include_pad and not module.ceil_mode and div is None) else 1.0
            row = 1.0
            if div is not None:
                wmax, row = 1.0, float(k[ax])
            col = math.ceil(k[ax] / s[ax]) * wmax
            norm *= math.sqrt(row * col)
        if div is not None:
            norm /= float(div)
        return certify_float(norm), out_shape
    norm = 1.0
    for ax in range(2):
        n = shape[-2 + ax]
        eye = torch.eye(n, dtype=torch.float64).unsqueeze(1)
        if div is not None:
            inb = torch.nn.functional.max_pool1d(eye, k[ax], s[ax], p[ax], 1, module.ceil_mode).squeeze(1).T
            a = (inb > 0).to(torch.float64)  # window sums
        else:
            a = torch.nn.functional.avg_pool1d(eye, k[ax], s[ax], p[ax], module.ceil_mode, module.count_include_pad).squeeze(1).T
        norm *= float(torch.linalg.matrix_norm(a, ord=2))
    if div is not None:
        norm /= float(div)
    return certify_float(norm, max(shape[-2:])), out_shape


@register_lipschitz_rule(nn.MaxPool2d)
def _maxpool_rule(module: nn.MaxPool2d, shape: tuple, ctx: BoundContext) -> tuple[float, tuple]:
    k = _pair(module.kernel_size)
    s = _pair(module.stride if module.stride is not None else module.kernel_size)
    d = _pair(module.dilation)
    count = 1
    for ax in range(2):
        ext = d[ax] * (k[ax] - 1) + 1
        count *= min(k[ax], math.ceil(ext / s[ax]))
    return _sqrt_up(count), _output_shape(module, shape)


#: Size-independent nearest-upsampling bounds hold for every input whose *output* extent along each
#: axis is at most this (proofs/05, item 4): PyTorch computes source indices in float32,
#: ``floor(float(dst) * float(1/scale))``, and beyond $2^{24}$ neither ``dst`` nor the product is
#: exact, so the number of copies of one pixel grows without bound with the size.
UPSAMPLE_MAX_OUTPUT_EXTENT: int = 2**20


def _axis_scale(module: nn.Upsample, ax: int, n_axes: int) -> Optional[float]:
    sf = module.scale_factor
    if sf is None:
        return None
    if isinstance(sf, (tuple, list)):
        if len(sf) != n_axes:
            raise ArgumentError(f"Upsample scale_factor {sf!r} does not match {n_axes} spatial axes")
        return float(sf[ax])
    return float(sf)


#: The two index computations of PyTorch's nearest kernels (``floorf(dst * scale)``, clamped to ``n - 1``):
#: ``"f32"`` — scale and product in float32 (CPU for float32/half/bfloat16 inputs, CUDA); ``"f64"`` —
#: scale and product in float64, the product rounded to float32 before ``floorf`` (CPU, float64 inputs).
#: Checked against the kernels by tests/test_audit_regressions.py.
_INDEX_MODES = ("f32", "f64")


def _unclamped_sources(d: Tensor, scale64: float, mode: str) -> Tensor:
    """``floor(dst * scale)`` for the integer tensor ``d`` (exact in float32 below 2^24), as ``mode`` computes it."""
    if mode == "f32":
        prod = d.to(torch.float32) * torch.tensor(scale64, dtype=torch.float64).to(torch.float32)
    else:
        prod = (d.to(torch.float64) * scale64).to(torch.float32)
    return torch.floor(prod).to(torch.int64)


def _kernel_scale(module: nn.Upsample, sf: Optional[float], n: int, out: int, mode: str) -> float:
    """The kernel's ``scale`` (as a float64 value): ``1.0 / sf`` when the scale factor reaches the kernel (given,
    ``recompute_scale_factor`` not true), else ``n / out``, computed in float32 for ``"f32"``, float64 for ``"f64"``."""
    if sf is not None and sf > 0 and not module.recompute_scale_factor:
        return 1.0 / sf  # computed in double; "f32" rounds it to float32
    if mode == "f32":
        return float(torch.tensor(float(n), dtype=torch.float32) / out)
    return n / out


def _nearest_sources(module: nn.Upsample, sf: Optional[float], n: int, out: int, mode: str) -> Tensor:
    """Source index of each of ``out`` outputs by PyTorch's general nearest formula in ``mode``."""
    d = torch.arange(out, dtype=torch.int64)
    return _unclamped_sources(d, _kernel_scale(module, sf, n, out, mode), mode).clamp_(max=n - 1)


def _axis_copies_fixed(module: nn.Upsample, sf: Optional[float], n: int, out: int) -> int:
    """Largest number of outputs reading one input position along an axis, by the general formula in
    both index modes.

    PyTorch's CPU kernel special-cases ``out == n`` (copy) and ``out == 2n`` (``dst >> 1``); its CUDA
    kernel does not. Both are counted: the rule must hold on either device and for either dtype."""
    if out < 1:
        return 0
    cnt = 1
    for mode in _INDEX_MODES:
        cnt = max(cnt, int(torch.bincount(_nearest_sources(module, sf, n, out, mode), minlength=n).max()))
    if out == 2 * n:
        cnt = max(cnt, 2)
    return cnt


@functools.lru_cache(maxsize=64)
def _axis_copies_every_size(sf: float, limit: int = UPSAMPLE_MAX_OUTPUT_EXTENT) -> int:
    r"""Largest number of copies of one pixel along an axis, over every input size whose output extent
    is $\le$ ``limit``, for a scale factor passed to the kernel (proofs/05, item 4).

    With $s = 1/\mathrm{sf}$ (rounded) the source of output $d$ is
    $\min(\lfloor \mathrm{fl}(d\,s)\rfloor, n-1)$ (both index modes of :data:`_INDEX_MODES` are enumerated)
    and the output extent is $\lfloor n\,\mathrm{sf}\rfloor$. The unclamped sources $i(d)$ do not
    depend on $n$ and are non-decreasing in $d$: an interior pixel gets at most the longest run of
    equal $i(d)$, $d <$ ``limit``; the last pixel gets $o - \min\{d : i(d) \ge n-1\}$ outputs for
    the output extent $o = \lfloor n\,\mathrm{sf}\rfloor$, largest at the smallest $n$ giving $o$,
    enumerated for every $o \le$ ``limit``. The CPU special cases (extent $n$ or $2n$) give 1 or 2.
    """
    if sf == 1.0:
        return 1
    if sf == 2.0:
        return 2  # extent 2n: dst >> 1 (CPU) or floor(dst * 0.5), exact below 2^24 (CUDA)
    import numpy as np  # IEEE float32/float64 elementwise arithmetic, faster than torch here

    # the smallest n giving each output extent o: ceil(o / sf) is within one of it
    os_ = np.arange(1, limit + 1, dtype=np.float64)
    n = np.maximum(np.ceil(os_ / sf), 1.0)
    n -= (n > 1) & (np.floor((n - 1) * sf) >= os_)
    n += np.floor(n * sf) < os_
    hit = np.floor(n * sf) == os_  # Python's floor(float(n) * sf)
    o_i, n_i = os_[hit].astype(np.int64), n[hit].astype(np.int64)
    best = 2 if bool((o_i == 2 * n_i).any()) else 1
    d = np.arange(limit, dtype=np.int64)
    for mode in _INDEX_MODES:
        if mode == "f32":
            prod = d.astype(np.float32) * np.float32(1.0 / sf)
        else:
            prod = (d.astype(np.float64) * (1.0 / sf)).astype(np.float32)
        idx = np.floor(prod).astype(np.int64)  # non-decreasing in d
        edges = np.concatenate(([0], np.flatnonzero(np.diff(idx)) + 1, [limit]))
        best = max(best, int(np.diff(edges).max()))  # longest run: an interior pixel
        if o_i.size:  # the last pixel n - 1 of an input of n pixels, output extent o
            first = np.searchsorted(idx, n_i - 1, side="left")
            best = max(best, int((o_i - first).max()))
    return best


@register_lipschitz_rule(nn.Upsample)
def _upsample_rule(module: nn.Upsample, shape: tuple, ctx: BoundContext) -> tuple[float, tuple]:
    r"""Nearest upsampling copies every output from one input pixel: $\|U\| = \sqrt{\mu}$ with $\mu$ the
    largest number of copies of one pixel (proofs/05, item 4), counted the way the module computes them.

    At a fixed shape $\mu$ is counted on the module's own output (each input pixel labelled by its
    index) and, per axis, by PyTorch's general float32 index formula (what CUDA runs), whichever is
    larger. Size-independently a ``scale_factor`` is required, and the count is enumerated over every
    input size up to an output extent of :data:`UPSAMPLE_MAX_OUTPUT_EXTENT` per axis.
    """
    if module.mode != "nearest":
        raise UnsupportedModuleError(f"Upsample(mode={module.mode!r}) has no rule; use mode='nearest'")
    spatial = tuple(int(v) for v in shape[1:])
    n_axes = len(spatial)
    if n_axes not in (1, 2, 3):
        raise ArgumentError(f"Upsample expects an input shape (C, *spatial) with 1 to 3 spatial axes, got {shape!r}")
    if ctx.size_independent:
        if module.scale_factor is None:
            raise UnsupportedModuleError(
                f"Upsample(size={module.size!r}) in size-independent mode: the number of copies of a pixel "
                "depends on the input size (e.g. 4x4 -> 8x8 copies each pixel 4 times, 1x1 -> 8x8 64 times); "
                "no bound valid for every input size. Use scale_factor=..., or a bound for a given input shape"
            )
        mult = 1
        for ax in range(n_axes):
            sf = _axis_scale(module, ax, n_axes)
            assert sf is not None
            if module.recompute_scale_factor and sf not in (1.0, 2.0):
                raise UnsupportedModuleError(
                    f"Upsample(scale_factor={module.scale_factor!r}, recompute_scale_factor=True) in size-independent "
                    "mode: the kernel's scale depends on the input size; no bound valid for every size"
                )
            if not (math.isfinite(sf) and sf > 0):
                raise ArgumentError(f"Upsample scale_factor must be finite and > 0, got {module.scale_factor!r}")
            mult *= _axis_copies_every_size(sf)
        out_shape = _output_shape(module, shape)
        return _sqrt_up(mult), out_shape
    # fixed shape: label every input pixel with its index and run the module itself
    numel = math.prod(spatial)
    if numel >= 2**53:
        raise ArgumentError(f"input shape {shape!r} is too large to label its pixels exactly in float64")
    mult, out_spatial = 0, spatial
    for dt in (torch.float32, torch.float64):  # the CPU kernel computes indices depending on the input's dtype
        if dt == torch.float32 and numel > 2**24:
            continue  # labels not exact in float32; the float32 formula below covers that dtype
        labels = torch.arange(numel, dtype=dt).reshape(1, 1, *spatial)
        with torch.no_grad():
            src = module(labels)
        out_spatial = tuple(src.shape[2:])
        counts = torch.bincount(src.reshape(-1).to(torch.int64), minlength=numel)
        mult = max(mult, int(counts.max()) if counts.numel() else 0)
    out_shape = (shape[0], *out_spatial)
    formula = 1
    for ax in range(n_axes):
        formula *= _axis_copies_fixed(module, _axis_scale(module, ax, n_axes), spatial[ax], out_spatial[ax])
    return _sqrt_up(max(mult, formula)), out_shape


# ----------------------------------------------------------------------------- lower bounds


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return num.flatten(1).norm(dim=1) / den.flatten(1).norm(dim=1).clamp_min(torch.finfo(den.dtype).tiny)


def lipschitz_lower_bound(
    fn: Callable[[Tensor], Tensor],
    points: Tensor,
    n_iter: int = 20,
    ascent_steps: int = 5,
    *,
    step_size: float = 1e-2,
    generator: torch.Generator | None = None,
) -> float:
    r"""Sound lower bound on the $\ell_2$ Lipschitz constant of a differentiable ``fn``.

    ``fn`` maps a batch to a batch and must act on each batch element independently (then the
    Jacobian is block diagonal and each block is one point's Jacobian $J(x_i)$). At each point,
    ``n_iter`` power-iteration steps on $J^\top J$ (``torch.func.jvp`` / ``vjp``) produce a
    direction $v$; the returned number is the largest **achieved** ratio $\|J(x_i)v\|/\|v\|$,
    which is $\le \|J(x_i)\| \le \mathrm{Lip}(fn)$. Then ``ascent_steps`` steps of gradient ascent
    move the points to increase $\|J(x)v\|$, and the ratio is measured again. For a
    non-differentiable ``fn`` use :func:`finite_difference_lower_bound`.

    This is an empirical lower bound (like the power iteration of Miyato et al. 2018); it is never
    a certificate of an upper bound.
    """

    quiet_jvp_decompositions()
    x = points.detach().clone()
    v = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    best = 0.0

    def power(x: Tensor, v: Tensor) -> tuple[Tensor, float]:
        nonlocal best
        _, vjp = torch.func.vjp(fn, x)
        for _ in range(max(n_iter, 1)):
            v = v / v.flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, *[1] * (v.dim() - 1))
            _, jv = torch.func.jvp(fn, (x,), (v,))
            best = max(best, float(_ratio(jv.detach(), v.detach()).max()))
            (v,) = vjp(jv)
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, *[1] * (v.dim() - 1))
        _, jv = torch.func.jvp(fn, (x,), (v,))
        best = max(best, float(_ratio(jv.detach(), v.detach()).max()))
        return v, best

    v, _ = power(x, v)
    for _ in range(ascent_steps):
        xr = x.clone().requires_grad_(True)
        _, jv = torch.func.jvp(fn, (xr,), (v,))
        obj = jv.flatten(1).norm(dim=1).sum()
        (g,) = torch.autograd.grad(obj, xr, allow_unused=True)
        if g is None:
            break
        scale = x.flatten(1).norm(dim=1).clamp_min(1.0) / g.flatten(1).norm(dim=1).clamp_min(1e-300)
        x = (x + step_size * scale.view(-1, *[1] * (x.dim() - 1)) * g).detach()
        v, _ = power(x, v)
    return best


def finite_difference_lower_bound(fn: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> float:
    r"""$\max_i \|fn(x_i) - fn(y_i)\| / \|x_i - y_i\|$: a lower bound for any (even non-smooth) ``fn``.

    Pairs with $x_i = y_i$ are ignored. (Rounding in evaluating ``fn`` is not accounted for.)
    """
    with torch.no_grad():
        dx = (x - y).flatten(1).norm(dim=1)
        df = (fn(x) - fn(y)).flatten(1).norm(dim=1)
    ok = dx > 0
    if not bool(ok.any()):
        raise ArgumentError("finite_difference_lower_bound needs at least one pair with x != y")
    return float((df[ok] / dx[ok]).max())
