r"""What the checks of a certificate share: the model and its float64 copy, the grid, the bound $L$,
the step margins, the held-out batch and the reversible round trip — each computed once, when a
check first asks for it (:class:`CertContext`), also when two checks run side by side in threads
(:func:`~injcert.certify.certificate.certify` does on a CPU with two threads or more).

:func:`load_model` reads the checkpoint (or takes a model object) and describes it; the
certificate's ``model`` entry is that description.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from dataclasses import dataclass, field
import threading
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..io import load_checkpoint
from ..model.schedule import get_schedule
from ..solvers import make_grid
from ..solvers import unit_roundoff
from ..theory.flow import LipschitzProfile, step_margins
from ..theory.flow import steps_needed as _steps_needed
from . import bounds
from .numerics import (channels_of, euler_flow, float64_copy, frozen, heldout_patches, model_dtype, perturb,
                       random_conditions, round_trip)
from .result import CertifyConfig, Property

__all__ = ["CertContext", "Margins", "Heldout", "EulerPairs", "RoundTrip", "load_model", "resolve_device", "steps_needed"]


class Margins(NamedTuple):
    """Per-step numbers of the grid: widths $h_k$, drift constants $L_k$ and margins $q_k = h_kL_k$."""

    h: list[float]
    drift: list[float]
    q: list[float]


class Heldout(NamedTuple):
    """The held-out patches (float64) and their random times and corruptions ``(y, m)``."""

    x: Tensor
    t: Tensor
    y: Tensor
    m: Tensor


class EulerPairs(NamedTuple):
    """Pairs of inputs and their images under the discrete Euler map (float64): the first half
    ``xa`` of the held-out batch, ``xd`` (``xa`` slightly perturbed) and the second half ``xb``
    (``None`` when too few samples), all with ``xa``'s conditions ``cond``; ``fa``, ``fd``, ``fb``
    are their flows."""

    xa: Tensor
    xd: Tensor
    xb: Optional[Tensor]
    cond: tuple[Tensor, Tensor]
    fa: Tensor
    fd: Tensor
    fb: Optional[Tensor]


class RoundTrip(NamedTuple):
    """The reversible round trip in the model's dtype: its input, whether it came back bit for bit,
    the max abs error, and why the state left the int64 lattice (``None`` if it did not)."""

    x: Tensor
    exact: bool
    err: float
    overflow: Optional[str] = None


class cached_property:  # noqa: N801 - a drop-in for functools.cached_property
    """:func:`functools.cached_property` that computes each attribute once per instance even when
    threads ask for it at the same time: one lock per instance and attribute (the attributes depend on
    one another without cycles, so threads waiting on each other's locks cannot deadlock). Python
    3.12 dropped the lock of :func:`functools.cached_property`; without one two checks would both
    compute, say, the Euler flows of the held-out pairs."""

    _guard = threading.Lock()

    def __init__(self, func: Any) -> None:
        self.func, self.__doc__, self.name = func, func.__doc__, func.__name__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, inst: Any, owner: Optional[type] = None) -> Any:
        if inst is None:
            return self
        store = inst.__dict__
        if self.name in store:
            return store[self.name]
        with cached_property._guard:
            lock = store.setdefault(f"_lock_{self.name}", threading.Lock())
        with lock:
            if self.name not in store:
                store[self.name] = self.func(inst)
        return store[self.name]


def steps_needed(lipschitz: Union[float, LipschitzProfile], schedule: Any, grid_kind: str = "geometric",
                 limit: int = 1 << 20) -> Optional[int]:
    """Smallest number of ``grid_kind`` steps with every margin ``h_k L_k < 1`` (``None`` beyond ``limit``)."""
    return _steps_needed(lipschitz, schedule, lambda n: make_grid(schedule, n, grid_kind).tolist(), limit)


@dataclass
class CertContext:
    """The state the checks of one certificate share (each attribute computed once, on first use).

    Attributes:
        model: the network certified (in ``device``, eval mode).
        info: the description of the model (the certificate's ``model`` entry).
        cfg: the options.
        device: where the network runs.
        data: the certificate's ``data`` (arrays behind the figures), written by the checks.
    """

    model: nn.Module
    info: dict[str, Any]
    cfg: CertifyConfig
    device: torch.device
    data: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def schedule(self) -> Any:
        """The model's schedule, ending at ``cfg.t_max`` when that is given."""
        schedule, t_max = self.model.schedule, self.cfg.t_max
        if t_max is None or float(t_max) == float(schedule.t_max):
            return schedule
        return get_schedule(dict(schedule.to_config(), t_max=float(t_max)))

    @cached_property
    def channels(self) -> int:
        return channels_of(self.model)

    @cached_property
    def shape(self) -> tuple[int, int, int]:
        """``(C, patch_size, patch_size)``: the Lipschitz-bound input shape and the patches' shape."""
        return (self.channels, self.cfg.patch_size, self.cfg.patch_size)

    @cached_property
    def grid(self) -> list[float]:
        """The $\\varsigma$ grid $g$ the certificate is about (``cfg.steps`` steps of ``cfg.grid``)."""
        return make_grid(self.schedule, self.cfg.steps, self.cfg.grid).tolist()

    @cached_property
    def grid_t(self) -> list[float]:
        """The times of the grid's left ends (where a noise-adaptive bound is checked)."""
        return [float(self.schedule.t_of_varsigma(torch.tensor(v, dtype=torch.float64))) for v in self.grid[:-1]]

    @cached_property
    def pointwise(self) -> bool:
        """Whether the model's bound holds pointwise in ``t`` (a user model, :class:`injcert.ScoreModel`):
        then it is certified at the grid times only, and the continuous flow is not certified."""
        return bool(getattr(self.model, "lipschitz_pointwise", False))

    @cached_property
    def grid_t_all(self) -> list[float]:
        """The times of every grid point (both ends of every step: where the integrators evaluate)."""
        return [float(self.schedule.t_of_varsigma(torch.tensor(v, dtype=torch.float64))) for v in self.grid]

    @cached_property
    def lipschitz(self) -> tuple[Property, Any]:
        """``(lipschitz_bound entry, L)`` from :func:`~injcert.certify.bounds.certified_lipschitz`."""
        return bounds.certified_lipschitz(self.model, self.shape, self.info.get("lipschitz_budget"),
                                             self.grid_t_all if self.pointwise else self.grid_t)

    @cached_property
    def L(self) -> Union[float, LipschitzProfile, None]:
        """The certified bound: a number, a :class:`LipschitzProfile`, or ``None`` (no bound)."""
        return self.lipschitz[1]

    @property
    def adaptive(self) -> bool:
        """Whether ``L`` is a noise-adaptive profile $t \\mapsto L(t)$."""
        return isinstance(self.L, LipschitzProfile)

    @cached_property
    def margins(self) -> Margins:
        """$(h_k, L_k, q_k)$ on :attr:`grid` with :attr:`L`, for the model as it runs: the field multiplies
        by $\\mathrm{fl}(\\alpha)$ in the model's dtype, so $\\alpha$ is charged $(1 + u)$ (``proofs/08``)."""
        return Margins(*step_margins(self.grid, self.L, self.schedule, alpha_rel=unit_roundoff(self.model)))

    @cached_property
    def steps_needed(self) -> Optional[int]:
        """The steps with every margin below 1 (``cfg.steps`` when the grid already has that)."""
        if max(self.margins.q) >= 1.0:
            if self.pointwise:  # its bounds hold at this grid's times only: another grid is not certified here
                return None
            return steps_needed(self.L, self.schedule, self.cfg.grid)
        return self.cfg.steps

    @cached_property
    def frac_bits(self) -> int:
        """Fractional bits of the reversible lattice for a user model: its own ``frac_bits`` if set, else
        :func:`frac_bits_for` its certified bounds (the shipped models keep ``DEFAULT_FRAC_BITS``)."""
        own = getattr(self.model, "frac_bits", None)
        if own is not None:
            return int(own)
        return frac_bits_for(self.L, self.grid, self.schedule)

    @cached_property
    def model64(self) -> nn.Module:
        """The float64 copy the empirical and log-determinant checks evaluate."""
        return float64_copy(self.model)

    @cached_property
    def model64_cpu(self) -> nn.Module:
        return self.model64 if self.device.type == "cpu" else copy.deepcopy(self.model64).cpu()

    @cached_property
    def L64(self) -> float:
        """$L_{64}$, the certified bound of :attr:`model64` (``L`` if it has no rule)."""
        if self.pointwise:
            return float(self.L64_profile)
        return bounds.float64_bound(self.model64_cpu, self.shape, float(self.L))

    @cached_property
    def L64_profile(self) -> Union[float, LipschitzProfile]:
        """$L_{64}$ as the bound the float64 checks compare to (a profile when ``L`` is one)."""
        if self.pointwise:
            m64, shape = self.model64_cpu, self.shape
            vals = [float(m64.certified_lipschitz_at(t, shape)) for t in self.grid_t_all]
            return bounds.grid_profile(lambda t: m64.certified_lipschitz_at(t, shape), self.grid_t_all, vals)
        return LipschitzProfile(self.model64_cpu.certified_lipschitz_at, self.L64) if self.adaptive else self.L64

    @cached_property
    def margins64(self) -> Margins:
        """$(h_k, L_k, q_k)$ on :attr:`grid` with :attr:`L64_profile`: the constants of :attr:`model64`, the
        network every float64 comparison (empirical, log-determinants) evaluates."""
        return Margins(*step_margins(self.grid, self.L64_profile, self.schedule, alpha_rel=2.0**-53))

    @cached_property
    def heldout(self) -> Heldout:
        """``cfg.samples`` held-out patches (float64, seed ``cfg.seed``) with random conditions."""
        cfg = self.cfg
        x = heldout_patches(cfg.samples, self.channels, cfg.patch_size, cfg.seed, torch.float64, self.device)
        return Heldout(x, *random_conditions(x, cfg.seed, float(self.schedule.t_max)))

    @cached_property
    def euler_pairs(self) -> EulerPairs:
        """The flows of the discrete Euler map of the held-out halves A, B sharing A's conditions:
        $\\varphi(A)$, $\\varphi(A + \\delta)$, $\\varphi(B)$, in one batch."""
        x, _, y, m = self.heldout
        a_n = max(1, x.shape[0] // 2)
        xa, xb = x[:a_n], x[a_n:2 * a_n]
        xd = perturb(xa, self.cfg.seed, self.cfg.perturbation)
        ya, ma = y[:a_n], m[:a_n]
        parts = [xa, xd] + ([xb] if xb.shape[0] == a_n else [])
        reps = len(parts)
        flows = euler_flow(self.model64, torch.cat(parts), (ya.repeat(reps, 1, 1, 1), ma.repeat(reps, 1, 1, 1)),
                           self.schedule, self.grid)
        fb = flows[2 * a_n:] if reps == 3 else None
        return EulerPairs(xa, xd, xb if reps == 3 else None, (ya, ma), flows[:a_n], flows[a_n:2 * a_n], fb)

    @cached_property
    def reversible(self) -> RoundTrip:
        """Bit-exact round trip of the reversible integrator in the model's own dtype.

        On the held-out patches with their corruptions as conditions, or on one random input when
        ``samples == 0``.
        """
        cfg, dt = self.cfg, model_dtype(self.model)
        if cfg.samples > 0:
            held = self.heldout
            x, cond = held.x, (held.y.to(dt), held.m.to(dt))
        else:
            gen = torch.Generator().manual_seed(cfg.seed)
            x = torch.rand((1, *self.shape), generator=gen, dtype=torch.float64).mul(2).sub(1)
            x, cond = x.to(self.device), None
        x = x.to(dt)
        options = {"frac_bits": self.frac_bits} if self.pointwise else {}
        try:
            back, _, _ = round_trip(frozen(self.model), x, cond, self.schedule, cfg.steps, "reversible", cfg.grid,
                                    **options)
        except OverflowError as exc:  # the state left the int64 lattice: Theorem 3's precondition fails
            return RoundTrip(x, False, math.inf, str(exc).splitlines()[0])
        exact = bool(torch.equal(back, x))
        err = float((back.to(torch.float64) - x.to(torch.float64)).abs().max())
        return RoundTrip(x, exact, err)


def frac_bits_for(lipschitz: Any, grid: list[float], schedule: Any, data_bound: float = 4.0) -> int:
    r"""Fractional bits of the reversible lattice from the certified bounds: room for the state to grow.

    The reversible scheme integrates $dx/d\rho = \varepsilon(x) - \sigma x$ over $\rho = \operatorname{asinh}
    \varsigma$, whose Lipschitz constant is at most $L_k + 1$ on step $k$; a crude growth bound of the
    state is $G = \prod_k (1 + 2 h^\rho_k (L_k + 1))$ (two evaluations per step), on top of $|x_0| \le$
    ``data_bound`` (and $|\varepsilon(0)|$, assumed of the same order). The lattice holds $|x| <
    2^{61 - b}$ at $b$ bits, so the rule is $b = \min(40, \max(8, 61 - 4 - \lceil\log_2(\texttt{data\_bound}
    \cdot G)\rceil))$ — the default 40 whenever that fits. This only *chooses a resolution*: the bijection
    holds at every $b$, and a state that still leaves the range is refused and reported as a ``FAIL``.
    """
    from ..solvers import DEFAULT_FRAC_BITS

    log2g = 0.0
    for a, b in zip(grid, grid[1:]):
        lk = float(lipschitz_at_safe(lipschitz, schedule, a))
        h_rho = math.asinh(b) - math.asinh(a)
        log2g += math.log2(1.0 + 2.0 * h_rho * (lk + 1.0))
    need = math.ceil(math.log2(max(data_bound, 1.0)) + log2g)
    return int(min(DEFAULT_FRAC_BITS, max(8, 61 - 4 - need)))


def lipschitz_at_safe(lipschitz: Any, schedule: Any, s: float) -> float:
    """The bound at $\varsigma$ = ``s`` (a number as is; ``inf`` when there is none)."""
    from ..theory.flow import lipschitz_at

    if lipschitz is None:
        return 1e300
    v = lipschitz_at(lipschitz, schedule, s)
    return v if math.isfinite(v) else 1e300


# ----------------------------------------------------------------------------- loading


def resolve_device(device: str) -> torch.device:
    """``torch.device(device)``; :class:`ConfigError` for an unknown name or CUDA without CUDA."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(model_or_path: Any, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The model (from a checkpoint path, or the module itself, in ``device``) and its description."""
    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        model = load_checkpoint(path, device=device)
        info: dict[str, Any] = {"path": str(path), "sha256": _sha256(path)}
    elif isinstance(model_or_path, nn.Module):
        model = model_or_path.to(device).eval()
        info = {"path": getattr(model, "checkpoint_path", None)}
    else:
        raise CheckpointError(
            f"certify needs a checkpoint path or an nn.Module, got {type(model_or_path).__name__}"
        )
    if getattr(model, "schedule", None) is None:
        raise CheckpointError(f"model of type {type(model).__name__} has no `schedule`; cannot certify its flow")
    cfg = getattr(model, "config", None)
    budget = getattr(model, "lipschitz_budget", None)
    info.update(
        {
            "class": type(model).__name__,
            "architecture": getattr(type(model), "_injcert_model_name", None),
            "config": cfg if isinstance(cfg, dict) else None,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "dtype": str(next(iter(model.parameters()), torch.empty(0)).dtype).replace("torch.", ""),
            "lipschitz_budget": None if budget is None else float(budget),
            "schedule": model.schedule.to_config() if hasattr(model.schedule, "to_config") else repr(model.schedule),
            "metadata": getattr(model, "checkpoint_metadata", None),
        }
    )
    return model, info
