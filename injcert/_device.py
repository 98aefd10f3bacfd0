"""The device a command runs on: :func:`check_device` (one line for a device this machine cannot
run on) and :func:`strict_float32` (no TF32 on CUDA). Re-exported by :mod:`injcert.io`."""

from __future__ import annotations

from typing import Any

import torch

from .errors import ConfigError

__all__ = ["check_device", "strict_float32"]


def strict_float32() -> None:
    """Turn TF32 off for CUDA matrix products and cuDNN convolutions (process-wide).

    The certificate charges the network's float32 rounding at unit roundoff $2^{-24}$
    (``proofs/05``); TF32 rounds the inputs of a product to a 10-bit mantissa ($2^{-11}$), which that
    charge does not cover, and PyTorch enables it for cuDNN convolutions by default. Called by
    :func:`check_device` and :func:`load_checkpoint` for a CUDA device; a no-op without CUDA."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def check_device(device: Any) -> torch.device:
    """Parse a device string and check this machine can run on it; one :class:`ConfigError` otherwise.

    Accepted: ``cpu``; ``cuda``/``cuda:N`` where CUDA is available (and ``N`` exists; TF32 is then
    turned off, :func:`strict_float32`); ``mps`` where the MPS backend is available. ``meta`` (no
    data) and every other type are refused.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
        strict_float32()
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device {device!r} requested but the MPS backend is not available on this machine")
        return dev
    raise ConfigError(f"device {device!r} cannot run injcert; use cpu, cuda or cuda:N")
