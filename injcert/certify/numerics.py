r"""What the checks evaluate: float64 copies of the network, held-out inputs with random
conditions, and the flows run through :func:`injcert.solvers.integrate`.

The empirical checks run in **float64** on a copy of the network (``requires_grad`` off, so
:class:`~injcert.model.layers.LipConv2d` uses its cached effective weight), on held-out image
patches (:data:`injcert.data.images.HELDOUT_IMAGES`) with random times and random corruptions as
conditions. The float64 copy is a (very slightly) different function from the shipped float32
network — its normalised weights are recomputed in float64 — so the comparisons use the certified
bound of *that* copy, $L_{64}$, reported next to $L$.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..data.corruptions import corrupt_batch
from ..registry import frozen_copy
from ..data.images import PatchDataset
from ..solvers import get_solver, integrate, make_grid, probability_flow_field

__all__ = [
    "float64_copy",
    "frozen",
    "model_dtype",
    "channels_of",
    "heldout_patches",
    "random_conditions",
    "norms",
    "perturb",
    "round_trip",
    "euler_flow",
    "ddim_decode",
    "dense_jacobian",
]

Cond = Optional[tuple[Tensor, Tensor]]


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` with gradients off (cached effective weights), in eval mode.

    A ``torch.export`` graph inside it (a ``.pt2`` program) fixed its dtype when it was exported: its
    floating dtype arguments become float64 and its dtype assertions go, as ``.double()`` does to an
    eager module (:func:`_graph_to_float64`).
    """
    m = frozen_copy(model, torch.float64)
    for sub in m.modules():
        if isinstance(sub, torch.fx.GraphModule):
            _graph_to_float64(sub)
    return m


_LOW_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _graph_to_float64(gm: "torch.fx.GraphModule") -> None:
    """Make a graph compute in float64: every float32/16/bfloat16 dtype argument becomes float64 and the
    ``aten._assert_tensor_metadata`` checks (assertions on the exported dtype, no value) are removed."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if str(node.target) == "aten._assert_tensor_metadata.default" and not node.users:
            gm.graph.erase_node(node)
            changed = True
            continue
        def widen(v):  # noqa: E306
            return torch.float64 if isinstance(v, torch.dtype) and v in _LOW_FLOATS else v
        args = torch.fx.node.map_aggregate(node.args, widen)
        kwargs = torch.fx.node.map_aggregate(node.kwargs, widen)
        if args != node.args or kwargs != node.kwargs:
            node.args, node.kwargs = args, kwargs
            changed = True
    if changed:
        gm.recompile()


def frozen(model: nn.Module) -> nn.Module:
    """``model`` itself if no parameter needs grad, else a copy with gradients off."""
    if not any(p.requires_grad for p in model.parameters()):
        return model
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first parameter (``float32`` when it has no floating parameter)."""
    p = next(iter(model.parameters()), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


def channels_of(model: nn.Module) -> int:
    """The number of image channels the model takes (``in_channels``, its config's, else 3)."""
    c = getattr(model, "in_channels", None)
    if c is None and isinstance(getattr(model, "config", None), dict):
        c = model.config.get("in_channels")
    return int(c) if c else 3


def heldout_patches(n: int, channels: int, size: int, seed: int, dtype: torch.dtype,
                    device: torch.device) -> Tensor:
    """``n`` patches ``channels×size×size`` of the held-out images (deterministic in ``seed``).

    The images are grey (1) or RGB (3); any other channel count (a user model's) takes the RGB
    patches' channels in turn, channel ``c`` being RGB channel ``c mod 3``."""
    if channels in (1, 3):
        ds = PatchDataset(patch_size=size, channels=channels, length=n, seed=seed, split="heldout")
        return torch.stack([ds[i] for i in range(n)]).to(device=device, dtype=dtype)
    rgb = heldout_patches(n, 3, size, seed, dtype, device)
    return rgb[:, [c % 3 for c in range(int(channels))]].contiguous()


def random_conditions(x: Tensor, seed: int, t_max: float, p_uncond: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Random times ``t ~ U(0, t_max)`` and random corruptions ``(y, m)`` of ``x`` (same device/dtype)."""
    g = torch.Generator().manual_seed(int(seed) + 7919)
    t = torch.rand(x.shape[0], generator=g, dtype=torch.float64) * float(t_max)
    y, m = corrupt_batch(x.detach().cpu().to(torch.float64), g, p_uncond)
    return (t.to(device=x.device, dtype=x.dtype), y.to(device=x.device, dtype=x.dtype),
            m.to(device=x.device, dtype=x.dtype))


def norms(v: Tensor) -> Tensor:
    """The Euclidean norm of every example of the batch ``v``."""
    return v.flatten(1).norm(dim=1)


def perturb(x: Tensor, seed: int, size: float) -> Tensor:
    """``x`` plus a random direction of norm ``size * max(|x|, 1)`` per example (seed ``seed + 13``)."""
    g = torch.Generator().manual_seed(seed + 13)
    d = torch.randn(x.shape, generator=g, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    d = d / norms(d).view(-1, 1, 1, 1) * norms(x).clamp_min(1.0).view(-1, 1, 1, 1) * size
    return x + d


def round_trip(model: nn.Module, x: Tensor, cond: Cond, schedule: Any, steps: int,
               method: str, grid_kind: str = "geometric", **solver_options: Any) -> tuple[Tensor, Any, Any]:
    """``(x_back, encoded_state, decoded_state)`` of an encode/decode round trip with ``method``."""
    solver = get_solver(method, **solver_options)
    field = probability_flow_field(model, schedule)
    grid = make_grid(schedule, steps, grid_kind)
    with torch.no_grad():
        enc = solver.encode(field, x, grid, cond)
        dec = solver.decode(field, enc, grid, cond)
    return dec.value(), enc, dec


def euler_flow(model: nn.Module, x: Tensor, cond: Cond, schedule: Any, grid: list[float],
               keep: Optional[list] = None) -> Tensor:
    r"""The discrete Euler/DDIM encode map $\bar x_0 \mapsto \bar x_N$ (in $\bar x$ coordinates): the
    ``ddim`` solver run by :func:`injcert.solvers.integrate` (``keep`` receives its states)."""
    with torch.no_grad():
        return integrate("ddim", probability_flow_field(model, schedule), grid, x, cond, direction="encode",
                         keep=keep).x


def ddim_decode(model: nn.Module, z: Tensor, cond: Cond, schedule: Any, grid: list[float]) -> Tensor:
    """Naive DDIM inversion: the ``ddim`` solver run backwards from ``z`` (nothing certifies it)."""
    with torch.no_grad():
        return integrate("ddim", probability_flow_field(model, schedule), grid, z, cond, direction="decode").x


def keep_condition_term(model: Any, cond: Any) -> None:
    """Compute a model's condition-only term $R(c)$ (:meth:`~injcert.model.unet.CondUNet.anchor`) for
    ``cond = (y, m)`` once, outside any ``torch.func`` transform, so that the Jacobians in $x$ taken
    next reuse it: one computed inside a transform belongs to it and is not kept, and a restorer
    averaged over the eight symmetries of the square costs eight passes each time. Needed where no
    plain evaluation with the same condition comes first (an integration such as
    :func:`euler_flow` leaves it kept). A model without a restorer (a user's network) has nothing to keep."""
    if cond is None or getattr(model, "restorer", None) is None or not callable(getattr(model, "anchor", None)):
        return
    with torch.no_grad():
        model.anchor(*cond)


def dense_jacobian(f: Any, x: Tensor) -> Tensor:
    """The dense Jacobian ``(d, d)`` of ``f`` at the single example ``x`` (shape ``1×C×H×W``).

    Reverse mode (``torch.func.jacrev``, vmapped vjps): for these square maps it is about twice
    as fast as :func:`injcert.theory.logdet.per_example_jacobian`'s forward mode on CPU.
    """
    shape = x.shape

    def flat(v: Tensor) -> Tensor:
        return f(v.view(shape)).reshape(-1)

    return torch.func.jacrev(flat)(x.reshape(-1))
