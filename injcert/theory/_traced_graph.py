"""Tracing for :mod:`injcert.theory.traced`: the fx tracer that keeps ruled modules as leaves, the
recorder of every node's shape and constant values, and the names of a node (op, module path, source
line) that its refusals print."""

from __future__ import annotations

import inspect
import operator
import re
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from injcert.errors import ArgumentError, UnsupportedModuleError
from injcert.theory._rules import _has_rule_class
from injcert.theory._traced_ops import _m

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


#: This package's tracing files: their frames (``_Proxy.__iadd__``, ...) are not the user's source line.
_OWN_FILES = ("traced.py", "_traced_graph.py", "_traced_rules.py", "_traced_ops.py")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def _source_line(node: fx.Node) -> str:
    st = node.stack_trace or node.meta.get("stack_trace") or ""
    frames = [f for f in _FRAME.findall(st) if "/torch/" not in f[0] and not f[0].endswith(_OWN_FILES)]
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
