"""The model registry: which class a checkpoint's model name builds (:func:`register_model`), and
what is checked of a registered model's weights (:func:`weights_fingerprint`, :func:`check_finite`).
Re-exported by :mod:`injcert.io`, which saves and loads the registered models."""

from __future__ import annotations

import copy
import hashlib
from typing import Any, Callable, Optional, TypeVar

import torch
from torch import nn

from .errors import ArgumentError, InputError

__all__ = ["register_model", "MODEL_REGISTRY", "weights_fingerprint", "has_nonfinite", "check_finite",
           "check_finite_model"]

MODEL_REGISTRY: dict[str, type] = {}

M = TypeVar("M", bound=type)


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: make a model class loadable by name from checkpoints.

    The class must provide a JSON-able ``config`` property and a ``from_config(cfg)``
    classmethod.
    """

    def deco(cls: M) -> M:
        if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not cls:
            raise ArgumentError(f"model name {name!r} already registered to {MODEL_REGISTRY[name]!r}")
        cls._injcert_model_name = name  # type: ignore[attr-defined]
        MODEL_REGISTRY[name] = cls
        return cls

    return deco


def _ensure_builtin_models() -> None:
    """Import the modules that register injcert's own models (lazily: the registry sits below them)."""
    try:
        import injcert.model.unet  # noqa: F401  # layout: lazy (a plugin: the built-in models register themselves)
    except ImportError:  # pragma: no cover - model package not built yet
        pass


def _unwrap(model: Any) -> Any:
    seen = 0
    while seen < 8 and getattr(type(model), "_injcert_model_name", None) is None:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "model", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
        seen += 1
    return model


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's weights (names, shapes, values; float tensors as float64, so the same
    weights cast to float32 or float64 give the same fingerprint). Wrappers (tiling, DDP) are
    looked through. A restorer evaluated as its symmetry average (``restorer.symmetries`` = 8) adds
    that setting: the same weights then compute another function."""
    m = _unwrap(model)
    h = hashlib.sha256()
    symmetries = getattr(getattr(m, "restorer", None), "symmetries", 1)
    if symmetries != 1:
        h.update(f"restorer.symmetries\0{symmetries}\0".encode())
    for name, t in sorted(m.state_dict().items()):
        t = t.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(torch.float64)
        h.update(f"{name}\0{tuple(t.shape)}\0{'float' if t.is_floating_point() else t.dtype}\0".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def has_nonfinite(model: nn.Module) -> list[str]:
    """Names of the parameters/buffers of ``model`` that contain NaN or infinity."""
    bad = []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def check_finite(model: nn.Module, what: str = "checkpoint") -> None:
    """Raise :class:`~injcert.errors.InputError` when a parameter or buffer is NaN or infinite: such
    a model is unusable (commands that *use* a model, training's ``init``; ``certify`` reports it as
    a failed property instead, through :func:`has_nonfinite`). Wrappers (tiling, DDP) are looked
    through."""
    bad = has_nonfinite(_unwrap(model))
    if bad:
        raise InputError(f"{what} holds NaN or infinite weights ({len(bad)} tensor(s): "
                         f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); it cannot be used")


#: The former name of :func:`check_finite`.
check_finite_model = check_finite


def frozen_copy(module: nn.Module, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A deep copy of ``module`` (cast to ``dtype`` if given) in eval mode with every parameter frozen,
    to bound or evaluate without touching the user's module (a ``torch.export`` module is always in
    inference mode and refuses ``eval()``)."""
    m = copy.deepcopy(module)
    if dtype is not None:
        m = m.to(dtype)
    try:
        m.eval()
    except NotImplementedError:  # a torch.export module is always in inference mode
        pass
    for p in m.parameters():
        p.requires_grad_(False)
    return m
