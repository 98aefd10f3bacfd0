"""The per-op rules of :mod:`injcert.theory.traced` (proofs/05, items 12-20): a mixin of
:class:`~injcert.theory.traced._Bounder` that bounds one ``x``-dependent node from its producers'
bounds. :meth:`_Rules._bound` reads a registered module's rule, or walks two ordered dispatch tables
of op families: ``_ATEN_RULES`` (the aten overloads whose arguments differ from their torch-level
function's) and then ``_TORCH_RULES`` (the torch-level families, which the other aten ops joined).
The first family that holds the op bounds it; an op in none is refused by name."""

from __future__ import annotations

import operator
from typing import Any, Callable, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from injcert.errors import UnsupportedModuleError
from injcert.theory._rules import SILU_LIPSCHITZ, _has_rule_class
from injcert.theory._traced_graph import _flatten, _key, _op_name
from injcert.theory._traced_ops import (
    _A_ADDMM, _A_ATTENTION, _A_AVGPOOL, _A_BATCHNORM, _A_BMM, _A_CAST, _A_CONV2D, _A_CONVOLUTION, _A_CONVT2D,
    _A_FIRST_ONLY, _A_KNOWN, _A_LINEAR, _A_MAXPOOL, _A_MAXPOOL_IDX, _A_MUL, _A_NORM, _A_PAD, _A_PAD_MODE,
    _A_RSUB, _A_SIGMOID, _A_SOFTPLUS, _A_UPSAMPLE, _ADD, _ATTENTION_FNS, _CAT, _DIV, _DROPOUT_FNS, _MATMUL,
    _MUL, _NEG, _NORM_FNS, _PERMUTE, _PRODUCT_HINT, _PROJECT, _REDUCE_MEAN, _REDUCE_SUM, _REPEAT, _SUB,
    ATTENTION_HINT, NORMALISATION_HINT, _activation_constant_of, _broadcast_copies, _inv_sqrt_up, _is_aten, _m,
    _numel, _sqrt_up, _times,
)
from injcert.theory.lipschitz import concat_bound, sum_bound

_CLAMPS = (torch.clamp, torch.clip, _m("clamp"), _m("clip"), _m("clamp_"), _m("clip_"), torch.clamp_min,
           torch.clamp_max, _m("clamp_min"), _m("clamp_max"))


class _Rules:
    """The rules of one node; the state (``dep``, ``L``, ``shapes``, ...) and the helpers ``fail``,
    ``arg``, ``const``, ``factor``, ``row``, ``layer_bound`` are :class:`_Bounder`'s."""

    def _dep_args(self, n: fx.Node) -> list:
        return [a for a in n.all_input_nodes if a in self.dep]

    def _bound(self, n: fx.Node) -> float:
        """The bound of an x-dependent node: its module's rule, else the first op family (aten-specific
        families first) that holds its op, else a refusal naming the op."""
        k = _key(n)
        deps = self._dep_args(n)
        out_shape = self.shapes.get(n)
        first = n.args[0] if n.args else None
        if n.op == "call_module":
            return self._bound_module(n, deps, first)
        # metadata-like x-dependent nodes were classified out of ``dep``; everything below reads values
        if _is_aten(k):
            if k not in _A_KNOWN:
                self._refuse_aten(n, k)
            special = self._bound_aten(n, k, deps, first, out_shape)
            if special is not None:
                return special
        for holds, rule in _TORCH_RULES:
            if holds(self, n, k):
                return rule(self, n, k, deps, first, out_shape)
        raise self.fail(n, "no traced Lipschitz rule for this op; rewrite it with supported ops or put it in a "
                           "module with a registered rule (injcert.theory.lipschitz.register_lipschitz_rule)")

    def _bound_module(self, n: fx.Node, deps: list, first: Any) -> float:
        """A ``call_module`` node: the submodule's rule (through the context) times its input's bound."""
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

    def _refuse_aten(self, n: fx.Node, k: Any) -> None:
        """Refuse an aten op without a rule, with the hint of its family where it has one."""
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

    def _bound_aten(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> Optional[float]:
        """The aten ops whose arguments differ from their torch-level function's (proofs/05, item 20);
        ``None`` for the others, which the torch-level tables bound (they read the same positions)."""
        for family, rule in _ATEN_RULES:
            if k in family:
                return rule(self, n, k, deps, first, out_shape)
        return None

    # --- torch-level families ----------------------------------------------------------------

    def _add_sub(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """add/sub: the sum of the operands' bounds, each times sqrt(its broadcast copies), alpha on the second."""
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

    def _silu_mul(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """x * sigmoid(x): how run_decompositions() writes silu."""
        self.row(n, "silu (mul of x and sigmoid(x))", self._silu_constant())
        return _times(self.L[n.args[0]], self._silu_constant())

    def _mul_div(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """mul/div by an x-independent factor: max|c| (resp. 1/min|c|), times sqrt(broadcast copies)."""
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

    def _same(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """negation: the producer's bound."""
        return self.L[first]

    def _cat(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """cat/stack: sqrt of the sum of the squared bounds of the x-dependent parts."""
        parts = n.args[0] if n.args else n.kwargs["tensors"]
        if set(deps) - {p for p in parts if isinstance(p, fx.Node)}:
            raise self.fail(n, "x enters through an unsupported argument")
        return concat_bound(*(self.L[p] for p in parts if isinstance(p, fx.Node) and p in self.dep))

    def _permute(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """reshape/permute/real casts: unchanged (the number of entries kept)."""
        if k in (_m("to"), _m("type_as")) and any(isinstance(a, torch.dtype) and a.is_complex for a in
                                                  fx.node.map_aggregate(n.args[1:], lambda v: v)):
            raise self.fail(n, "cast to a complex dtype")
        self._single(n, deps)
        if out_shape is not None and isinstance(out_shape, tuple) and _numel(out_shape) != _numel(self.shape(first)):
            raise self.fail(n, "reshape changed the number of entries")
        return self.L[first]

    def _project(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """coordinate projections (narrow, select, split, ...): unchanged."""
        self._single(n, deps)
        return self.L[first]

    def _getitem(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """an entry of a tuple output (the mapped tensor only), or basic slicing: unchanged."""
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

    def _repeat(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """expand/repeat: sqrt of the number of copies of each entry."""
        self._single(n, deps)
        nin, nout = _numel(self.shape(first)), _numel(out_shape)
        if nin == 0 or nout % nin:
            raise self.fail(n, "unexpected repeat shapes")
        copies = nout // nin  # read from the shapes: it may grow with the size (checked below)
        if self.ctx.size_independent and any(isinstance(a, fx.Node) and a in self.shp for a in n.all_input_nodes):
            raise self.fail(n, "the number of copies depends on the input size; no bound for every size")
        return _times(self.L[first], _sqrt_up(copies))

    def _reduce(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """mean/sum over n entries: 1/sqrt(n) (1 when size-independent), sqrt(n)."""
        self._single(n, deps)
        nin, nout = _numel(self.shape(first)), max(_numel(out_shape), 1)
        count = nin // nout
        if k in _REDUCE_MEAN:
            return _times(self.L[first], 1.0 if self.ctx.size_independent else _inv_sqrt_up(max(count, 1)))
        if self.ctx.size_independent:
            raise self.fail(n, "a sum over n entries has norm sqrt(n), which grows with the input size; "
                               "use a fixed input shape or mean")
        return _times(self.L[first], _sqrt_up(count))

    def _activation_constant(self, n: fx.Node, k: Any) -> Optional[float]:
        return _activation_constant_of(k, n, lambda i, name, d=None: self.arg(n, i, name, d))

    def _activation(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """functional activations: the registry's constant (clamp bounds must not depend on x)."""
        act = self._activation_constant(n, k)
        self._single(n, deps)
        if k in _CLAMPS or _is_aten(k):
            for a in list(n.args[1:]) + list(n.kwargs.values()):
                if isinstance(a, fx.Node) and a in self.dep:
                    raise self.fail(n, "clamp bounds that depend on x")
        self.row(n, _op_name(n, self.gm), act)
        return _times(self.L[first], act)

    def _dropout(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """dropout in eval (or p = 0): the identity."""
        self._single(n, deps)
        if self._training_flag(n) and float(self.arg(n, 1, "p", 0.5)) > 0:
            raise self.fail(n, "dropout with training=True is random; pass training=self.training and call .eval()")
        return self.L[first]

    def _pad_fn(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        self._single(n, deps)
        return _times(self.L[first], self._pad(n, first))

    def _interpolate(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """F.interpolate (nearest only): the nn.Upsample rule."""
        self._single(n, deps)
        mode = self.arg(n, 3, "mode", "nearest")
        if mode not in ("nearest",) or self.arg(n, 4, "align_corners", None) is not None or self.arg(n, 6, "antialias", False):
            raise self.fail(n, f"interpolate(mode={mode!r}) has no rule; use mode='nearest'")
        up = nn.Upsample(size=self.arg(n, 1, "size"), scale_factor=self.arg(n, 2, "scale_factor"), mode="nearest",
                         recompute_scale_factor=self.arg(n, 5, "recompute_scale_factor"))
        return _times(self.L[first], self.layer_bound(n, up, first, op_norm=False))

    def _avg_pool(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        self._single(n, deps)
        pool = nn.AvgPool2d(self.arg(n, 1, "kernel_size"), self.arg(n, 2, "stride"), self.arg(n, 3, "padding", 0),
                            self.arg(n, 4, "ceil_mode", False), self.arg(n, 5, "count_include_pad", True),
                            self.arg(n, 6, "divisor_override"))
        return _times(self.L[first], self.layer_bound(n, pool, first, op_norm=False))

    def _max_pool(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        self._single(n, deps)
        if self.arg(n, 6, "return_indices", False):
            raise self.fail(n, "max_pool2d with return_indices")
        pool = nn.MaxPool2d(self.arg(n, 1, "kernel_size"), self.arg(n, 2, "stride"), self.arg(n, 3, "padding", 0),
                            self.arg(n, 4, "dilation", 1), ceil_mode=self.arg(n, 5, "ceil_mode", False))
        return _times(self.L[first], self.layer_bound(n, pool, first, op_norm=False))

    def _weighted_fn(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        self._single(n, deps)
        return _times(self.L[first], self._weighted(n, k, first))

    def _matmul_fn(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        return self._matmul(n, deps)

    def _refuse_norm(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        raise self.fail(n, NORMALISATION_HINT)

    def _refuse_attention(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        raise self.fail(n, ATTENTION_HINT)

    # --- aten families whose arguments differ ---------------------------------------------------

    def _aten_cast(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> None:
        """A real floating cast: checked here, bounded (the identity) by the torch-level permute family."""
        dt = self.arg(n, 1, "dtype", None) if k is not torch.ops.aten._to_copy.default else n.kwargs.get("dtype")
        if isinstance(dt, Tensor):  # type_as / to.other: the other tensor's dtype
            dt = dt.dtype
        if isinstance(dt, torch.dtype) and not dt.is_floating_point:
            raise self.fail(n, f"cast to {dt}: only casts between real floating dtypes are the identity map")
        return None

    def _aten_rsub(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """other - alpha * self."""
        self._single(n, deps)
        return _times(self.L[first], self.factor(n, self.arg(n, 2, "alpha", 1)),
                      _sqrt_up(_broadcast_copies(self.shape(first), out_shape)))

    def _aten_weighted(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        self._single(n, deps)
        fn = F.linear if k in _A_LINEAR else F.conv2d if k in _A_CONV2D else F.conv_transpose2d
        return _times(self.L[first], self._weighted(n, fn, first))

    def _aten_convolution(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)"""
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

    def _aten_addmm(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """beta * bias + alpha * (mat1 @ mat2)"""
        bias = n.args[0]
        if isinstance(bias, fx.Node) and bias in self.dep:
            raise self.fail(n, "x in the bias of addmm")
        mm = self._matmul(n, deps, n.args[1], n.args[2])
        return _times(mm, self.factor(n, self.arg(n, 4, "alpha", 1)))

    def _aten_bmm(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        return self._bmm(n, deps)

    def _aten_pad(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        self._single(n, deps)
        if k in _A_PAD_MODE:
            mode = _A_PAD_MODE[k]
        elif k is torch.ops.aten.constant_pad_nd.default:
            mode = "constant"
        else:
            mode = self.arg(n, 2, "mode", "constant")
        return _times(self.L[first], self._pad(n, first, tuple(self.arg(n, 1, "pad")), mode))

    def _aten_upsample(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        """upsample_nearest2d: the nn.Upsample rule, which must give the graph's output shape."""
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

    def _aten_avg_pool(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        self._single(n, deps)
        pool = nn.AvgPool2d(self.arg(n, 1, "kernel_size"), self.arg(n, 2, "stride") or None,
                            self.arg(n, 3, "padding", 0), self.arg(n, 4, "ceil_mode", False),
                            self.arg(n, 5, "count_include_pad", True), self.arg(n, 6, "divisor_override"))
        return _times(self.L[first], self.layer_bound(n, pool, first, op_norm=False))

    def _aten_max_pool(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        self._single(n, deps)
        pool = nn.MaxPool2d(self.arg(n, 1, "kernel_size"), self.arg(n, 2, "stride") or None,
                            self.arg(n, 3, "padding", 0), self.arg(n, 4, "dilation", 1),
                            ceil_mode=self.arg(n, 5, "ceil_mode", False))
        return _times(self.L[first], self.layer_bound(n, pool, first, op_norm=False))

    def _aten_batch_norm(self, n: fx.Node, k: Any, deps: list, first: Any, out_shape: Any) -> float:
        return _times(self.L[first], self._batch_norm(n, k, deps, first))

    # --- shared pieces -------------------------------------------------------------------------

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


_Rule = Callable[..., Optional[float]]

#: The torch-level op families in the order they are tried: (does the family hold the node?, its rule).
_TORCH_RULES: tuple[tuple[Callable[[_Rules, fx.Node, Any], bool], _Rule], ...] = (
    (lambda b, n, k: k in _ADD or k in _SUB, _Rules._add_sub),
    (lambda b, n, k: k in _A_MUL and b._is_silu(n), _Rules._silu_mul),
    (lambda b, n, k: k in _MUL or k in _DIV, _Rules._mul_div),
    (lambda b, n, k: k in _NEG, _Rules._same),
    (lambda b, n, k: k in _CAT, _Rules._cat),
    (lambda b, n, k: k in _PERMUTE or (n.op == "call_function" and n.target is getattr
                                       and n.args[1] in ("T", "mT", "mH", "H")), _Rules._permute),
    (lambda b, n, k: k in _PROJECT, _Rules._project),
    (lambda b, n, k: k is operator.getitem, _Rules._getitem),
    (lambda b, n, k: k in _REPEAT, _Rules._repeat),
    (lambda b, n, k: k in _REDUCE_MEAN or k in _REDUCE_SUM, _Rules._reduce),
    (lambda b, n, k: b._activation_constant(n, k) is not None, _Rules._activation),
    (lambda b, n, k: k in _DROPOUT_FNS, _Rules._dropout),
    (lambda b, n, k: k is F.pad, _Rules._pad_fn),
    (lambda b, n, k: k is F.interpolate, _Rules._interpolate),
    (lambda b, n, k: k is F.avg_pool2d, _Rules._avg_pool),
    (lambda b, n, k: k in (F.max_pool2d, torch.max_pool2d), _Rules._max_pool),
    (lambda b, n, k: k in (F.linear, F.conv2d, F.conv_transpose2d), _Rules._weighted_fn),
    (lambda b, n, k: k in _MATMUL, _Rules._matmul_fn),
    (lambda b, n, k: k in _NORM_FNS or (k is F.batch_norm and b.arg(n, 5, "training", False)), _Rules._refuse_norm),
    (lambda b, n, k: k in _ATTENTION_FNS, _Rules._refuse_attention),
)

#: The aten families whose arguments differ from their torch-level function's, in the order they are
#: tried: (the overloads, their rule). A rule returning ``None`` (casts) hands the op to ``_TORCH_RULES``.
_ATEN_RULES: tuple[tuple[Any, _Rule], ...] = (
    (_A_CAST, _Rules._aten_cast),
    (_A_RSUB, _Rules._aten_rsub),
    (_A_LINEAR | _A_CONV2D | _A_CONVT2D, _Rules._aten_weighted),
    (_A_CONVOLUTION, _Rules._aten_convolution),
    (_A_ADDMM, _Rules._aten_addmm),
    (_A_BMM, _Rules._aten_bmm),
    (_A_PAD | set(_A_PAD_MODE), _Rules._aten_pad),
    (_A_UPSAMPLE, _Rules._aten_upsample),
    (_A_AVGPOOL, _Rules._aten_avg_pool),
    (_A_MAXPOOL | _A_MAXPOOL_IDX, _Rules._aten_max_pool),
    (_A_BATCHNORM, _Rules._aten_batch_norm),
)
