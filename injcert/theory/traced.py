r"""Traced Lipschitz bounds: certify a user's ``nn.Module`` from its ``forward`` graph (proofs/05, items 12–18).

A module whose class has no registered rule (and is not a PyTorch class) is traced with
:mod:`torch.fx`; modules that *have* a rule stay one node (leaf) and keep their rule. A dataflow pass
marks the nodes that depend on ``x`` (the first input); every other node is a constant in ``x``
(Lipschitz constant 0), evaluated concretely with the given extra inputs when a rule needs its value
(a multiplicative factor, a weight). Walking the graph in topological order, every ``x``-dependent
node gets an upper bound $L_v$ of $\mathrm{Lip}_x$ of its value, each rounded up:

* a registered module (conv, linear, parametrized weights, activations, pooling, ...): its rule times
  the producer's bound;
* add/sub: the sum of the operands' bounds (constants add 0); broadcasting an operand that copies each
  entry $m$ times multiplies its bound by $\sqrt m$;
* mul/div by an ``x``-independent tensor or number: $\max|c|$ (resp. $1/\min|c|$);
* cat/stack: $\sqrt{\sum L_i^2}$; reshape/permute/basic slicing/constant padding: unchanged; replicate,
  reflect, circular padding and repeats: $\sqrt{\text{largest multiplicity}}$;
* nearest interpolation, functional pooling: the ``nn.Upsample``/``nn.AvgPool2d``/``nn.MaxPool2d`` rules;
* functional activations: the registry's constants; mean/sum over $n$ entries: $1/\sqrt n$, $\sqrt n$;
* ``F.linear``/``@``/``F.conv2d``/``F.conv_transpose2d`` with an ``x``-independent weight:
  :func:`~injcert.theory.spectral.operator_norm_bound` of the equivalent layer.

Anything else that reads ``x`` raises :class:`~injcert.errors.UnsupportedModuleError` on one line naming
the op, the module path and the source line. The bound is for one sample (batch of one), the way
``input_shape`` is given.

This module is the graph walk (:class:`_Bounder`: the dataflow, the constants, the in-place checks) and
the entry points; the tracing and the node names live in :mod:`injcert.theory._traced_graph`, the op
tables (torch-level and aten) in :mod:`injcert.theory._traced_ops`, and the rule of each op family in
:mod:`injcert.theory._traced_rules`. Their names stay importable from here.
"""

from __future__ import annotations

import inspect
import math
import operator
from fractions import Fraction
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx
from torch import Tensor, nn

from injcert.errors import ArgumentError, UnsupportedModuleError
from injcert.theory import lipschitz as _lip
from injcert.theory._rules import set_fallback_rule
from injcert.theory._traced_graph import (  # noqa: F401  (re-exported: the graph walk's pieces)
    _FRAME, _Proxy, _Recorder, _Tracer, _clone, _flatten, _flatten_tensors, _is_torch_class, _key, _module_path,
    _op_name, _probe_input, _source_line, _trace,
)
from injcert.theory._traced_ops import (  # noqa: F401  (re-exported: the op tables and the rounding helpers)
    _DROPOUT_FNS, _FRESH_FUNCS, _FRESH_MODULES, _LIKE, _META_ATTRS, _META_METHODS, _PRODUCT_HINT, _RANDOM, _A_META,
    ATTENTION_HINT, NORMALISATION_HINT, _activation_constant_of, _aten_name, _aten_ops, _broadcast_copies,
    _inv_sqrt_up, _is_aten, _is_guards_fn, _m, _numel, _sqrt_up, _times,
)
from injcert.theory._traced_rules import _Rules
from injcert.theory.lipschitz import LayerBound, concat_bound
from injcert.theory.rounding import fraction_up

__all__ = ["traced_rule", "traced_lipschitz_bound", "NORMALISATION_HINT", "ATTENTION_HINT"]


# ----------------------------------------------------------------------------- the bound


class _Bounder(_Rules):
    """The walk over one traced graph: the dataflow (which nodes depend on x), the concrete values of the
    others, the in-place checks, and per node the bound of :class:`~injcert.theory._traced_rules._Rules`."""

    def __init__(self, module: nn.Module, gm: fx.GraphModule, inputs: list, ctx: Any) -> None:
        self.module, self.gm, self.ctx = module, gm, ctx
        self.prefix = ".".join(p for p in ctx._prefix if p)
        self.nodes = list(gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(self.nodes)}
        self._classify()
        rec = _Recorder(gm, keep={n for n in self.nodes if n not in self.dep})
        try:
            with torch.no_grad():
                rec.run(*inputs)
        except Exception as e:  # noqa: BLE001  (the user's forward failed on the probe input)
            msg = " ".join(str(e).split("While executing")[0].split())[:300]
            raise ArgumentError(
                f"{type(module).__name__}.forward failed on a zero input of shape {tuple(inputs[0].shape)} "
                f"({inputs[0].dtype}) with the given args/kwargs: {type(e).__name__}: {msg}") from None
        self.shapes, self.values, self.kinds = rec.shapes, rec.values, rec.kinds
        self.L: dict[fx.Node, float] = {}
        self.inputs = inputs

    def _check_reproduces(self, inputs: list) -> None:
        """The graph must compute what ``forward`` computes: fx evaluates every call that does not read a
        traced input once, at trace time (``torch.rand(...)``, global state), and such a frozen value is
        not what runs. Compared at two random points; a difference refuses the module."""
        x0 = inputs[0]
        g = torch.Generator().manual_seed(0)
        names = list(inspect.signature(self.module.forward).parameters)
        for _ in range(2):
            xr = torch.randn(x0.shape, generator=g, dtype=torch.float64).to(x0)
            with torch.no_grad():
                got = _flatten_tensors(fx.Interpreter(self.gm).run(xr, *inputs[1:]))
                if isinstance(self.module, fx.GraphModule):  # its forward takes its inputs as exported: by position
                    want = _flatten_tensors(self.module(xr, *inputs[1:]))
                else:
                    want = _flatten_tensors(self.module(xr, **dict(zip(names[1:], inputs[1:]))))
            # a tolerance, not equality: a parametrization in training mode (spectral_norm's power
            # iteration) moves the weight slightly at every call; frozen values differ at O(1)
            same = len(got) == len(want) and all(
                a.shape == b.shape and torch.allclose(
                    a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(b.abs().max()) if b.numel() else 1.0), equal_nan=True)
                for a, b in zip(got, want))
            if not same:
                raise UnsupportedModuleError(
                    f"the traced graph of {type(self.module).__name__} does not reproduce its forward (random "
                    "draws, global state or in-place aliasing that torch.fx froze at trace time); no certified bound")

    # --- dataflow ---------------------------------------------------------------------------

    def _classify(self) -> None:
        """``dep``: x-dependent nodes; ``rand``: random nodes; ``shp``: nodes derived from x's shape."""
        dep: set = set()
        rand: set = set()
        shp: set = set()
        first = True
        for n in self.nodes:
            ins = n.all_input_nodes
            if n.op == "placeholder":
                if first:
                    dep.add(n)
                    first = False
                continue
            if n.op in ("get_attr", "output"):
                continue
            k = _key(n)
            if any(a in rand for a in ins) or k in _RANDOM or (k in _DROPOUT_FNS and self._training_flag(n)):
                rand.add(n)
            if n.op == "call_module":
                sub = self.gm.get_submodule(n.target)
                if isinstance(sub, nn.modules.dropout._DropoutNd) and sub.training and sub.p > 0:
                    rand.add(n)
            is_meta = (k in _META_METHODS or k in _LIKE or k in _A_META
                       or (n.op == "call_function" and n.target is getattr and n.args[1] in _META_ATTRS)
                       or (n.op == "call_module" and _is_guards_fn(self.gm.get_submodule(n.target))))
            if any(a in shp for a in ins):
                shp.add(n)
            if any(a in dep for a in ins):
                if is_meta:
                    shp.add(n)
                else:
                    dep.add(n)
        self.dep, self.rand, self.shp = dep, rand, shp

    def _training_flag(self, n: fx.Node) -> bool:
        v = n.kwargs.get("training", n.args[2] if len(n.args) > 2 else True)
        return bool(v) if not isinstance(v, fx.Node) else True

    # --- helpers ----------------------------------------------------------------------------

    def fail(self, node: fx.Node, reason: str) -> UnsupportedModuleError:
        where = _module_path(node, self.prefix)
        return UnsupportedModuleError(
            f"{_op_name(node, self.gm)} at {where} ({_source_line(node)}): {reason}"
        )

    def arg(self, node: fx.Node, i: int, name: str, default: Any = None) -> Any:
        if len(node.args) > i:
            a = node.args[i]
        else:
            a = node.kwargs.get(name, default)
        return self.const(node, a)

    def const(self, node: fx.Node, a: Any) -> Any:
        """The concrete value of an x-independent argument (nested structures included)."""
        def val(n: fx.Node) -> Any:
            if n in self.dep:
                raise self.fail(node, f"argument {n.name!r} depends on x where only a constant is supported")
            return self.values[n]

        return fx.node.map_aggregate(a, lambda v: val(v) if isinstance(v, fx.Node) else v)

    def shape(self, n: fx.Node) -> tuple:
        s = self.shapes.get(n)
        if not isinstance(s, tuple):
            raise ArgumentError(f"node {n.name!r} has no tensor shape")
        return s

    def factor(self, node: fx.Node, a: Any, inverse: bool = False) -> float:
        """max|c| (or max|1/c|) of an x-independent factor, exactly, rounded up."""
        if isinstance(a, fx.Node):
            if a in self.rand:
                raise self.fail(node, "the factor is random (it changes from call to call); no certified bound")
            if self.ctx.size_independent and a in self.shp:
                raise self.fail(node, "the factor is computed from the input's size; no bound valid for every "
                                      "size (use a fixed input shape)")
        c = self.const(node, a)
        if isinstance(c, Tensor):
            if c.is_complex():
                raise self.fail(node, "complex factor")
            if c.numel() == 0:
                return 0.0
            c = c.detach().to("cpu", torch.float64).abs()
            m = float(c.min()) if inverse else float(c.max())
        elif isinstance(c, (bool, int, float)):
            m = abs(float(c))
        else:
            raise self.fail(node, f"factor of type {type(c).__name__} is not supported")
        if math.isnan(m):
            raise self.fail(node, "factor contains NaN")
        if not inverse:
            return m
        if m == 0.0:
            raise self.fail(node, "division by a constant containing 0")
        return math.inf if math.isinf(1 / m) else fraction_up(1 / Fraction(m))

    def row(self, node: fx.Node, typ: str, value: float) -> None:
        name = ".".join(p for p in (self.prefix, self._local_path(node), node.name) if p)
        self.ctx.layers.append(LayerBound(name, typ, float(value)))

    def layer_bound(self, node: fx.Node, layer: nn.Module, src: fx.Node, op_norm: bool) -> float:
        """Bound a layer built from the node's arguments: its rule (through the context), or its operator norm."""
        shape = self.shape(src)[1:]
        if op_norm:
            val = self.ctx.op_norm(layer, shape)
            self.row(node, _op_name(node, self.gm), val)
            return val
        val, _ = self.ctx.bound(layer, shape, ".".join(p for p in (self._local_path(node), node.name) if p))
        return val

    def _local_path(self, node: fx.Node) -> str:
        path = _module_path(node, "")
        return "" if path == "<root>" else path

    # --- the walk ---------------------------------------------------------------------------

    def run(self) -> tuple[float, tuple]:
        for n in self.nodes:
            if n.op in ("call_function", "call_method", "call_module"):
                self._check_inplace(n)
            if n.op == "placeholder":
                if n in self.dep:
                    self.L[n] = 1.0
            elif n.op == "output":
                outs = [a for a in _flatten(n.args[0]) if isinstance(a, fx.Node) and a in self.dep]
                value = concat_bound(*(self.L[a] for a in outs)) if outs else 0.0
                self._check_reproduces(self.inputs)
                out = n.args[0]
                spec = getattr(self.gm, "_out_spec", None)  # torch.export: the graph returns the flat outputs
                if spec is not None and isinstance(out, (tuple, list)) and len(out) == 1 and \
                        getattr(spec, "num_leaves", None) == 1:
                    out = out[0]
                shape = self.shapes.get(out) if isinstance(out, fx.Node) else None
                if not isinstance(shape, tuple):
                    raise UnsupportedModuleError(
                        f"{type(self.module).__name__}.forward must return one tensor to be bounded, got {type(out).__name__}")
                return value, shape[1:]
            elif n in self.dep:
                self.L[n] = self._bound(n)
        raise ArgumentError("graph without output")

    def _check_inplace(self, n: fx.Node) -> None:
        k = _key(n)
        inplace = (k in (operator.iadd, operator.isub, operator.imul, operator.itruediv)
                   or (n.op == "call_method" and str(n.target).endswith("_") and not str(n.target).startswith("_"))
                   or (n.op == "call_function" and getattr(n.target, "__name__", "").endswith("_")
                       and not getattr(n.target, "__name__", "").startswith("_"))
                   or n.kwargs.get("inplace") is True or "out" in n.kwargs
                   or (isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable))
        if n.op == "call_module":
            inplace = bool(getattr(self.gm.get_submodule(n.target), "inplace", False))
        if not inplace or not n.args or not isinstance(n.args[0], fx.Node):
            return
        m = n.args[0]
        if m.op in ("placeholder", "get_attr"):
            raise self.fail(n, f"in-place update of the input or attribute {m.name!r}; write it out of place")
        if not self._fresh(m):
            raise self.fail(n, f"in-place update of {m.name!r}, which may alias another tensor; write it out of place")
        for u in m.users:
            if u is n:
                continue
            if self.order[u] > self.order[n] or not self._fresh(u):
                raise self.fail(n, f"in-place update of {m.name!r}, which is used again or aliased; write it out "
                                   "of place")

    def _fresh(self, n: fx.Node) -> bool:
        if n.op == "call_module":
            sub = self.gm.get_submodule(n.target)
            return isinstance(sub, _FRESH_MODULES) and not getattr(sub, "inplace", False)
        if isinstance(n.target, torch._ops.OpOverload):  # a new tensor: no alias annotation on any output
            schema = n.target._schema
            return not schema.is_mutable and all(r.alias_info is None for r in schema.returns)
        if n.op in ("call_function", "call_method"):
            return _key(n) in _FRESH_FUNCS and not n.kwargs.get("inplace", False)
        return False


def traced_rule(module: nn.Module, shape: tuple, ctx: Any, args: tuple = (), kwargs: Optional[dict] = None
                ) -> tuple[float, tuple]:
    """The rule used for a module without a registered rule: trace ``forward`` and bound its graph.

    ``args``/``kwargs`` are the forward's extra inputs (held fixed); by default those given to
    :func:`~injcert.theory.lipschitz.lipschitz_bound` for the root module.
    """
    if not args and not kwargs:
        args, kwargs = ctx._forward_inputs.pop(id(module), ((), {}))
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training:
            raise UnsupportedModuleError(
                f"{type(sub).__name__} {name or '<root>'!r} is in training mode (its output depends on the batch "
                "and running it updates its statistics); call .eval() first")
    x0 = _probe_input(module, tuple(shape))
    gm, inputs = _trace(module, x0, tuple(args), dict(kwargs or {}))
    return _Bounder(module, gm, inputs, ctx).run()


def traced_lipschitz_bound(module: nn.Module, input_shape: Sequence[int], *, args: tuple = (),
                           kwargs: Optional[dict] = None, size_independent: bool = False,
                           t: Optional[float] = None):
    """:func:`~injcert.theory.lipschitz.lipschitz_bound` by tracing ``module.forward`` even if it has a rule.

    Its submodules with rules keep them. Used to compare a hand rule with the traced graph.
    """
    ctx = _lip.BoundContext(size_independent, t)
    shape = tuple(int(v) for v in input_shape)
    for sub_name, sub in module.named_modules():
        _lip._reject_forward_hooks_named(sub, sub_name)
    _lip._reject_complex(module)
    ctx._prefix.append("")
    try:
        value, _ = traced_rule(module, shape, ctx, tuple(args), dict(kwargs or {}))
    finally:
        ctx._prefix.pop()
    return _lip.LipschitzBound(float(value), list(ctx.layers), shape, bool(size_independent))


set_fallback_rule(traced_rule)  # lipschitz_bound reaches the tracer through the registry's hook
