"""Assertions for users' CI: bounds are sound, round trips are exact, checkpoints certify.

Each raises :class:`AssertionError` with a message that says what failed and by how much, and
returns the numbers it compared when it passes.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

import injcert  # the public API, looked up at call time (injcert imports this package last)

__all__ = ["assert_bound_sound", "assert_round_trip_exact", "assert_certified", "exact_jacobian_norm"]


def exact_jacobian_norm(fn: Any, x: Tensor) -> float:
    r"""$\max_i \|J_{fn}(x_i)\|_2$ over a batch, from dense float64 Jacobians and their SVD.

    For a linear map this is the operator norm; for a nonlinear one a lower bound on the
    Lipschitz constant (attained at the points ``x``).
    """
    best = 0.0
    for i in range(x.shape[0]):
        xi = x[i : i + 1].detach().to(torch.float64)
        shape = xi.shape

        def flat(v: Tensor) -> Tensor:
            return fn(v.view(shape)).reshape(-1)

        jac = torch.func.jacrev(flat)(xi.reshape(-1)).detach()
        best = max(best, float(torch.linalg.matrix_norm(jac, ord=2)))
    return best


def _linear_part(layer: nn.Module) -> Any:
    params = {k: v.detach() for k, v in layer.named_parameters()}
    if "bias" in params and params["bias"] is not None:
        params["bias"] = torch.zeros_like(params["bias"])
    buffers = {k: v.detach() for k, v in layer.named_buffers()}

    def fn(x: Tensor) -> Tensor:
        return torch.func.functional_call(layer, (params, buffers), (x,))

    return fn


def _to_float64_keeping_complex(module: nn.Module) -> nn.Module:
    """``module`` with real floating tensors cast to float64 and complex ones to complex128 (in place)."""

    def cast(t: Tensor) -> Tensor:
        if t.is_complex():
            return t.to(torch.complex128)
        if t.is_floating_point():
            return t.to(torch.float64)
        return t

    return module._apply(cast)


def assert_bound_sound(layer_or_net: nn.Module, input_shape: Sequence[int], *, points: int = 3,
                       slack: float = 1e-9, size_independent: bool = False, seed: int = 0) -> tuple[float, float]:
    r"""Assert that injcert's certified bound is $\ge$ the exact Jacobian norm (up to ``slack``).

    For ``nn.Linear``/``nn.Conv2d``/``nn.ConvTranspose2d`` the truth is the exact operator norm
    (bias removed; the map is linear, so one point suffices); for any other module it is the largest
    exact Jacobian norm at ``points`` random inputs in $[-1, 1]$ plus the origin — a lower bound on
    the Lipschitz constant, so the comparison can only refute.

    No cast hides a failure: the bound is computed on a copy of the module **in its own dtypes**
    (the module that runs — e.g. a float32 BatchNorm's float32 coefficients, a complex weight,
    which is refused), and the truth on a float64 copy made by casting only real floating tensors
    (complex ones become complex128; ``Module.to(torch.float64)`` would silently drop their
    imaginary parts and certify ``1j * I`` with the bound 0 against a truth of 0).

    Arguments:
        layer_or_net: the module (its Lipschitz rules must exist).
        input_shape: the input shape without the batch dimension, e.g. ``(C, H, W)``.
        points: random points for nonlinear modules.
        slack: relative slack granted to rounding: passes iff ``truth <= bound * (1 + slack)``.
        size_independent: check the size-independent bound instead.
        seed: seed of the points.

    Returns:
        ``(bound, truth)``.

    Raises:
        AssertionError: the bound is smaller than the truth.
    """
    import copy

    native = copy.deepcopy(layer_or_net).eval()
    for p in native.parameters():
        p.requires_grad_(False)
    bound = float(injcert.lipschitz_bound(native, tuple(input_shape), size_independent=size_independent).value)
    module = _to_float64_keeping_complex(copy.deepcopy(native))
    shape = (1, *(int(v) for v in input_shape))
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        truth = exact_jacobian_norm(_linear_part(module), torch.zeros(shape, dtype=torch.float64))
    else:
        g = torch.Generator().manual_seed(seed)
        xs = torch.cat([torch.zeros(shape, dtype=torch.float64),
                        torch.rand((points, *shape[1:]), generator=g, dtype=torch.float64) * 2 - 1])
        truth = exact_jacobian_norm(module, xs)
    if not truth <= bound * (1.0 + slack):
        raise AssertionError(
            f"unsound bound for {type(layer_or_net).__name__} on input {tuple(input_shape)}: certified {bound!r} "
            f"< exact Jacobian norm {truth!r} (by {truth - bound:.3e}, {100 * (truth / bound - 1) if bound > 0 else math.inf:.3g}%)"
        )
    return bound, truth


def assert_round_trip_exact(model: Any, x: Tensor, steps: int = 20, method: str = "reversible",
                            cond: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
    """Assert ``decode(model, encode(model, x)) == x`` bit for bit; returns the latent tensor.

    Raises:
        AssertionError: some element differs (the message gives how many and the largest error).
    """
    with torch.no_grad():
        latent = injcert.encode(model, x, cond, steps=steps, method=method)
        back = injcert.decode(model, latent, cond)
    if not torch.equal(back, x):
        diff = (back.to(torch.float64) - x.to(torch.float64)).abs()
        raise AssertionError(
            f"{method} round trip is not bit-exact: {int((diff > 0).sum())} of {diff.numel()} elements differ, "
            f"max |error| {float(diff.max()):.3e} (steps={steps}, dtype={x.dtype})"
        )
    return latent.to_tensor()


def assert_certified(checkpoint: Union[str, "os.PathLike[str]", nn.Module], **kwargs: Any) -> Any:
    """Assert that :func:`injcert.certify` passes; returns the :class:`~injcert.certify.Certificate`.

    Arguments:
        checkpoint: a checkpoint path or a model.
        **kwargs: :class:`~injcert.certify.CertifyConfig` fields (``steps=20``, ``samples=4``, ...).

    Raises:
        AssertionError: listing every failing property with its summary (soundness failures first).
    """
    cert = injcert.certify(checkpoint, **kwargs)
    if cert.verdict != "PASS":
        fails = sorted(cert.failures, key=lambda p: not p.soundness_failure)
        lines = [f"  - {p.name}{' (SOUNDNESS FAILURE)' if p.soundness_failure else ''}: {p.summary}" for p in fails]
        raise AssertionError(f"certificate FAILED for {checkpoint!s} ({len(fails)} properties):\n" + "\n".join(lines))
    return cert
