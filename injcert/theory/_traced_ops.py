"""The op tables of :mod:`injcert.theory.traced`: which torch functions, Tensor methods and
``torch.ops.aten`` overloads form each family with one Lipschitz rule (proofs/05, items 12-20), the
activations' constants, and the exactly rounded arithmetic the rules share."""

from __future__ import annotations

import math
import operator
from fractions import Fraction
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from injcert.errors import ArgumentError, UnsupportedModuleError
from injcert.theory import _rules
from injcert.theory import lipschitz as _lip
from injcert.theory.lipschitz import product_bound

#: What to use instead of a normalisation layer that reads statistics of ``x``.
NORMALISATION_HINT = ("normalisation by statistics of x has no global Lipschitz bound; use eval BatchNorm "
                      "or no normalisation")
#: What to use instead of dot-product attention.
ATTENTION_HINT = ("dot-product attention has no global Lipschitz bound (Kim et al. 2021); remove it or use "
                  "a Lipschitz attention (e.g. L2 attention) with a registered rule")
_PRODUCT_HINT = ("the product of two x-dependent tensors (e.g. x * x) has no global Lipschitz bound; "
                 "multiply x only by tensors that do not depend on x")


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
