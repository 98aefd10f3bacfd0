"""The Lipschitz rule registry and the activation constants (Theorem 5, proofs/05).

The lowest piece of :mod:`injcert.theory.lipschitz`, shared with :mod:`injcert.theory.traced`:
rules are registered per module type and looked up along the MRO; a module whose class has no rule
falls back to the rule the tracer installs (:func:`set_fallback_rule`), so the import graph flows
one way (``traced -> lipschitz -> _rules``). Every public name here is re-exported by
:mod:`injcert.theory.lipschitz`, the documented home.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import torch
from torch import nn

from injcert.errors import ArgumentTypeError, UnsupportedModuleError
from injcert.theory.spectral import _require_inherited_forward

__all__ = [
    "Rule",
    "register_lipschitz_rule",
    "get_lipschitz_rule",
    "set_fallback_rule",
    "SILU_LIPSCHITZ",
    "GELU_LIPSCHITZ",
    "GELU_TANH_LIPSCHITZ",
]


# ----------------------------------------------------------------------------- registry

Rule = Callable[[nn.Module, tuple, "BoundContext"], "tuple[float, tuple]"]
_RULES: dict[type, Rule] = {}


def register_lipschitz_rule(*module_types: type) -> Callable[[Rule], Rule]:
    """Decorator registering ``rule(module, input_shape, ctx) -> (bound, output_shape)``.

    Shapes exclude the batch dimension. Subclasses of a registered type inherit its rule
    unless they register their own — but only if they do not change its forward path (see
    :func:`get_lipschitz_rule`; otherwise they compute something else and must register a rule). A rule must return a value rounded
    **up** (use :func:`certify_float`, :func:`product_bound`, :func:`sum_bound`, ...).

    Raises:
        TypeError: if no type or a non-``nn.Module`` type is given.
    """
    if not module_types:
        raise ArgumentTypeError("register_lipschitz_rule needs at least one module type")
    for t in module_types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise ArgumentTypeError(f"register_lipschitz_rule expects nn.Module subclasses, got {t!r} of type {type(t).__name__}")

    def deco(rule: Rule) -> Rule:
        for t in module_types:
            _RULES[t] = rule
        return rule

    return deco


def get_lipschitz_rule(module: nn.Module) -> Rule:
    """The rule for ``module``'s type, looked up along its MRO.

    A rule registered for a proper base class ``C`` of ``type(module)`` is used only if the
    subclass inherits ``C``'s forward path unchanged: for PyTorch's leaf layers ``forward``,
    ``_conv_forward``, ``__call__`` (and the call wrappers); for containers such as
    ``nn.Sequential`` and for classes outside PyTorch, *any* redefinition of an attribute of ``C``
    or of a private name (``__iter__``, ``__len__``, ``__getitem__``, a ``_modules`` property, …)
    except construction/copy/printing (see :func:`injcert.theory.spectral._require_inherited_forward`).
    A forward-path method replaced on the instance is refused as well. (Classes created by
    :mod:`torch.nn.utils.parametrize` only add properties and copy hooks, so they keep their
    base's rule.)

    Raises:
        UnsupportedModuleError: naming the type, if no class in the MRO has a rule, or if the
            module does not compute ``C``'s map as above.
    """
    rule = _find_rule(module)
    if rule is not None:
        return rule
    raise UnsupportedModuleError(
        f"no Lipschitz rule for module type {type(module).__name__} "
        f"({type(module).__module__}.{type(module).__qualname__}); register one with "
        "injcert.theory.lipschitz.register_lipschitz_rule"
    )


def _has_rule_class(module: nn.Module) -> bool:
    """Whether a class in ``type(module).__mro__`` has a registered rule (it may still refuse the module)."""
    return any(cls in _RULES for cls in type(module).__mro__)


def _find_rule(module: nn.Module) -> Optional[Rule]:
    """The rule along the MRO (checked as in :func:`get_lipschitz_rule`), or ``None`` if no class has one."""
    for cls in type(module).__mro__:
        if cls in _RULES:
            _require_inherited_forward(module, cls)
            return _RULES[cls]
    return None


#: The rule for a module whose class has none (the traced rule, proofs/05 item 12); set by
#: :mod:`injcert.theory.traced` when it is imported (:func:`set_fallback_rule`), so this registry
#: never imports the tracer.
_FALLBACK: Optional[Rule] = None


def set_fallback_rule(rule: Rule) -> None:
    """Install the rule used for a module of a class outside PyTorch without a registered rule."""
    global _FALLBACK
    _FALLBACK = rule


def _rule_or_trace(module: nn.Module) -> Rule:
    """The registered rule; for a class outside PyTorch without one, the traced rule (proofs/05, item 12)."""
    rule = _find_rule(module)
    if rule is not None:
        return rule
    traced_rule = _FALLBACK
    if traced_rule is None:
        return get_lipschitz_rule(module)  # raises: no tracer installed (injcert.theory imports it)

    if isinstance(module, torch.fx.GraphModule):
        return traced_rule  # a graph (e.g. a torch.export program's .module()): bounded op by op
    if (type(module).__module__ or "").startswith("torch."):
        return get_lipschitz_rule(module)  # raises: PyTorch's own modules without a rule are refused by name

    return traced_rule


# ----------------------------------------------------------------------------- activation constants


def _bisect(fn: Callable[[float], float], lo: float, hi: float) -> float:
    flo = fn(lo)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        fm = fn(mid)
        if (fm > 0) == (flo > 0):
            lo, flo = mid, fm
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _silu_d1(x: float) -> float:
    s = _sig(x)
    return s * (1.0 + x * (1.0 - s))


def _gelu_d1(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0))) + x * math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


_C_TANH = math.sqrt(2.0 / math.pi)


def _gelu_tanh_d1(x: float) -> float:
    u = _C_TANH * (x + 0.044715 * x**3)
    t = math.tanh(u)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _C_TANH * (1.0 + 3 * 0.044715 * x * x)


def _gelu_tanh_d2(x: float) -> float:
    # derivative of _gelu_tanh_d1, written out (checked against finite differences in tests)
    c, a = _C_TANH, 0.044715
    u = c * (x + a * x**3)
    du = c * (1.0 + 3 * a * x * x)
    d2u = c * 6 * a * x
    t = math.tanh(u)
    sech2 = 1.0 - t * t
    return sech2 * du + 0.5 * x * (-2.0 * t * sech2 * du * du + sech2 * d2u)


# Maximisers: SiLU'' = 0  <=>  x tanh(x/2) = 2;  GELU'' = phi(x)(2 - x^2) = 0  <=>  x = sqrt(2).
_SILU_ARGMAX = _bisect(lambda x: x * math.tanh(0.5 * x) - 2.0, 2.0, 3.0)
_GELU_TANH_ARGMAX = _bisect(_gelu_tanh_d2, 1.0, 2.0)
#: Certified sup ``|SiLU'|`` (≈ 1.0998), the value at the root of SiLU'' rounded up (proofs/05).
SILU_LIPSCHITZ: float = _silu_d1(_SILU_ARGMAX) * (1.0 + 1e-12)
#: Certified sup ``|GELU'|`` = Φ(√2) + √2 φ(√2) (≈ 1.1289), rounded up (proofs/05).
GELU_LIPSCHITZ: float = _gelu_d1(math.sqrt(2.0)) * (1.0 + 1e-12)
#: Certified sup ``|GELU'|`` for ``approximate="tanh"`` (≈ 1.12899), rounded up (interval-arithmetic
#: proof in proofs/05).
GELU_TANH_LIPSCHITZ: float = _gelu_tanh_d1(_GELU_TANH_ARGMAX) * (1.0 + 1e-12)


#: Why ``nn.Softplus`` has no rule: PyTorch evaluates ``x`` (the identity) instead of
#: ``log(1 + exp(beta x)) / beta`` where ``beta * x > threshold``; at ``x = threshold / beta`` the
#: two differ by ``log(1 + exp(-threshold)) / beta`` (≈ 2e-9 at the defaults, ``log 2`` ≈ 0.69 for
#: ``threshold=0``), a jump discontinuity, so the map PyTorch computes is not Lipschitz at all
#: (the smooth softplus is 1-Lipschitz, but that is not what runs). See proofs/05.
_SOFTPLUS_REASON = (
    "nn.Softplus(beta={beta}, threshold={threshold}) is not Lipschitz as PyTorch evaluates it: it switches to "
    "the identity where beta*x > threshold, a jump discontinuity of log(1 + exp(-threshold))/beta at "
    "x = threshold/beta; no certified bound (use a continuous activation, e.g. ELU/SiLU/ReLU)"
)
