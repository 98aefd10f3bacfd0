"""Resource limits checked *before* anything is allocated.

A small input can ask for a huge computation: a 186 KB PNG of 8000×8000 pixels, an 88 KB
checkpoint whose config declares ``base_channels=1500``, a latent with ``steps=10**9``,
``--samples 1e9``, ``batch_size=1e9``. Each such request is compared with a documented limit
first and refused with one :class:`~injcert.errors.LimitError` line that says how to raise it.

============  ===============  ==========================  =========================================
name          default          environment variable        what it bounds
============  ===============  ==========================  =========================================
pixels        16 777 216       ``INJCERT_MAX_PIXELS``      H×W of an input image (4096²), read from
                                                           the file header before decoding
params        268 435 456      ``INJCERT_MAX_PARAMS``      numbers stored in a checkpoint or state
                                                           (2²⁸: 1 GiB of float32)
steps         10 000           ``INJCERT_MAX_STEPS``       integration steps (``--steps``, a latent's
                                                           steps, certify/bench/demo steps)
samples       10 000           ``INJCERT_MAX_SAMPLES``     ``certify --samples``
batch_size    4 096            ``INJCERT_MAX_BATCH_SIZE``  the training batch
============  ===============  ==========================  =========================================

Every command takes ``--limit NAME=VALUE`` (repeatable) to raise (or lower) a limit for one run;
the environment variable does the same for every run. A checkpoint's config is also checked
against the tensors it stores: building the model may not allocate much more than the file holds
(:func:`injcert.io.load_checkpoint`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict

from .errors import ConfigError, LimitError

__all__ = ["DEFAULTS", "get", "set_limit", "check", "parse_assignment", "reset"]

DEFAULTS: Dict[str, int] = {
    "pixels": 4096 * 4096,
    "params": 2**28,
    "steps": 10_000,
    "samples": 10_000,
    "batch_size": 4096,
}

_overrides: Dict[str, int] = {}


def _env_name(name: str) -> str:
    return f"INJCERT_MAX_{name.upper()}"


def _parse(name: str, text: Any, source: str) -> int:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"limit {name} from {source} must be a number, got {text!r}") from None
    if not math.isfinite(v) or v < 0 or v != int(v):
        raise ConfigError(f"limit {name} from {source} must be a whole number >= 0, got {text!r}")
    return int(v)


def get(name: str) -> int:
    """The limit in force: ``--limit`` override, else ``INJCERT_MAX_<NAME>``, else the default."""
    if name not in DEFAULTS:
        raise ConfigError(f"unknown limit {name!r}; known: {sorted(DEFAULTS)}")
    if name in _overrides:
        return _overrides[name]
    env = os.environ.get(_env_name(name))
    if env is not None and env.strip():
        return _parse(name, env.strip(), _env_name(name))
    return DEFAULTS[name]


def set_limit(name: str, value: Any) -> None:
    """Override limit ``name`` for this process (what ``--limit NAME=VALUE`` does)."""
    if name not in DEFAULTS:
        raise ConfigError(f"unknown limit {name!r}; known: {sorted(DEFAULTS)}")
    _overrides[name] = _parse(name, value, "--limit")


def reset() -> None:
    """Forget every override (tests)."""
    _overrides.clear()


def parse_assignment(text: str) -> tuple[str, int]:
    """``"steps=20000"`` → ``("steps", 20000)``; a bad form raises :class:`ConfigError`."""
    name, sep, value = str(text).partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in DEFAULTS:
        raise ConfigError(f"--limit wants NAME=VALUE with NAME one of {sorted(DEFAULTS)}, got {text!r}")
    return name, _parse(name, value.strip(), "--limit")


def check(name: str, value: Any, what: str) -> None:
    """Raise :class:`LimitError` when ``value`` exceeds limit ``name`` (``what`` names the request)."""
    limit = get(name)
    try:
        too_big = float(value) > limit
    except (TypeError, ValueError, OverflowError):
        too_big = True
    if too_big:
        raise LimitError(f"{what} = {value} exceeds the limit {name} = {limit}; raise it with "
                         f"--limit {name}=N or {_env_name(name)}=N")
