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
"""

from __future__ import annotations

import inspect
import math
import operator
import re
from fractions import Fraction
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from injcert.errors import ArgumentError, UnsupportedModuleError
from injcert.theory import _rules
from injcert.theory import lipschitz as _lip
from injcert.theory._rules import SILU_LIPSCHITZ, _has_rule_class, set_fallback_rule
from injcert.theory.lipschitz import LayerBound, concat_bound, product_bound, sum_bound
from injcert.theory.rounding import fraction_up

__all__ = ["traced_rule", "traced_lipschitz_bound", "NORMALISATION_HINT", "ATTENTION_HINT"]

#: What to use instead of a normalisation layer that reads statistics of ``x``.
NORMALISATION_HINT = ("normalisation by statistics of x has no global Lipschitz bound; use eval BatchNorm "
                      "or no normalisation")
#: What to use instead of dot-product attention.
ATTENTION_HINT = ("dot-product attention has no global Lipschitz bound (Kim et al. 2021); remove it or use "
                  "a Lipschitz attention (e.g. L2 attention) with a registered rule")
_PRODUCT_HINT = ("the product of two x-dependent tensors (e.g. x * x) has no global Lipschitz bound; "
                 "multiply x only by tensors that do not depend on x")


# ----------------------------------------------------------------------------- tracing


class _Proxy(fx.Proxy):
    """A proxy that records ``a += b`` (and friends) as in-place ops instead of ``a = a + b``.

    fx's own ``Proxy`` has no ``__iadd__``: Python falls back to ``__add__``, so the graph would
    compute ``a + b`` into a new node while the eager forward mutates ``a`` — wrong wherever ``a`` is
    aliased or used again. Recorded as ``operator.iadd``, such a mutation is checked
    (:meth:`_Bounder._check_inplace`).
    """

    def __iadd__(self, other: Any) -> Any:
        return self.tracer.create_proxy("call_function", operator.iadd, (self, other), {})

    def __isub__(self, other: Any) -> Any:
        return self.tracer.create_proxy("call_function", operator.isub, (self, other), {})

    def __imul__(self, other: Any) -> Any:
        return self.tracer.create_proxy("call_function", operator.imul, (self, other), {})

    def __itruediv__(self, other: Any) -> Any:
        return self.tracer.create_proxy("call_function", operator.itruediv, (self, other), {})


def _is_torch_class(cls: type) -> bool:
    return (cls.__module__ or "").startswith("torch.")


class _Tracer(fx.Tracer):
    """Modules with a registered rule (or PyTorch's own modules) stay one ``call_module`` node."""

    record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _has_rule_class(m) or _is_torch_class(type(m))

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)


def _trace(module: nn.Module, x0: Tensor, args: tuple, kwargs: dict) -> tuple[fx.GraphModule, list]:
    """The fx graph of ``module.forward`` (non-tensor extra inputs specialised) and its positional inputs."""
    sig = inspect.signature(module.forward)
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
        raise UnsupportedModuleError(
            f"cannot trace {type(module).__name__}.forward: it takes *args/**kwargs; give it named parameters")
    try:
        bound = sig.bind(x0, *args, **kwargs)
    except TypeError as e:
        if not args and not kwargs:
            # nothing was given for the inputs after x (as when the certificate bounds a model uniformly
            # over t): the graph cannot be evaluated, so there is no traced bound -- an unsupported
            # module, not a caller's mistake
            raise UnsupportedModuleError(
                f"no Lipschitz rule for module type {type(module).__name__} ({type(module).__module__}."
                f"{type(module).__qualname__}), and its forward{sig} cannot be traced without its further "
                f"inputs ({e}); pass them with lipschitz_bound(..., args=..., kwargs=...) (the bound then holds "
                "at those values only) or register a rule with injcert.theory.lipschitz.register_lipschitz_rule"
            ) from None
        raise ArgumentError(f"the args/kwargs given do not fit {type(module).__name__}.forward{sig}: {e}") from None
    bound.apply_defaults()
    names = list(sig.parameters)
    if isinstance(module, fx.GraphModule):
        # already a graph (a torch.export program's ``.module()``: aten ops, its parameters and buffers
        # as ``get_attr`` nodes, one placeholder per user input): bounded as it is, its node metadata
        # (source lines, module paths) kept; every input is passed to it, none specialised
        inputs = [bound.arguments[n] for n in names]
        n_ph = sum(1 for n in module.graph.nodes if n.op == "placeholder")
        if n_ph != len(inputs):
            raise UnsupportedModuleError(
                f"cannot bound {type(module).__name__}: {n_ph} graph inputs for {len(inputs)} forward parameters "
                "(a torch.export graph with lifted parameters: pass the ExportedProgram or its .module())")
        return module, inputs
    concrete = {n: v for n, v in bound.arguments.items() if n != names[0] and not isinstance(v, Tensor)}
    tracer = _Tracer()
    try:
        graph = tracer.trace(module, concrete_args=concrete or None)
    except Exception as e:  # noqa: BLE001  (fx raises many types for untraceable Python)
        msg = " ".join(str(e).split())[:300]
        raise UnsupportedModuleError(
            f"no Lipschitz rule for module type {type(module).__name__} ({type(module).__module__}."
            f"{type(module).__qualname__}) and torch.fx could not trace its forward ({type(e).__name__}: {msg}); "
            "register a rule with injcert.theory.lipschitz.register_lipschitz_rule"
        ) from None
    gm = fx.GraphModule(tracer.root, graph)
    inputs = [bound.arguments[n] for n in names]
    n_ph = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
    if n_ph != len(inputs):
        raise UnsupportedModuleError(f"cannot trace {type(module).__name__}.forward: {n_ph} graph inputs for "
                                     f"{len(inputs)} parameters")
    return gm, inputs


class _Recorder(fx.Interpreter):
    """Runs the graph once; keeps every node's shape and the values of the nodes in ``keep``."""

    def __init__(self, gm: fx.GraphModule, keep: set) -> None:
        super().__init__(gm)
        self.keep = keep
        self.shapes: dict[fx.Node, Any] = {}
        self.values: dict[fx.Node, Any] = {}
        self.kinds: dict[fx.Node, str] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, Tensor):
            self.kinds[n], self.shapes[n] = "tensor", tuple(out.shape)
        elif isinstance(out, (tuple, list)):
            self.kinds[n] = "seq"
            self.shapes[n] = [tuple(o.shape) if isinstance(o, Tensor) else None for o in out]
        else:
            self.kinds[n] = "other"
        if n in self.keep:
            self.values[n] = _clone(out)
        return out


def _clone(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.detach().clone()
    if isinstance(v, (tuple, list)):
        return type(v)(_clone(u) for u in v) if not hasattr(v, "_fields") else v
    return v


# ----------------------------------------------------------------------------- op tables


def _m(name: str) -> str:
    return "method:" + name


#: Ops reading only the metadata (shape, dtype, ...) of a tensor: constant in x at a fixed shape.
_META_METHODS = {_m(n) for n in ("size", "dim", "numel", "ndimension", "nelement", "get_device", "is_contiguous")}
_META_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad"}
_LIKE = {torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like,
         _m("new_zeros"), _m("new_ones"), _m("new_empty"), _m("new_full")}
#: Random sources: their values are not fixed, so they may not serve as factors.
_RANDOM = {torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like, torch.randint_like,
           torch.normal, torch.bernoulli, torch.multinomial, torch.randperm, torch.poisson,
           *(_m(n) for n in ("bernoulli", "bernoulli_", "normal_", "uniform_", "random_", "exponential_",
                             "cauchy_", "log_normal_", "geometric_"))}
_DROPOUT_FNS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}

_ADD = {operator.add, torch.add, _m("add"), _m("add_"), operator.iadd}
_SUB = {operator.sub, torch.sub, torch.subtract, _m("sub"), _m("sub_"), _m("subtract"), operator.isub}
_MUL = {operator.mul, torch.mul, torch.multiply, _m("mul"), _m("mul_"), _m("multiply"), operator.imul}
_DIV = {operator.truediv, torch.div, torch.divide, torch.true_divide, _m("div"), _m("div_"), _m("divide"),
        _m("true_divide"), operator.itruediv}
_NEG = {operator.neg, operator.pos, torch.neg, torch.negative, _m("neg"), _m("negative"), _m("neg_")}
_CAT = {torch.cat, torch.concat, torch.concatenate, torch.stack}
#: Maps that permute or reshape the entries: norm 1 (identity-like casts too).
_PERMUTE = {torch.reshape, torch.flatten, torch.permute, torch.transpose, torch.swapaxes, torch.swapdims,
            torch.squeeze, torch.unsqueeze, torch.unflatten, torch.t, torch.movedim, torch.moveaxis,
            torch.flip, torch.roll, torch.clone, F.pixel_shuffle, F.pixel_unshuffle, torch.pixel_shuffle,
            torch.pixel_unshuffle, torch.fliplr, torch.flipud,
            *(_m(n) for n in ("view", "reshape", "flatten", "permute", "transpose", "swapaxes", "swapdims",
                              "squeeze", "unsqueeze", "unflatten", "t", "movedim", "moveaxis", "flip", "roll",
                              "contiguous", "clone", "detach", "to", "float", "double", "half", "bfloat16",
                              "type_as", "cpu", "cuda", "view_as", "reshape_as"))}
#: Coordinate projections (norm <= 1); outputs may be tuples of projections.
_PROJECT = {torch.narrow, torch.select, torch.split, torch.chunk, torch.unbind, torch.tensor_split,
            *(_m(n) for n in ("narrow", "select", "split", "chunk", "unbind", "tensor_split"))}
#: Every entry copied the same number of times: norm sqrt(numel_out / numel_in).
_REPEAT = {torch.broadcast_to, *(_m(n) for n in ("expand", "expand_as", "repeat", "broadcast_to"))}
_REDUCE_MEAN = {torch.mean, _m("mean")}
_REDUCE_SUM = {torch.sum, _m("sum")}
_MATMUL = {operator.matmul, torch.matmul, torch.mm, _m("matmul"), _m("mm")}
_NORM_FNS = {F.group_norm, F.layer_norm, F.instance_norm, F.local_response_norm, F.rms_norm} if hasattr(F, "rms_norm") \
    else {F.group_norm, F.layer_norm, F.instance_norm, F.local_response_norm}
_ATTENTION_FNS = {F.softmax, torch.softmax, F.log_softmax, torch.log_softmax, F.softmin, _m("softmax"),
                  _m("log_softmax"), F.scaled_dot_product_attention, torch.einsum, torch.bmm, torch.baddbmm,
                  _m("bmm")}


# ----------------------------------------------------------------------------- torch.export (aten) ops
#
# A torch.export program's ``.module()`` is a graph of ``torch.ops.aten`` overloads. Each op below is
# the same mathematical map as the torch-level function listed with it (proofs/05, item 20), so it
# joins that function's table and gets its rule; its arguments are read at the same positions, or
# translated where they differ (see ``_Bounder._bound_aten``). Every other aten op that reads x is
# refused by name.


def _aten_ops(*names: str) -> set:
    """The existing ``torch.ops.aten`` overloads among ``"name.overload"`` (absent ones skipped)."""
    out = set()
    for full in names:
        name, _, overload = full.partition(".")
        packet = getattr(torch.ops.aten, name, None)
        op = getattr(packet, overload or "default", None) if packet is not None else None
        if isinstance(op, torch._ops.OpOverload):
            out.add(op)
    return out


def _is_aten(target: Any) -> bool:
    return isinstance(target, torch._ops.OpOverload) and target.namespace == "aten"


def _aten_name(target: Any) -> str:
    """``"conv2d.default"`` of ``torch.ops.aten.conv2d.default``."""
    return f"{target._opname}.{target._overloadname}"


_A_ADD = _aten_ops("add.Tensor", "add.Scalar")
_A_SUB = _aten_ops("sub.Tensor", "sub.Scalar")
_A_RSUB = _aten_ops("rsub.Tensor", "rsub.Scalar")
_A_MUL = _aten_ops("mul.Tensor", "mul.Scalar")
_A_DIV = _aten_ops("div.Tensor", "div.Scalar", "div.Tensor_mode", "div.Scalar_mode")
_A_NEG = _aten_ops("neg.default", "positive.default")
_A_CAT = _aten_ops("cat.default", "concat.default", "concatenate.default", "stack.default")
#: dtype casts: the identity map when the dtype is real floating (checked in ``_bound_aten``)
_A_CAST = _aten_ops("_to_copy.default", "to.dtype", "to.dtype_layout", "to.device", "to.other", "type_as.default")
_A_PERMUTE = _aten_ops(
    "view.default", "reshape.default", "_unsafe_view.default", "flatten.using_ints", "unflatten.int",
    "permute.default", "transpose.int", "t.default", "unsqueeze.default", "squeeze.default", "squeeze.dim",
    "squeeze.dims", "movedim.int", "swapaxes.default", "flip.default", "roll.default", "pixel_shuffle.default",
    "pixel_unshuffle.default", "clone.default", "contiguous.default", "alias.default", "detach.default",
    "lift_fresh_copy.default", "view_copy.default", "permute_copy.default", "transpose_copy.int",
    "unsqueeze_copy.default", "squeeze_copy.dim", "squeeze_copy.dims", "t_copy.default", "alias_copy.default",
    "_reshape_alias.default") | _A_CAST
_A_PROJECT = _aten_ops("slice.Tensor", "slice_copy.Tensor", "select.int", "select_copy.int", "narrow.default",
                       "split.Tensor", "split_with_sizes.default", "unbind.int", "chunk.default",
                       "tensor_split.sections", "tensor_split.indices")
_A_REPEAT = _aten_ops("expand.default", "expand_copy.default", "expand_as.default", "repeat.default",
                      "broadcast_to.default")
_A_MEAN = _aten_ops("mean.dim", "mean.default")
_A_SUM = _aten_ops("sum.dim_IntList", "sum.default")
_A_MATMUL = _aten_ops("matmul.default", "mm.default")
_A_ADDMM = _aten_ops("addmm.default")
_A_LINEAR = _aten_ops("linear.default")
_A_CONV2D = _aten_ops("conv2d.default", "conv2d.padding")
_A_CONVT2D = _aten_ops("conv_transpose2d.input")
_A_CONVOLUTION = _aten_ops("convolution.default", "_convolution.default")
_A_PAD = _aten_ops("pad.default", "constant_pad_nd.default")
_A_PAD_MODE = {**{op: "reflect" for op in _aten_ops("reflection_pad1d.default", "reflection_pad2d.default",
                                                     "reflection_pad3d.default")},
               **{op: "replicate" for op in _aten_ops("replication_pad1d.default", "replication_pad2d.default",
                                                       "replication_pad3d.default")},
               **{op: "circular" for op in _aten_ops("_pad_circular.default")}}
_A_UPSAMPLE = _aten_ops("upsample_nearest2d.vec", "upsample_nearest2d.default")
_A_AVGPOOL = _aten_ops("avg_pool2d.default")
_A_MAXPOOL = _aten_ops("max_pool2d.default")
_A_MAXPOOL_IDX = _aten_ops("max_pool2d_with_indices.default")
#: (eps position, training position or None) of the batch-norm overloads; eval: an affine per-channel map
_A_BATCHNORM = {op: pos for ops, pos in ((_aten_ops("batch_norm.default", "native_batch_norm.default"), (7, 5)),
                                          (_aten_ops("_native_batch_norm_legit_no_training.default"), (6, None)))
                for op in ops}
#: Ops returning a tuple whose later entries are not the mapped tensor (indices, saved statistics)
_A_FIRST_ONLY = _A_MAXPOOL_IDX | set(_A_BATCHNORM)
_A_DROPOUT = _aten_ops("dropout.default", "feature_dropout.default", "alpha_dropout.default")
_A_RANDOM = _aten_ops("rand.default", "randn.default", "rand_like.default", "randn_like.default", "randint.default",
                      "randint.low", "randint_like.default", "bernoulli.default", "bernoulli.p", "normal.Tensor_float",
                      "normal.float_Tensor", "normal.Tensor_Tensor", "normal.float_float", "native_dropout.default",
                      "multinomial.default", "randperm.default", "poisson.default", "uniform.default",
                      "exponential.default", "rrelu.default", "rrelu_with_noise.default")
#: Ops that read only the metadata of x (shape, dtype): constant in x at a fixed shape.
_A_META = _aten_ops("sym_size.int", "sym_numel.default", "sym_stride.int", "sym_storage_offset.default",
                    "_assert_tensor_metadata.default", "sym_constrain_range_for_size.default")
_A_NORM = _aten_ops("layer_norm.default", "native_layer_norm.default", "group_norm.default",
                    "native_group_norm.default", "instance_norm.default", "rms_norm.default",
                    "_native_batch_norm_legit.default", "_native_batch_norm_legit.no_stats",
                    "_native_batch_norm_legit_functional.default", "local_response_norm.default")
_A_ATTENTION = _aten_ops("_softmax.default", "softmax.int", "_log_softmax.default", "log_softmax.int",
                         "scaled_dot_product_attention.default", "_scaled_dot_product_flash_attention.default",
                         "_scaled_dot_product_efficient_attention.default",
                         "_scaled_dot_product_flash_attention_for_cpu.default", "einsum.default",
                         "baddbmm.default")
_A_BMM = _aten_ops("bmm.default")
_A_ACT_ONE = _aten_ops("relu.default", "relu_.default", "relu6.default", "hardtanh.default", "hardtanh_.default",
                       "tanh.default", "tanh_.default", "clamp.default", "clamp.Tensor", "clamp_.default",
                       "clamp_min.default", "clamp_max.default", "clip.default", "abs.default")
_A_SIGMOID = _aten_ops("sigmoid.default", "sigmoid_.default")
_A_SILU = _aten_ops("silu.default", "silu_.default")
_A_GELU = _aten_ops("gelu.default", "gelu_.default")
_A_LEAKY = _aten_ops("leaky_relu.default", "leaky_relu_.default")
_A_ELU = _aten_ops("elu.default", "elu_.default")
_A_SOFTPLUS = _aten_ops("softplus.default")
#: every aten op with a rule or a classification (the others are refused by name)
_A_KNOWN = (_A_ADD | _A_SUB | _A_RSUB | _A_MUL | _A_DIV | _A_NEG | _A_CAT | _A_PERMUTE | _A_PROJECT | _A_REPEAT
            | _A_MEAN | _A_SUM | _A_MATMUL | _A_ADDMM | _A_LINEAR | _A_CONV2D | _A_CONVT2D | _A_CONVOLUTION | _A_PAD
            | set(_A_PAD_MODE) | _A_UPSAMPLE | _A_AVGPOOL | _A_MAXPOOL | _A_MAXPOOL_IDX | set(_A_BATCHNORM)
            | _A_DROPOUT | _A_META | _A_ACT_ONE | _A_SIGMOID | _A_SILU | _A_GELU | _A_LEAKY | _A_ELU | _A_BMM)

# the aten ops whose arguments sit where the torch-level function's do join its table
_ADD |= _A_ADD
_SUB |= _A_SUB
_MUL |= _A_MUL
_DIV |= _A_DIV
_NEG |= _A_NEG
_CAT |= _A_CAT
_PERMUTE |= _A_PERMUTE
_PROJECT |= _A_PROJECT
_REPEAT |= _A_REPEAT
_REDUCE_MEAN |= _A_MEAN
_REDUCE_SUM |= _A_SUM
_MATMUL |= _A_MATMUL
_RANDOM |= _A_RANDOM
_DROPOUT_FNS |= _A_DROPOUT


def _is_guards_fn(module: nn.Module) -> bool:
    """torch.export's input-shape guard (``_guards_fn``): it asserts on the sizes of its inputs, returns None."""
    cls = type(module)
    return cls.__name__ == "GuardsFn" and (cls.__module__ or "").startswith("torch.export")


def _activation_constant_of(key: Any, node: fx.Node, arg) -> Optional[float]:
    """The registry's constant for a functional activation, or ``None`` if ``key`` is not one."""
    if key in (F.relu, torch.relu, torch.relu_, F.relu_, _m("relu"), _m("relu_"), F.relu6, F.hardtanh,
               F.hardtanh_, torch.tanh, F.tanh, _m("tanh"), _m("tanh_"), torch.clamp, torch.clip, _m("clamp"),
               _m("clip"), _m("clamp_"), _m("clip_"), torch.abs, torch.absolute, _m("abs"), _m("abs_"), operator.abs,
               torch.clamp_min, torch.clamp_max, _m("clamp_min"), _m("clamp_max")):
        return 1.0
    if key in _A_ACT_ONE:
        return 1.0
    if key in (torch.sigmoid, F.sigmoid, _m("sigmoid"), _m("sigmoid_")) or key in _A_SIGMOID:
        return 0.25
    if key is F.silu or key in _A_SILU:
        return _rules.SILU_LIPSCHITZ
    if key in _A_LEAKY:
        return max(1.0, abs(float(arg(1, "negative_slope", 0.01))))
    if key in _A_ELU:  # scale * (x if x > 0 else alpha * (exp(input_scale * x) - 1))
        alpha, scale, in_scale = (float(arg(i, nm, 1.0)) for i, nm in ((1, "alpha"), (2, "scale"), (3, "input_scale")))
        if not in_scale >= 0:
            raise UnsupportedModuleError(f"elu with input_scale={in_scale} < 0 is not Lipschitz")
        return _times(abs(scale), max(1.0, _times(abs(alpha), in_scale)))
    if key in _A_SOFTPLUS:
        raise UnsupportedModuleError(_rules._SOFTPLUS_REASON.format(beta=arg(1, "beta", 1.0),
                                                                 threshold=arg(2, "threshold", 20.0)))
    if key is F.gelu or key in _A_GELU:
        approx = arg(1, "approximate", "none")
        return _rules.GELU_TANH_LIPSCHITZ if approx == "tanh" else _rules.GELU_LIPSCHITZ
    if key in (F.leaky_relu, F.leaky_relu_):
        return max(1.0, abs(float(arg(1, "negative_slope", 0.01))))
    if key in (F.elu, F.elu_):
        return max(1.0, abs(float(arg(1, "alpha", 1.0))))
    if key is F.softplus:
        raise UnsupportedModuleError(_rules._SOFTPLUS_REASON.format(beta=arg(1, "beta", 1.0),
                                                                 threshold=arg(2, "threshold", 20.0)))
    return None


#: Ops that return a new tensor (never an alias of an input): safe targets of an in-place update.
_FRESH_FUNCS = (_ADD | _SUB | _MUL | _DIV | _CAT | _REDUCE_MEAN | _REDUCE_SUM | _MATMUL
                | {torch.neg, operator.neg, F.linear, F.conv2d, F.conv_transpose2d, F.pad, F.interpolate,
                   F.avg_pool2d, F.max_pool2d, torch.max_pool2d, F.relu, torch.relu, F.gelu, F.silu, torch.tanh,
                   torch.sigmoid, F.leaky_relu, F.elu, torch.clamp, torch.clone, _m("clone"), _m("relu"),
                   torch.zeros, torch.ones, torch.full, torch.tensor, torch.arange, torch.empty,
                   _m("tanh"), _m("sigmoid"), _m("clamp"), _m("neg")})
_FRESH_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear, nn.AvgPool2d, nn.MaxPool2d,
                  nn.Upsample, nn.modules.batchnorm._BatchNorm)


def _key(node: fx.Node) -> Any:
    return _m(node.target) if node.op == "call_method" else node.target


def _op_name(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"{type(gm.get_submodule(node.target)).__name__} module {node.target!r}"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return f"torch.ops.{t}"  # torch.ops.aten.conv2d.default
    mod = getattr(t, "__module__", None) or ""
    name = getattr(t, "__name__", None) or str(t)
    if t in (F.max_pool2d,):
        name = "max_pool2d"
    if mod.startswith("torch.nn.functional") or t in (F.gelu, F.avg_pool2d, F.conv2d, F.linear):
        return f"F.{name}"
    if mod == "_operator" or t in vars(operator).values():
        return f"operator.{name}"
    return f"torch.{name}" if "torch" in mod or mod == "" else f"{mod}.{name}"


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def _source_line(node: fx.Node) -> str:
    st = node.stack_trace or node.meta.get("stack_trace") or ""
    frames = [f for f in _FRAME.findall(st) if "/torch/" not in f[0] and not f[0].endswith("traced.py")]
    if not frames:
        return "source line unknown"
    path, line, fn, code = frames[-1]
    return f"{path}:{line} in {fn}: {code.strip()}"


def _module_path(node: fx.Node, prefix: str) -> str:
    if node.op == "call_module":
        path = str(node.target)
    else:
        stack = node.meta.get("nn_module_stack") or {}
        path = ""
        for v in stack.values():
            path = v[0] if isinstance(v, tuple) else str(v)
    full = ".".join(p for p in (prefix, path) if p)
    return full or "<root>"


# ----------------------------------------------------------------------------- rounding helpers


def _sqrt_up(n: int) -> float:
    return _lip._sqrt_up(int(n))


def _inv_sqrt_up(n: int) -> float:
    """The smallest float >= 1/sqrt(n) (n >= 1), decided exactly."""
    r = 1.0 / math.sqrt(n)
    while Fraction(r) ** 2 * n < 1:
        r = math.nextafter(r, math.inf)
    return r


def _times(*factors: float) -> float:
    return product_bound(*factors)


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def _broadcast_copies(shape: Sequence[int], out: Sequence[int]) -> int:
    """How many times broadcasting ``shape`` to ``out`` copies each entry (every entry equally often)."""
    shape = (1,) * (len(out) - len(shape)) + tuple(shape)
    if len(shape) != len(out):
        raise ArgumentError(f"cannot broadcast {tuple(shape)} to {tuple(out)}")
    m = 1
    for a, b in zip(shape, out):
        if a == 1 and b != 1:
            m *= int(b)
        elif a != b:
            raise ArgumentError(f"cannot broadcast {tuple(shape)} to {tuple(out)}")
    return m


# ----------------------------------------------------------------------------- the bound


class _Bounder:
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

    def _dep_args(self, n: fx.Node) -> list:
        return [a for a in n.all_input_nodes if a in self.dep]

    def _bound(self, n: fx.Node) -> float:
        k = _key(n)
        deps = self._dep_args(n)
        out_shape = self.shapes.get(n)
        first = n.args[0] if n.args else None

        if n.op == "call_module":
            sub = self.gm.get_submodule(n.target)
            if first is None or first not in self.dep or len(deps) != 1:
                raise self.fail(n, "x must enter a module only through its first argument, once")
            if isinstance(sub, (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)) or (
                    isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training):
                raise self.fail(n, NORMALISATION_HINT)
            if isinstance(sub, (nn.MultiheadAttention, nn.Softmax, nn.LogSoftmax)):
                raise self.fail(n, ATTENTION_HINT)
            if isinstance(sub, fx.GraphModule) and not _has_rule_class(sub):
                # a graph (torch.export's .module()) called with further inputs: bounded in its first
                # input, the others held at their values here (they do not depend on x: checked above)
                self.ctx._forward_inputs[id(sub)] = (tuple(self.const(n, a) for a in n.args[1:]),
                                                     {kk: self.const(n, v) for kk, v in n.kwargs.items()})
            try:
                val, _ = self.ctx.bound(sub, self.shape(first)[1:], str(n.target))
            except UnsupportedModuleError as e:
                raise self.fail(n, str(e)) from None
            return _times(val, self.L[first])

        # metadata-like x-dependent nodes were classified out of ``dep``; everything below reads values
        if _is_aten(k):
            if k not in _A_KNOWN:
                if k in _A_NORM:
                    raise self.fail(n, NORMALISATION_HINT)
                if k in _A_ATTENTION:
                    raise self.fail(n, ATTENTION_HINT)
                if k in _A_SOFTPLUS:
                    try:
                        _activation_constant_of(k, n, lambda i, name, d=None: self.arg(n, i, name, d))
                    except UnsupportedModuleError as e:
                        raise self.fail(n, str(e)) from None
                raise self.fail(n, "no traced Lipschitz rule for this aten op (torch.export); rewrite the network with "
                                   "supported ops or put it in a module with a registered rule")
            special = self._bound_aten(n, k, deps, first, out_shape)
            if special is not None:
                return special
        if k in _ADD or k in _SUB:
            alpha = self.arg(n, 2, "alpha", 1) if k not in (operator.add, operator.sub, operator.iadd,
                                                              operator.isub) else 1
            terms, seen = [], set()
            operands = list(n.args[:2]) + ([n.kwargs["other"]] if "other" in n.kwargs else [])
            for i, a in enumerate(operands):
                if isinstance(a, fx.Node) and a in self.dep:
                    seen.add(a)
                    lip = _times(self.L[a], _sqrt_up(_broadcast_copies(self.shape(a), out_shape)))
                    if i == 1 and alpha != 1:
                        lip = _times(lip, self.factor(n, alpha))
                    terms.append(lip)
            if set(deps) - seen:
                raise self.fail(n, "x enters through an unsupported argument")
            return sum_bound(*terms)
        if k in _A_MUL and self._is_silu(n):  # x * sigmoid(x): how run_decompositions() writes silu
            self.row(n, "silu (mul of x and sigmoid(x))", self._silu_constant())
            return _times(self.L[n.args[0]], self._silu_constant())
        if k in _MUL or k in _DIV:
            a, b = n.args[0], n.args[1] if len(n.args) > 1 else n.kwargs.get("other")
            if k in _DIV and self.const(n, n.kwargs.get("rounding_mode")) is not None:
                raise self.fail(n, "division with rounding is not Lipschitz")
            if deps and deps[0] not in (a, b):
                raise self.fail(n, "x enters through an unsupported argument")
            if len(deps) > 1 or (isinstance(a, fx.Node) and a in self.dep and isinstance(b, fx.Node) and b in self.dep):
                raise self.fail(n, _PRODUCT_HINT)
            if k in _DIV:
                if not (isinstance(a, fx.Node) and a in self.dep):
                    raise self.fail(n, "x in a denominator: 1/x is not globally Lipschitz")
                src, fac = a, self.factor(n, b, inverse=True)
            else:
                src, other = (a, b) if isinstance(a, fx.Node) and a in self.dep else (b, a)
                fac = self.factor(n, other)
            copies = _broadcast_copies(self.shape(src), out_shape)
            return _times(self.L[src], fac, _sqrt_up(copies))
        if k in _NEG:
            return self.L[first]
        if k in _CAT:
            parts = n.args[0] if n.args else n.kwargs["tensors"]
            if set(deps) - {p for p in parts if isinstance(p, fx.Node)}:
                raise self.fail(n, "x enters through an unsupported argument")
            return concat_bound(*(self.L[p] for p in parts if isinstance(p, fx.Node) and p in self.dep))
        if k in _PERMUTE or (n.op == "call_function" and n.target is getattr and n.args[1] in ("T", "mT", "mH", "H")):
            if k in (_m("to"), _m("type_as")) and any(isinstance(a, torch.dtype) and a.is_complex for a in
                                                      fx.node.map_aggregate(n.args[1:], lambda v: v)):
                raise self.fail(n, "cast to a complex dtype")
            self._single(n, deps)
            if out_shape is not None and isinstance(out_shape, tuple) and _numel(out_shape) != _numel(self.shape(first)):
                raise self.fail(n, "reshape changed the number of entries")
            return self.L[first]
        if k in _PROJECT:
            self._single(n, deps)
            return self.L[first]
        if k is operator.getitem:
            self._single(n, deps)
            if self.kinds.get(first) == "seq":
                if isinstance(first, fx.Node) and first.target in _A_FIRST_ONLY and n.args[1] != 0:
                    raise self.fail(n, f"output {n.args[1]!r} of {first.target} (indices or batch statistics) is "
                                       "not a Lipschitz function of x")
                return self.L[first]
            idx = n.args[1]
            items = idx if isinstance(idx, tuple) else (idx,)
            for it in items:
                if isinstance(it, fx.Node):
                    raise self.fail(n, "indexing with a computed index (may be a tensor with repeated entries) "
                                       "is not supported; use basic slicing")
                if not (it is None or it is Ellipsis or isinstance(it, (int, slice))):
                    raise self.fail(n, "advanced (tensor/list) indexing may repeat entries; use basic slicing")
            return self.L[first]
        if k in _REPEAT:
            self._single(n, deps)
            nin, nout = _numel(self.shape(first)), _numel(out_shape)
            if nin == 0 or nout % nin:
                raise self.fail(n, "unexpected repeat shapes")
            copies = nout // nin  # read from the shapes: it may grow with the size (checked below)
            if self.ctx.size_independent and any(isinstance(a, fx.Node) and a in self.shp for a in n.all_input_nodes):
                raise self.fail(n, "the number of copies depends on the input size; no bound for every size")
            return _times(self.L[first], _sqrt_up(copies))
        if k in _REDUCE_MEAN or k in _REDUCE_SUM:
            self._single(n, deps)
            nin, nout = _numel(self.shape(first)), max(_numel(out_shape), 1)
            count = nin // nout
            if k in _REDUCE_MEAN:
                return _times(self.L[first], 1.0 if self.ctx.size_independent else _inv_sqrt_up(max(count, 1)))
            if self.ctx.size_independent:
                raise self.fail(n, "a sum over n entries has norm sqrt(n), which grows with the input size; "
                                   "use a fixed input shape or mean")
            return _times(self.L[first], _sqrt_up(count))
        act = _activation_constant_of(k, n, lambda i, name, d=None: self.arg(n, i, name, d))
        if act is not None:
            self._single(n, deps)
            if k in (torch.clamp, torch.clip, _m("clamp"), _m("clip"), _m("clamp_"), _m("clip_"), torch.clamp_min,
                     torch.clamp_max, _m("clamp_min"), _m("clamp_max")) or _is_aten(k):
                for a in list(n.args[1:]) + list(n.kwargs.values()):
                    if isinstance(a, fx.Node) and a in self.dep:
                        raise self.fail(n, "clamp bounds that depend on x")
            self.row(n, _op_name(n, self.gm), act)
            return _times(self.L[first], act)
        if k in _DROPOUT_FNS:
            self._single(n, deps)
            if self._training_flag(n) and float(self.arg(n, 1, "p", 0.5)) > 0:
                raise self.fail(n, "dropout with training=True is random; pass training=self.training and call .eval()")
            return self.L[first]
        if k is F.pad:
            self._single(n, deps)
            return _times(self.L[first], self._pad(n, first))
        if k is F.interpolate:
            self._single(n, deps)
            mode = self.arg(n, 3, "mode", "nearest")
            if mode not in ("nearest",) or self.arg(n, 4, "align_corners", None) is not None or self.arg(n, 6, "antialias", False):
                raise self.fail(n, f"interpolate(mode={mode!r}) has no rule; use mode='nearest'")
            up = nn.Upsample(size=self.arg(n, 1, "size"), scale_factor=self.arg(n, 2, "scale_factor"), mode="nearest",
                             recompute_scale_factor=self.arg(n, 5, "recompute_scale_factor"))
            return _times(self.L[first], self.layer_bound(n, up, first, op_norm=False))
        if k is F.avg_pool2d:
            self._single(n, deps)
            pool = nn.AvgPool2d(self.arg(n, 1, "kernel_size"), self.arg(n, 2, "stride"), self.arg(n, 3, "padding", 0),
                                self.arg(n, 4, "ceil_mode", False), self.arg(n, 5, "count_include_pad", True),
                                self.arg(n, 6, "divisor_override"))
            return _times(self.L[first], self.layer_bound(n, pool, first, op_norm=False))
        if k in (F.max_pool2d, torch.max_pool2d):
            self._single(n, deps)
            if self.arg(n, 6, "return_indices", False):
                raise self.fail(n, "max_pool2d with return_indices")
            pool = nn.MaxPool2d(self.arg(n, 1, "kernel_size"), self.arg(n, 2, "stride"), self.arg(n, 3, "padding", 0),
                                self.arg(n, 4, "dilation", 1), ceil_mode=self.arg(n, 5, "ceil_mode", False))
            return _times(self.L[first], self.layer_bound(n, pool, first, op_norm=False))
        if k in (F.linear, F.conv2d, F.conv_transpose2d):
            self._single(n, deps)
            return _times(self.L[first], self._weighted(n, k, first))
        if k in _MATMUL:
            return self._matmul(n, deps)
        if k in _NORM_FNS or (k is F.batch_norm and self.arg(n, 5, "training", False)):
            raise self.fail(n, NORMALISATION_HINT)
        if k in _ATTENTION_FNS:
            raise self.fail(n, ATTENTION_HINT)
        raise self.fail(n, "no traced Lipschitz rule for this op; rewrite it with supported ops or put it in a "
                           "module with a registered rule (injcert.theory.lipschitz.register_lipschitz_rule)")

    def _bound_aten(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> Optional[float]:
        """The aten ops whose arguments differ from their torch-level function's (proofs/05, item 20);
        ``None`` for the others, which the torch-level tables bound (they read the same positions)."""
        if k in _A_CAST:
            dt = self.arg(n, 1, "dtype", None) if k is not torch.ops.aten._to_copy.default else n.kwargs.get("dtype")
            if isinstance(dt, Tensor):  # type_as / to.other: the other tensor's dtype
                dt = dt.dtype
            if isinstance(dt, torch.dtype) and not dt.is_floating_point:
                raise self.fail(n, f"cast to {dt}: only casts between real floating dtypes are the identity map")
            return None
        if k in _A_RSUB:  # other - alpha * self
            self._single(n, deps)
            return _times(self.L[first], self.factor(n, self.arg(n, 2, "alpha", 1)),
                          _sqrt_up(_broadcast_copies(self.shape(first), out_shape)))
        if k in _A_LINEAR or k in _A_CONV2D or k in _A_CONVT2D:
            self._single(n, deps)
            fn = F.linear if k in _A_LINEAR else F.conv2d if k in _A_CONV2D else F.conv_transpose2d
            return _times(self.L[first], self._weighted(n, fn, first))
        if k in _A_CONVOLUTION:  # (input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
            self._single(n, deps)
            w = self._weight(n, n.args[1])
            if w.dim() != 4:
                raise self.fail(n, f"convolution with a {w.dim()}-D weight has no rule (2-D convolutions only)")
            groups = int(self.arg(n, 8, "groups", 1))
            stride, padding, dilation = self.arg(n, 3, "stride"), self.arg(n, 4, "padding"), self.arg(n, 5, "dilation")
            if self.arg(n, 6, "transposed", False):
                layer: nn.Module = nn.ConvTranspose2d(
                    w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]), stride=stride, padding=padding,
                    output_padding=self.arg(n, 7, "output_padding", 0), groups=groups, bias=False, dilation=dilation,
                    dtype=torch.float64)
            else:
                if any(int(p) for p in _flatten(self.arg(n, 7, "output_padding", 0))):
                    raise self.fail(n, "output_padding of a forward convolution")
                layer = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
                                  dilation=dilation, groups=groups, bias=False, dtype=torch.float64)
            with torch.no_grad():
                layer.weight.copy_(w)
            return _times(self.L[first], self.layer_bound(n, layer, first, op_norm=True))
        if k in _A_ADDMM:  # beta * bias + alpha * (mat1 @ mat2)
            bias = n.args[0]
            if isinstance(bias, fx.Node) and bias in self.dep:
                raise self.fail(n, "x in the bias of addmm")
            mm = self._matmul(n, deps, n.args[1], n.args[2])
            return _times(mm, self.factor(n, self.arg(n, 4, "alpha", 1)))
        if k in _A_BMM:
            return self._bmm(n, deps)
        if k in _A_PAD or k in _A_PAD_MODE:
            self._single(n, deps)
            if k in _A_PAD_MODE:
                mode = _A_PAD_MODE[k]
            elif k is torch.ops.aten.constant_pad_nd.default:
                mode = "constant"
            else:
                mode = self.arg(n, 2, "mode", "constant")
            return _times(self.L[first], self._pad(n, first, tuple(self.arg(n, 1, "pad")), mode))
        if k in _A_UPSAMPLE:
            self._single(n, deps)
            size = self.arg(n, 1, "output_size")
            if k is torch.ops.aten.upsample_nearest2d.vec:
                scales = self.arg(n, 2, "scale_factors")
            else:
                sh, sw = self.arg(n, 2, "scales_h"), self.arg(n, 3, "scales_w")
                scales = None if sh is None and sw is None else (sh, sw)
                if (sh is None) != (sw is None):
                    raise self.fail(n, "upsample_nearest2d with one scale given: no rule")
            if scales is not None:
                up = nn.Upsample(scale_factor=tuple(float(v) for v in scales), mode="nearest")
            else:
                up = nn.Upsample(size=tuple(int(v) for v in size), mode="nearest")
            val, shape = self.ctx.bound(up, self.shape(first)[1:], ".".join(
                p for p in (self._local_path(n), n.name) if p))
            if tuple(shape) != tuple(self.shape(n)[1:]):
                raise self.fail(n, f"upsampling to {tuple(self.shape(n)[1:])} is not nn.Upsample's {tuple(shape)}")
            return _times(self.L[first], val)
        if k in _A_AVGPOOL:
            self._single(n, deps)
            pool = nn.AvgPool2d(self.arg(n, 1, "kernel_size"), self.arg(n, 2, "stride") or None,
                                self.arg(n, 3, "padding", 0), self.arg(n, 4, "ceil_mode", False),
                                self.arg(n, 5, "count_include_pad", True), self.arg(n, 6, "divisor_override"))
            return _times(self.L[first], self.layer_bound(n, pool, first, op_norm=False))
        if k in _A_MAXPOOL or k in _A_MAXPOOL_IDX:
            self._single(n, deps)
            pool = nn.MaxPool2d(self.arg(n, 1, "kernel_size"), self.arg(n, 2, "stride") or None,
                                self.arg(n, 3, "padding", 0), self.arg(n, 4, "dilation", 1),
                                ceil_mode=self.arg(n, 5, "ceil_mode", False))
            return _times(self.L[first], self.layer_bound(n, pool, first, op_norm=False))
        if k in _A_BATCHNORM:
            return _times(self.L[first], self._batch_norm(n, k, deps, first))
        return None

    def _is_silu(self, n: fx.Node) -> bool:
        """``mul(a, sigmoid(a))`` (either order) with the same node ``a``: silu(a)."""
        if len(n.args) != 2 or n.kwargs:
            return False
        a, b = n.args
        for u, v in ((a, b), (b, a)):
            if isinstance(v, fx.Node) and v.op == "call_function" and v.target in _A_SIGMOID and v.args[:1] == (u,) \
                    and isinstance(u, fx.Node) and u in self.dep and len(v.args) == 1 and not v.kwargs:
                return True
        return False

    @staticmethod
    def _silu_constant() -> float:
        return SILU_LIPSCHITZ

    def _batch_norm(self, n: fx.Node, k: Any, deps: list, first: Any) -> float:
        """Batch norm in eval: ``(x - mean) / sqrt(var + eps) * w + b`` per channel, the running statistics
        constants: the ``nn.BatchNorm`` rule on a layer holding them."""
        self._single(n, deps)
        eps_at, training_at = _A_BATCHNORM[k]
        if training_at is not None and self.arg(n, training_at, "training", False):
            raise self.fail(n, NORMALISATION_HINT)
        w, b, mean, var = (self.const(n, a) for a in n.args[1:5])
        if mean is None or var is None:
            raise self.fail(n, NORMALISATION_HINT)
        if any(isinstance(a, fx.Node) and (a in self.rand or (self.ctx.size_independent and a in self.shp))
               for a in n.args[1:5]):
            raise self.fail(n, "batch-norm statistics that are random or computed from the input's size")
        shape = self.shape(first)
        cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(len(shape))
        if cls is None:
            raise self.fail(n, f"batch norm of a {len(shape)}-D input")
        layer = cls(int(shape[1]), eps=float(self.arg(n, eps_at, "eps")), affine=w is not None or b is not None,
                    dtype=var.dtype)
        with torch.no_grad():
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
            if layer.affine:
                layer.weight.copy_(w if w is not None else torch.ones_like(var))
                layer.bias.copy_(b if b is not None else torch.zeros_like(var))
        return self.layer_bound(n, layer.eval(), first, op_norm=False)

    def _bmm(self, n: fx.Node, deps: list) -> float:
        """``bmm(A, B)`` with one operand x-independent: block diagonal, norm = max over the distinct blocks."""
        a, b = n.args[0], n.args[1]
        a_dep, b_dep = a in self.dep, b in self.dep
        if a_dep and b_dep:
            raise self.fail(n, "matrix product of two x-dependent tensors (as in attention scores): " + ATTENTION_HINT)
        src, w = (a, self._weight(n, b)) if a_dep else (b, self._weight(n, a))
        if w.dim() != 3:
            raise self.fail(n, "bmm with a constant needs a 3-D constant")
        vals = []
        for block in torch.unique(w, dim=0):
            mat = block.T if a_dep else block
            layer = nn.Linear(mat.shape[1], mat.shape[0], bias=False, dtype=torch.float64)
            with torch.no_grad():
                layer.weight.copy_(mat)
            vals.append(self.ctx.op_norm(layer, (mat.shape[1],)))
        val = max(vals) if vals else 0.0
        self.row(n, _op_name(n, self.gm), val)
        return _times(self.L[src], val)

    def _single(self, n: fx.Node, deps: list) -> None:
        first = n.args[0] if n.args else None
        if not (isinstance(first, fx.Node) and first in self.dep) or len(deps) != 1:
            raise self.fail(n, "x may enter this op only through its first argument")

    def _pad(self, n: fx.Node, src: fx.Node, pad: Optional[tuple] = None, mode: Optional[str] = None) -> float:
        pad = tuple(int(p) for p in (self.arg(n, 1, "pad") if pad is None else pad))
        mode = self.arg(n, 2, "mode", "constant") if mode is None else mode
        if mode == "constant":
            return 1.0  # a coordinate embedding (negative pads: a projection); the fill value is a constant
        if mode not in ("reflect", "replicate", "circular"):
            raise self.fail(n, f"pad mode {mode!r} has no rule")
        if self.ctx.size_independent:
            if any(p < 0 for p in pad):
                raise self.fail(n, "negative padding in size-independent mode")
            mult = 1
            for lo, hi in zip(pad[0::2], pad[1::2]):
                mult *= (lo + hi + 1) if mode == "replicate" else (1 + (lo > 0) + (hi > 0))
            return _sqrt_up(mult)
        shape = self.shape(src)
        numel = _numel(shape)
        if numel >= 2**53:
            raise self.fail(n, "input too large to label its entries exactly")
        labels = torch.arange(numel, dtype=torch.float64).reshape(shape)
        with torch.no_grad():
            out = F.pad(labels, pad, mode=mode)
        counts = torch.bincount(out.reshape(-1).to(torch.int64), minlength=numel)
        return _sqrt_up(int(counts.max()) if counts.numel() else 0)

    def _weight(self, n: fx.Node, a: Any) -> Tensor:
        if isinstance(a, fx.Node):
            if a in self.rand:
                raise self.fail(n, "the weight is random; no certified bound")
            if self.ctx.size_independent and a in self.shp:
                raise self.fail(n, "the weight is computed from the input's size")
        w = self.const(n, a)
        if not isinstance(w, Tensor) or w.is_complex():
            raise self.fail(n, "the weight must be a real tensor")
        return w.detach().to("cpu", torch.float64)

    def _weighted(self, n: fx.Node, k: Any, src: fx.Node) -> float:
        raw = n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")
        w = self._weight(n, raw)
        if k is F.linear:
            if w.dim() != 2:
                raise self.fail(n, "F.linear weight must be 2-D")
            layer = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.float64)
        elif k is F.conv2d:
            if w.dim() != 4:
                raise self.fail(n, "F.conv2d weight must be 4-D")
            groups = int(self.arg(n, 6, "groups", 1))
            layer = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=self.arg(n, 3, "stride", 1),
                              padding=self.arg(n, 4, "padding", 0), dilation=self.arg(n, 5, "dilation", 1),
                              groups=groups, bias=False, dtype=torch.float64)
        else:
            if w.dim() != 4:
                raise self.fail(n, "F.conv_transpose2d weight must be 4-D")
            groups = int(self.arg(n, 6, "groups", 1))
            layer = nn.ConvTranspose2d(w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]),
                                       stride=self.arg(n, 3, "stride", 1), padding=self.arg(n, 4, "padding", 0),
                                       output_padding=self.arg(n, 5, "output_padding", 0), groups=groups,
                                       bias=False, dilation=self.arg(n, 7, "dilation", 1), dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(w)
        return self.layer_bound(n, layer, src, op_norm=True)

    def _matmul(self, n: fx.Node, deps: list, a: Any = None, b: Any = None) -> float:
        if a is None and b is None:
            a, b = n.args[0], n.args[1]
        a_dep = isinstance(a, fx.Node) and a in self.dep
        b_dep = isinstance(b, fx.Node) and b in self.dep
        if len(deps) != 1 and not (a_dep and b_dep):
            raise self.fail(n, "x enters through an unsupported argument")
        if a_dep and b_dep:
            raise self.fail(n, "matrix product of two x-dependent tensors (as in attention scores): " + ATTENTION_HINT)
        src, w = (a, self._weight(n, b)) if a_dep else (b, self._weight(n, a))
        if w.dim() != 2 or len(self.shape(src)) < 2:
            raise self.fail(n, "matmul with x supports a 2-D constant matrix and an x-dependent tensor of >= 2 dims")
        # h @ W applies W^T to the last axis; W @ h applies W to the second-to-last axis: both have norm ||W||
        mat = w.T if a_dep else w
        layer = nn.Linear(mat.shape[1], mat.shape[0], bias=False, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(mat)
        val = self.ctx.op_norm(layer, (mat.shape[1],))
        self.row(n, _op_name(n, self.gm), val)
        return _times(self.L[src], val)


def _flatten_tensors(v: Any) -> list:
    if isinstance(v, Tensor):
        return [v]
    if isinstance(v, dict):
        v = list(v.values())
    if isinstance(v, (tuple, list)):
        return [t for u in v for t in _flatten_tensors(u)]
    return []


def _flatten(a: Any) -> list:
    out: list = []
    fx.node.map_aggregate(a, lambda v: out.append(v) or v)
    return out


def _probe_input(module: nn.Module, shape: tuple) -> Tensor:
    tensors = list(module.parameters()) + list(module.buffers())
    tensors += [v for m in module.modules() for v in vars(m).values() if isinstance(v, Tensor)]
    p = next((t for t in tensors if t.is_floating_point() and not t.is_complex()), None)
    dtype = p.dtype if p is not None else torch.get_default_dtype()
    device = p.device if p is not None else None
    return torch.zeros((1, *shape), dtype=dtype, device=device)


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
