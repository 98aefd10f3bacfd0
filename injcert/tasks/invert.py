r"""Invert an image to its latent noise and back through the probability-flow ODE.

``encode`` integrates $t: 0 \to t_{\max}$ (image $\to$ latent), ``decode`` integrates back. With
``method="reversible"`` (the default) the state lives on a fixed-point integer lattice and
``decode(model, encode(model, x))`` equals ``x`` **bit for bit** for any float input: the input is
split exactly as lattice point + float64 remainder, the remainder is stored in the latent and
added back after decoding (``proofs/03``).

Sampling: ``decode(model, z, steps=..., method=...)`` starts from a plain noise tensor (both states
of a two-state scheme equal). The latent of such a sample is recovered *exactly* by encoding its
full $t = 0$ state (both states, from :func:`decode_full`) with :func:`encode_state`; encoding
only the float image would give a different (nearby) latent, as the second state is lost.

Latent files (format ``injcert-latent/3``) record the integrator settings (method, steps, grid,
$t_{\min}$, $t_{\max}$, schedule, dtype, lattice bits and scale) and ``model_sha256``, the
:func:`~injcert.io.weights_fingerprint` of the model that encoded them. :func:`decode` refuses a
latent made by another model (``force=True``, the CLI's ``--force``, overrides); a latent's
``steps`` above ``limits.steps`` is refused when it is read. Files of format ``/2`` (no
fingerprint) are still read.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import limits
from ..errors import ArgumentError, ArgumentTypeError, CheckpointError, ConfigError, InjcertError, InputError
from ..io import read_safetensors, weights_fingerprint, write_safetensors
from ..theory.flow import margin_products
from ..model.schedule import get_schedule
from ..solvers import GRIDS, SOLVERS, Grid, Solver, SolverState, get_solver, integrate, make_grid, \
    probability_flow_field

__all__ = ["Latent", "encode", "decode", "encode_state", "decode_full", "check_decodable"]


class _Invalid(Exception):
    """A reason why a latent file is not valid (turned into one :class:`CheckpointError` line by
    :meth:`Latent.load`; never escapes it)."""

Cond = Optional[Tuple[Tensor, Tensor]]
_FORMAT = "injcert-latent/3"  # /2: lattice states hold x = alpha * xbar (scale); /3: + model_sha256
_READABLE = ("injcert-latent/2", _FORMAT)
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Latent:
    r"""Everything decoding needs: the end state of the encode integration and how it was made.

    Attributes:
        state: main state at $\varsigma(t_{\max})$: the int64 lattice of $x = $ ``scale``
            $\cdot\,\bar x$ for exact methods, else the float $\bar x$.
        aux: second state of a two-state scheme (int64), else ``None``.
        remainder: float64 rounding remainder of the encoded image (exact methods), else ``None``.
        method, steps, grid, t_min: the integrator, its number of steps and its grid.
        schedule: the schedule's config dict (:meth:`VPSchedule.to_config`).
        dtype: the dtype of the encoded image and of the network evaluations.
        t_max: the final time.
        frac_bits: fractional bits of the lattice (exact methods).
        nfe: network evaluations spent by the encode.
        scale: the lattice holds ``scale * xbar`` ($\alpha_{t_{\max}}$ for the exact methods, else 1).
        model_sha256: :func:`~injcert.io.weights_fingerprint` of the encoding model (``None``: not
            recorded; then no model check is possible).
        execution: what decides the bits of the network's evaluations besides the weights and the
            input: ``{"device": "cpu"|"cuda", "threads": N, "torch": version}`` (``None``: not
            recorded). PyTorch's CPU convolutions are deterministic for a fixed configuration only —
            the summation order depends on the thread count — so :func:`decode` runs an exact
            latent with the recorded thread count and refuses another device type or torch version
            (``force`` overrides); proofs/03 states the assumption.
    """

    state: Tensor
    aux: Optional[Tensor]
    remainder: Optional[Tensor]
    method: str
    steps: int
    grid: str
    schedule: Dict[str, Any]
    dtype: torch.dtype
    t_max: float
    frac_bits: Optional[int] = None
    nfe: int = 0
    t_min: float = 1e-3
    scale: float = 1.0
    model_sha256: Optional[str] = None
    execution: Optional[Dict[str, Any]] = None

    def solver_state(self) -> SolverState:
        return SolverState(x=self.state, aux=self.aux, remainder=self.remainder, dtype=self.dtype,
                           frac_bits=self.frac_bits, scale=self.scale)

    def standardized(self) -> Tensor:
        r"""The $x$-space state at $t_{\max}$ over $\sigma(t_{\max})$ (float64): $\bar x/\varsigma(t_{\max})$, which
        is $N(0, I)$ when the flow Gaussianises (``injcert.metrics.latent_statistics`` summarises it)."""
        xbar = (self.state.to(torch.float64) * 2.0 ** -self.frac_bits if self.state.dtype == torch.int64
                else self.state.to(torch.float64)) / self.scale
        return xbar / float(get_schedule(self.schedule).varsigma(self.t_max))

    def to_tensor(self) -> Tensor:
        r"""The float latent $x_T = \alpha_{t_{\max}}\bar x_T$ (x-space, main state, in :attr:`dtype`)."""
        alpha = float(get_schedule(self.schedule).alpha(self.t_max))
        return (self.solver_state().main_value().to(torch.float64) * alpha).to(self.dtype)

    def _metadata(self) -> Dict[str, Any]:
        return {"format": _FORMAT, "method": self.method, "steps": self.steps, "grid": self.grid,
                "schedule": self.schedule, "dtype": str(self.dtype).replace("torch.", ""), "t_max": self.t_max,
                "frac_bits": self.frac_bits, "nfe": self.nfe, "t_min": self.t_min,
                "scale": self.scale, "model_sha256": self.model_sha256, "execution": self.execution}

    def save(self, path: Union[str, os.PathLike], *, inputs: Any = ()) -> None:
        """Write a safetensors file (metadata JSON in its header) through
        :func:`injcert.io.write_safetensors` (temp file, fsync, rename; a symlink, device node or one of
        ``inputs`` is refused) — the writer of every safetensors file injcert makes."""
        tensors = {"state": self.state}
        if self.aux is not None:
            tensors["aux"] = self.aux
        if self.remainder is not None:
            tensors["remainder"] = self.remainder
        write_safetensors(path, tensors, {"injcert_latent": json.dumps(self._metadata(), allow_nan=False)},
                          inputs=inputs)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Latent":
        """Read a file written by :meth:`save` through :func:`injcert.io.read_safetensors` (header checked
        before any tensor is read, never unpickles) and validate it.

        Raises:
            CheckpointError: missing, corrupt or not an injcert latent (bad method, grid, dtype, shapes,
                non-finite values, ...).
            LimitError: ``steps`` or the number of pixels above :mod:`injcert.limits`.
        """
        label = repr(os.fspath(path))
        found: Dict[str, Any] = {}

        def validate(declared: Dict[str, Any], header: Dict[str, Any]) -> None:
            found["meta"] = _validated_metadata(header, declared, label)

        try:
            tensors, _ = read_safetensors(path, "latent file", validate=validate)
            meta = found["meta"]
            fb = meta["frac_bits"]
            for k, t in tensors.items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise _Invalid(f"tensor {k!r} holds NaN or infinite values")
            if fb is not None and tensors["state"].dtype != torch.int64:
                raise _Invalid(f"a lattice state must be int64, got {tensors['state'].dtype}")
        except _Invalid as exc:
            raise CheckpointError(f"{label} is not a valid injcert latent: {exc}") from None
        return cls(state=tensors["state"], aux=tensors.get("aux"), remainder=tensors.get("remainder"),
                   method=str(meta["method"]), steps=meta["steps"], grid=str(meta["grid"]),
                   schedule=dict(meta["schedule"]), dtype=_DTYPES[meta["dtype"]], t_max=float(meta["t_max"]),
                   frac_bits=None if fb is None else int(fb), nfe=int(meta["nfe"]), t_min=float(meta["t_min"]),
                   scale=float(meta["scale"]), model_sha256=meta.get("model_sha256"), execution=meta.get("execution"))

    def check_execution(self, device: torch.device, *, force: bool = False) -> Optional[int]:
        """Refuse (one :class:`~injcert.errors.InputError` line) to decode an exact latent on another
        device type or torch version than the one that encoded it, unless ``force``; return the
        thread count the decode must use on the CPU (``None``: leave it)."""
        ex = self.execution
        if ex is None or self.frac_bits is None:
            return None
        if not force:
            if ex["device"] != device.type:
                raise InputError(f"this latent was encoded on {ex['device']}, not {device.type}: the network's "
                                 "float evaluations, hence the decoded bits, may differ (--force to decode anyway)")
            if ex["torch"] != torch.__version__:
                raise InputError(f"this latent was encoded with torch {ex['torch']}, this is {torch.__version__}: "
                                 "the decoded bits may differ (--force to decode anyway)")
        return int(ex["threads"]) if device.type == "cpu" else None

    def check_model(self, model: Any, *, force: bool = False) -> None:
        """Raise :class:`~injcert.errors.InputError` when ``model`` is not the model that made this
        latent (its weights' fingerprint differs). ``force=True`` skips the check."""
        if force or self.model_sha256 is None or not isinstance(model, torch.nn.Module):
            return
        fp = weights_fingerprint(model)
        if fp != self.model_sha256:
            raise InputError(f"this latent was made by the model with weights sha256 {self.model_sha256[:12]}…, "
                             f"not by this one ({fp[:12]}…); decoding it would give garbage (--force to do it anyway)")


def _validated_metadata(header: Dict[str, Any], declared: Dict[str, Any], label: str) -> Dict[str, Any]:
    """The latent's metadata, checked against its declared tensors before any tensor is read.

    Raises :class:`_Invalid` (made one :class:`CheckpointError` line by :meth:`Latent.load`) or
    :class:`~injcert.errors.LimitError`."""
    try:
        meta = json.loads(header["injcert_latent"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _Invalid(f"no injcert_latent metadata ({type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise _Invalid("its metadata is not an object")
    if meta.get("format") not in _READABLE:
        raise _Invalid(f"unknown format {meta.get('format')!r}")
    try:
        _check_metadata_fields(meta, label)
    except (KeyError, TypeError, ValueError) as exc:  # a missing key or a value of the wrong type
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _Invalid(f"bad metadata ({type(exc).__name__}: {msg})") from None
    keys = set(declared)
    if not keys <= {"state", "aux", "remainder"} or "state" not in keys:
        raise _Invalid(f"unexpected tensors {sorted(keys)}")
    shape = tuple(declared["state"][1])
    if len(shape) != 4:
        raise _Invalid(f"state must be N×C×H×W, got shape {list(shape)}")
    limits.check("pixels", shape[0] * shape[2] * shape[3], f"pixels of latent {label}")
    for k in keys:
        if tuple(declared[k][1]) != shape:
            raise _Invalid(f"tensor {k!r} has another shape than the state")
    return meta


def _check_metadata_fields(meta: Dict[str, Any], label: str) -> None:
    steps = meta["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise _Invalid(f"steps must be an int >= 1, got {steps!r}")
    limits.check("steps", steps, f"steps of latent {label}")
    method, grid = str(meta["method"]), str(meta["grid"])
    if method not in SOLVERS:
        raise _Invalid(f"unknown method {method!r}")
    if grid not in GRIDS:
        raise _Invalid(f"unknown grid {grid!r}")
    if meta["dtype"] not in ("float32", "float64"):
        raise _Invalid(f"dtype must be float32 or float64, got {meta['dtype']!r}")
    t_max, t_min, scale = float(meta["t_max"]), float(meta["t_min"]), float(meta["scale"])
    if not (0.0 <= t_min < t_max < 1.0) or not (math.isfinite(scale) and scale > 0):
        raise _Invalid(f"bad times or scale (t_min={t_min}, t_max={t_max}, scale={scale})")
    get_schedule(dict(meta["schedule"]))
    fb = meta["frac_bits"]
    if fb is not None and (isinstance(fb, bool) or not isinstance(fb, int) or not 0 < fb < 63):
        raise _Invalid(f"frac_bits must be an int in (0, 63) or null, got {fb!r}")
    fp = meta.get("model_sha256")
    if fp is not None and not (isinstance(fp, str) and len(fp) == 64):
        raise _Invalid(f"model_sha256 must be a hex SHA-256, got {fp!r}")
    ex = meta.get("execution")
    if ex is not None and not (isinstance(ex, dict) and ex.get("device") in ("cpu", "cuda")
                               and isinstance(ex.get("threads"), int) and not isinstance(ex.get("threads"), bool)
                               and 0 < ex["threads"] <= 4096 and isinstance(ex.get("torch"), str)):
        raise _Invalid(f"execution must be {{device, threads, torch}}, got {ex!r}")
    int(meta["nfe"])


def check_decodable(model: Any, method: str, steps: int, grid: str = "geometric", t_min: float = 1e-3) -> None:
    """Raise :class:`~injcert.errors.ConfigError` when a latent encoded with these settings could not
    be decoded: ``fixed_point`` needs $h_n L_n < 1$ at every step (``proofs/02``). Cheap: only the
    certified bounds are evaluated, no network."""
    if str(method) != "fixed_point":
        return
    field = probability_flow_field(model)

    def worst(n: int) -> tuple[int, float]:
        g = make_grid(field.schedule, n, grid, t_min=t_min)
        qs = margin_products(g[1:] - g[:-1], [float(field.lipschitz(float(s))) for s in g[:-1]]).tolist()
        k = max(range(len(qs)), key=lambda i: qs[i])
        return k, qs[k]

    k, q = worst(steps)
    if q < 1:
        return

    hi, cap = steps, limits.get("steps")
    while hi < cap and worst(hi)[1] >= 1:
        hi = min(cap, hi * 2)
    hint = "no step count within the limit steps is enough"
    if worst(hi)[1] < 1:
        lo = max(steps, hi // 2)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if worst(mid)[1] < 1 else (mid, hi)
        hint = f"use --steps {hi} or more"
    raise ConfigError(f"--method fixed_point with {steps} steps cannot be decoded: at step {k} h*L = {q:.4g} >= 1 "
                      f"(the Euler step is not certified invertible); {hint}")


def _check_image(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ArgumentError(f"{what} must be a float N×C×H×W tensor, got "
                         f"{type(x).__name__} {getattr(x, 'shape', '')} {getattr(x, 'dtype', '')}")


def _check_cond(cond: Cond, shape: Tuple[int, ...], dtype: torch.dtype) -> Cond:
    if cond is None:
        return None
    if not (isinstance(cond, (tuple, list)) and len(cond) == 2):
        raise ArgumentTypeError(f"cond must be None or a pair (y, m), got {type(cond).__name__}")
    y, m = cond
    if tuple(y.shape) != tuple(shape) or m.ndim != 4 or m.shape[0] != shape[0] or tuple(m.shape[2:]) != tuple(shape[2:]):
        raise ArgumentError(f"cond shapes y {tuple(y.shape)}, m {tuple(m.shape)} do not match x {tuple(shape)}")
    return (y.to(dtype), m.to(dtype))


def _setup(model: Any, method: Union[str, Solver], steps: int, grid: Union[str, Grid], t_min: float):
    solver = get_solver(method)
    field = probability_flow_field(model)
    g = Grid.resolve(field.schedule, steps, grid, t_min=t_min)
    if g.kind not in GRIDS or g.t_end is not None:
        raise ArgumentError("a latent records its grid by kind: pass a kind, or a Grid made by Grid.make(schedule, "
                            f"steps, kind) that ends at t_max (got kind={g.kind!r}, t_end={g.t_end!r})")
    return solver, field, g


@torch.no_grad()
def encode_state(model: Any, state: Union[Tensor, SolverState], cond: Cond = None, steps: int = 50,
                 method: str = "reversible", grid: Union[str, Grid] = "geometric", *, progress: bool = False) -> Latent:
    r"""Encode a $t = 0$ image or a full $t = 0$ solver state (e.g. from :func:`decode_full`).

    Encoding the full state of a decoded sample recovers its latent exactly (for exact methods).
    """
    if isinstance(state, SolverState):
        shape, dtype = tuple(state.x.shape), state.dtype
    else:
        _check_image(state, "x0")
        shape, dtype = tuple(state.shape), state.dtype
    t_min = grid.t_min if isinstance(grid, Grid) and grid.t_min is not None else 1e-3
    solver, field, g = _setup(model, method, steps, grid, t_min)
    out = integrate(solver, field, g, state, _check_cond(cond, shape, dtype), direction="encode", progress=progress)
    fp = None
    if isinstance(model, torch.nn.Module):
        fp = weights_fingerprint(model)
    dev = out.x.device
    execution = {"device": dev.type, "threads": int(torch.get_num_threads()) if dev.type == "cpu" else 1,
                 "torch": torch.__version__}
    return Latent(state=out.x, aux=out.aux, remainder=out.remainder, method=str(method), steps=int(steps),
                  grid=g.kind, schedule=field.schedule.to_config(), dtype=out.dtype, t_max=float(field.schedule.t_max),
                  frac_bits=out.frac_bits, nfe=out.nfe, scale=out.scale, model_sha256=fp, execution=execution,
                  t_min=float(t_min))


def encode(model: Any, x0: Tensor, cond: Cond = None, steps: int = 50, method: str = "reversible",
           grid: Union[str, Grid] = "geometric", *, progress: bool = False) -> Latent:
    r"""Integrate the probability-flow ODE from the image ``x0`` ($t = 0$) to $t_{\max}$.

    Arguments:
        model: the $\varepsilon$-network, ``model(x, t, y=None, m=None)``, with a ``schedule``.
        x0: images, N×C×H×W, float32 or float64 (the network runs in this dtype).
        cond: ``(y, m)`` observation and corruption map, or ``None`` (unconditional).
        steps: number of integration steps (one network evaluation each, plus one).
        method: a name from :data:`injcert.solvers.SOLVERS`.
        grid: ``"geometric"`` in $\varsigma$ (default) or ``"uniform"`` in $t$, or a
            :class:`~injcert.solvers.Grid` of that kind (``Grid.make(schedule, steps, kind, t_min)``).
        progress: show a tqdm progress bar.

    Returns:
        A :class:`Latent` (``.to_tensor()`` is the float noise $x_T$, ``.nfe`` the cost).

    Raises:
        ArgumentError: bad shapes, an unknown method or grid.
        OverflowError: the lattice state left its range (exact methods).
    """
    _check_image(x0, "x0")
    return encode_state(model, x0, cond, steps, method, grid, progress=progress)


@torch.no_grad()
def decode_full(model: Any, latent: Union[Latent, Tensor], cond: Cond = None, *, steps: Optional[int] = None,
                method: Optional[str] = None, grid: Optional[str] = None, progress: bool = False,
                force: bool = False) -> SolverState:
    """Like :func:`decode` but returns the full $t = 0$ :class:`SolverState` (both states, ``nfe``,
    ``fixed_point``'s certified ``error_bound``); :func:`encode_state` encodes it back exactly."""
    if isinstance(latent, Latent):
        latent.check_model(model, force=force)
        for name, given, stored in (("steps", steps, latent.steps), ("method", method, latent.method),
                                    ("grid", grid, latent.grid)):
            if given is not None and given != stored:
                raise ArgumentError(f"{name}={given!r} conflicts with the latent's {name}={stored!r}")
        model_sched = getattr(model, "schedule", None)
        if model_sched is not None and model_sched.to_config() != latent.schedule:
            raise InputError(f"the model's schedule {model_sched.to_config()} differs from the latent's {latent.schedule}")
        solver, field, g = _setup(model, latent.method, latent.steps, latent.grid, latent.t_min)
        start: Union[Tensor, SolverState] = latent.solver_state()
        shape, dtype = tuple(latent.state.shape), latent.dtype
        params = [p for p in model.parameters()] if isinstance(model, torch.nn.Module) else []
        threads = latent.check_execution(params[0].device if params else latent.state.device, force=force)
        if threads is not None and threads != torch.get_num_threads():
            before = torch.get_num_threads()
            torch.set_num_threads(threads)  # the encode's summation order (module docstring of Latent)
            try:
                return integrate(solver, field, g, start, _check_cond(cond, shape, dtype), direction="decode",
                                 progress=progress)
            finally:
                torch.set_num_threads(before)
    else:
        _check_image(latent, "z")
        solver, field, g = _setup(model, method or "reversible", 50 if steps is None else steps,
                                  grid or "geometric", 1e-3)
        alpha = float(field.schedule.alpha(field.schedule.t_max))
        start = (latent.to(torch.float64) / alpha).to(latent.dtype)
        shape, dtype = tuple(latent.shape), latent.dtype
    return integrate(solver, field, g, start, _check_cond(cond, shape, dtype), direction="decode", progress=progress)


def decode(model: Any, latent: Union[Latent, Tensor], cond: Cond = None, *, steps: Optional[int] = None,
           method: Optional[str] = None, grid: Optional[str] = None, progress: bool = False,
           force: bool = False) -> Tensor:
    r"""Integrate from $t_{\max}$ back to the image ($t = 0$).

    Arguments:
        model: the $\varepsilon$-network (same schedule as at encode time).
        latent: a :class:`Latent` (steps, method and grid come from it; passing different ones is an
            error), or a plain noise tensor $x_T$ to *sample* (``steps`` default 50, ``method``
            default ``"reversible"``, ``grid`` default ``"geometric"``; two states start equal).
        cond: ``(y, m)`` or ``None``.
        force: decode a :class:`Latent` even if ``model`` is not the model that encoded it.

    Returns:
        The image in the latent's dtype; for exact methods ``decode(model, encode(model, x)) == x``.

    Raises:
        InputError: the latent records another model's fingerprint (and not ``force``).
        ArgumentError: conflicting options or bad shapes.
        InputError: the model's schedule is not the latent's.
        NonConvergenceError: ``fixed_point`` could not certify a step.
    """
    return decode_full(model, latent, cond, steps=steps, method=method, grid=grid, progress=progress,
                       force=force).value()
