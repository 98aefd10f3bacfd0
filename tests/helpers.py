"""Helpers shared by the test modules (``from helpers import ...``; pytest puts ``tests/`` on the path).

- the dense-Jacobian oracle: :func:`dense_jacobian`, the matrix, where a test needs its entries;
  for norms the tests use the package's public oracle :func:`injcert.testing.exact_jacobian_norm`
  (the same reverse-mode Jacobian, float64, largest over a batch), and :func:`linear_norm`, the
  exact operator norm of a linear layer from it;
- the small-model builder: :func:`tiny_unet` (a seeded :class:`~injcert.model.unet.CondUNet`,
  :data:`TINY_UNET` with keyword overrides) and :func:`tiny_config` (``configs/tiny.json``);
- :func:`subprocess_env`, the environment of a child ``python -m injcert ...``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from injcert.model.unet import CondUNet
from injcert.testing import exact_jacobian_norm

__all__ = ["ROOT", "TINY_UNET", "dense_jacobian", "linear_norm", "subprocess_env", "tiny_config", "tiny_unet"]

ROOT = Path(__file__).resolve().parents[1]

#: The small U-Net of the tests (the ``model`` of ``configs/tiny.json``, with ``in_channels``).
TINY_UNET: dict[str, Any] = dict(in_channels=3, base_channels=8, channel_mults=[1, 2], blocks_per_level=1,
                                 emb_dim=16, lipschitz_budget=10.0)

_TINY_CONFIG = json.loads((ROOT / "configs" / "tiny.json").read_text())


def tiny_config() -> dict[str, Any]:
    """A fresh (deep) copy of the shipped training config ``configs/tiny.json``."""
    return copy.deepcopy(_TINY_CONFIG)


def subprocess_env() -> dict[str, str]:
    """``os.environ`` for a child process: one BLAS/OpenMP thread, this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def tiny_unet(seed: int = 0, **options: Any) -> CondUNet:
    """``CondUNet(**TINY_UNET | options)`` built right after ``torch.manual_seed(seed)``.

    ``options`` are :class:`~injcert.model.unet.CondUNet` arguments overriding :data:`TINY_UNET`
    (e.g. ``lipschitz_budget=5.0, data_variance=0.25``; ``**tiny_config()["model"]``).
    """
    torch.manual_seed(seed)
    return CondUNet(**{**TINY_UNET, **options})


def dense_jacobian(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """The dense Jacobian ``(fn(x).numel(), x.numel())`` of ``fn`` at ``x``, in ``x``'s dtype.

    ``x`` is one point, the whole tensor (a batch of one for a batch-to-batch ``fn``); reverse
    mode (``torch.func.jacrev`` of the flattened map), detached. For its largest singular value
    in float64 over a batch of points use :func:`exact_jacobian_norm`.
    """
    shape = x.shape

    def flat(v: Tensor) -> Tensor:
        return fn(v.view(shape)).reshape(-1)

    return torch.func.jacrev(flat)(x.detach().reshape(-1)).detach()


def linear_norm(layer: nn.Module, shape: tuple) -> float:
    """The exact operator norm of ``layer``'s linear part (bias set to 0) on inputs of ``shape``.

    ``shape`` excludes the batch dimension. The layer is cast to float64 **in place** (``Module.to``),
    as the callers always did: a bound computed after this call sees the float64 layer.
    """
    layer = layer.to(torch.float64)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    if params.get("bias") is not None:
        params["bias"] = torch.zeros_like(params["bias"])

    def fn(z: Tensor) -> Tensor:
        return torch.func.functional_call(layer, params, (z,))

    return exact_jacobian_norm(fn, torch.zeros((1, *shape), dtype=torch.float64))
