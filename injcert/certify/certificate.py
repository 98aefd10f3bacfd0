r"""The certificate of a trained score network: what is proven, what is measured, and the verdict.

:func:`certify` takes a checkpoint path (or a model object) and returns a :class:`Certificate`, a
list of :class:`Property` entries, each with a status, its number(s), the bound it is compared to,
and the theorem page (``proofs/NN-*.md``) that makes the number sound. ``proofs/08-certificate.md``
states exactly what a ``PASS`` proves.

Two kinds of entries are never mixed up:

* **certified** entries (``kind="certified"``) are theorems applied to the weights: the Lipschitz
  bound $L$ of $\varepsilon_\theta$ in $x$ (uniform over $t\in[0,t_{\max}]$ and every condition $c$),
  the drift constants $\alpha(\varsigma_k)L$, the Grönwall constants $e^{\pm\Lambda}$ of the exact
  flow, the discrete maps' constants $\prod_k(1\pm h_kL_k)$, the step margins $h_kL_k<1$ and the
  certified log-determinant intervals. Every float is rounded *outwards* (:func:`round_up`).
* **empirical** entries (``kind="empirical"``) are measurements in float64 on held-out image patches.
  They can only *refute*: a measurement that contradicts a certified bound (beyond the explicit
  rounding tolerance :data:`FLOAT64_TOLERANCE`) is a **soundness failure** — status ``FAIL``,
  ``soundness_failure=True``, flagged in every output, exit status 1.

Entries with status ``INFO`` are reported but do not decide the verdict (e.g. naive DDIM
inversion, which nothing certifies); ``SKIPPED`` entries were not evaluated (e.g. after non-finite
weights, where nothing else is evaluated).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, InjcertError, UnsupportedModuleError
from ..theory.flow import LipschitzProfile, discrete_log_constants as _log_products, gronwall_exponent, \
    gronwall_profile, lipschitz_at, lognorm_exponents, step_margins
from ..theory.flow import steps_needed as _steps_needed
from ..theory.rounding import round_down, round_up

__all__ = [
    "PASS",
    "FAIL",
    "INFO",
    "SKIPPED",
    "FLOAT64_TOLERANCE",
    "CertifyConfig",
    "Property",
    "Certificate",
    "certify",
]

PASS, FAIL, INFO, SKIPPED = "PASS", "FAIL", "INFO", "SKIPPED"
STATUSES = (PASS, FAIL, INFO, SKIPPED)
METHODS = ("reversible", "fixed_point", "ddim")

#: Relative tolerance granted to float64 *measurements* before they count as contradicting a
#: certified bound. It covers the rounding of float64 network evaluations and norms (relative
#: error $\lesssim 10^{-13}$ for the depths used here) with a margin of $10^4$.
FLOAT64_TOLERANCE: float = 1e-9

THEOREMS = {
    "finite": "proofs/08-certificate.md",
    "lipschitz": "proofs/05-compositional-lipschitz.md",
    "operator": "proofs/04-operator-norms.md",
    "flow": "proofs/01-flow-stability.md",
    "discrete": "proofs/02-discrete-injectivity.md",
    "reversible": "proofs/03-bit-exact-reversibility.md",
    "logdet": "proofs/06-log-determinants.md",
    "certificate": "proofs/08-certificate.md",
}


def _exp_or_none(v: float) -> Optional[float]:
    """``exp(v)`` when it is a finite float64, else ``None`` (JSON holds the log instead)."""
    if not math.isfinite(v) or v > 709.0:
        return None if v != -math.inf else 0.0
    return math.exp(v)


def _fmt_exp(log_value: float) -> str:
    """``e^{Λ}`` as a readable number even when it overflows float64 (``1.2e+345``)."""
    if log_value == -math.inf:
        return "0"
    if not math.isfinite(log_value):
        return "inf"
    l10 = log_value / math.log(10.0)
    if abs(l10) < 300:
        return f"{math.exp(log_value):.4g}"
    e = math.floor(l10)
    return f"{10 ** (l10 - e):.3f}e{e:+d}"


def steps_needed(lipschitz: Union[float, LipschitzProfile], schedule: Any, grid_kind: str = "geometric",
                 limit: int = 1 << 20) -> Optional[int]:
    """Smallest number of ``grid_kind`` steps with every margin ``h_k L_k < 1`` (``None`` beyond ``limit``)."""
    from ..solvers import make_grid

    return _steps_needed(lipschitz, schedule, lambda n: make_grid(schedule, n, grid_kind).tolist(), limit)


# ----------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class CertifyConfig:
    """Options of :func:`certify` (every field has a default; ``certify(path, steps=20)`` overrides one).

    Attributes:
        steps: number of integrator steps (the grid the certificate is about).
        method: the integrator certified: ``"reversible"`` (bit-exact, default), ``"fixed_point"``
            or ``"ddim"``.
        t_max: end time of the flow; ``None`` takes the model schedule's ``t_max``.
        short_t_max: end time of the shorter range whose (tighter) Grönwall constant is reported.
        grid: kind of $\\varsigma$ grid (see :func:`injcert.solvers.make_grid`).
        device: where the network runs (``"cpu"``, ``"cuda"``, ...).
        samples: number of held-out patches for the empirical checks (0 disables them).
        seed: seed of the patches, times, corruptions and probes.
        patch_size: side of the held-out patches and of the Lipschitz-bound input shape.
        logdet_size: side of the small input on which log-determinants are computed exactly.
        hutchpp_queries: matrix-vector products per step of the Hutch++ trace estimate.
        hutchpp_steps: steps of the (coarser) grid of the Hutch++ trace integral.
        perturbation: relative size of the nearby perturbations in the injectivity check.
        lipschitz_iters: iterations of the empirical Lipschitz lower bound.
        round_trip_steps: step counts of the round-trip-vs-steps study.
        round_trip_study: run that study (the command line does when ``--figures`` is given).
        empirical: run the empirical checks at all.
    """

    steps: int = 50
    method: str = "reversible"
    t_max: Optional[float] = None
    short_t_max: float = 0.5
    grid: str = "geometric"
    device: str = "cpu"
    samples: int = 8
    seed: int = 0
    patch_size: int = 32
    logdet_size: int = 8
    hutchpp_queries: int = 6
    hutchpp_steps: int = 10
    perturbation: float = 1e-3
    lipschitz_iters: int = 8
    round_trip_steps: tuple[int, ...] = (5, 10, 20, 50)
    round_trip_study: bool = False
    empirical: bool = True

    def __post_init__(self) -> None:
        def pos_int(name: str, v: Any, minimum: int = 1) -> None:
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ConfigError(f"{name} must be an int >= {minimum}, got {v!r} of type {type(v).__name__}")

        pos_int("steps", self.steps)
        pos_int("samples", self.samples, 0)
        pos_int("patch_size", self.patch_size, 2)
        pos_int("logdet_size", self.logdet_size, 1)
        pos_int("hutchpp_queries", self.hutchpp_queries, 4)
        pos_int("hutchpp_steps", self.hutchpp_steps)
        pos_int("lipschitz_iters", self.lipschitz_iters, 1)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an int, got {self.seed!r} of type {type(self.seed).__name__}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choices: {list(METHODS)}")
        if self.t_max is not None and not (isinstance(self.t_max, (int, float)) and 0.0 < float(self.t_max) < 1.0):
            raise ConfigError(f"t_max must lie in (0, 1), got {self.t_max!r}")
        if not (isinstance(self.short_t_max, (int, float)) and 0.0 < float(self.short_t_max) < 1.0):
            raise ConfigError(f"short_t_max must lie in (0, 1), got {self.short_t_max!r}")
        if not (isinstance(self.perturbation, (int, float)) and 0.0 < float(self.perturbation) <= 1.0):
            raise ConfigError(f"perturbation must lie in (0, 1], got {self.perturbation!r}")
        for s in self.round_trip_steps:
            pos_int("round_trip_steps[i]", s)

    def replace(self, **changes: Any) -> "CertifyConfig":
        """A copy with some fields changed; unknown names raise :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown certify option(s) {unknown}; known: {sorted(known)}")
        if "round_trip_steps" in changes:
            changes["round_trip_steps"] = tuple(changes["round_trip_steps"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["round_trip_steps"] = list(self.round_trip_steps)
        return d


@dataclass
class Property:
    """One entry of a certificate.

    Attributes:
        name: stable identifier (``lipschitz_bound``, ``flow_bilipschitz``, ...).
        status: ``PASS``, ``FAIL``, ``INFO`` (reported, not part of the verdict) or ``SKIPPED``.
        kind: ``"certified"`` (a theorem applied to the weights) or ``"empirical"`` (a measurement,
            which can only refute).
        value: the main number (``None`` if not computed or not a finite float).
        bound: what ``value`` is compared to (``None`` if nothing).
        theorem: the proof page that makes the entry sound.
        summary: one line for humans (says by how much a failing entry fails).
        details: further numbers (JSON-able).
        soundness_failure: a measurement contradicts a certified bound — the library is wrong,
            not the model.
    """

    name: str
    status: str
    kind: str
    value: Optional[float]
    bound: Optional[float]
    theorem: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    soundness_failure: bool = False

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.soundness_failure:
            self.status = FAIL

    @property
    def passed(self) -> bool:
        return self.status != FAIL

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "kind": self.kind,
            "value": _json_number(self.value),
            "bound": _json_number(self.bound),
            "theorem": self.theorem,
            "summary": self.summary,
            "soundness_failure": bool(self.soundness_failure),
            "details": _jsonable(self.details),
        }


def _version() -> str:
    try:
        from .. import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - package being re-initialised
        try:
            from importlib.metadata import version

            return version("injcert")
        except Exception:
            return "unknown"


def _json_number(v: Any) -> Optional[float]:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _jsonable(obj: Any) -> Any:
    """Recursively make ``obj`` JSON-able; non-finite floats become strings ``"inf"``/``"-inf"``/``"nan"``."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else ("inf" if obj > 0 else "-inf" if obj < 0 else "nan")
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return _jsonable(obj.item())
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    return str(obj)


@dataclass
class Certificate:
    """The result of :func:`certify`.

    Attributes:
        properties: the entries, in a fixed order.
        model: what was certified (class, registered name, config, path, sha256, budget, ...).
        config: the :class:`CertifyConfig` used.
        timings: seconds per phase.
        data: arrays behind the figures (per-layer bounds, margins, log-dets, round trips).
    """

    properties: list[Property]
    model: dict[str, Any]
    config: CertifyConfig
    timings: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """``"PASS"`` if no property has status ``FAIL``, else ``"FAIL"``."""
        return FAIL if any(p.status == FAIL for p in self.properties) else PASS

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    @property
    def failures(self) -> list[Property]:
        return [p for p in self.properties if p.status == FAIL]

    @property
    def soundness_failures(self) -> list[Property]:
        return [p for p in self.properties if p.soundness_failure]

    @property
    def exit_code(self) -> int:
        """0 when every property holds, 1 otherwise (2 is for unusable input, raised earlier)."""
        return 0 if self.passed else 1

    def __getitem__(self, name: str) -> Property:
        for p in self.properties:
            if p.name == name:
                return p
        raise KeyError(f"no property {name!r}; have {[p.name for p in self.properties]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "injcert_version": _version(),
            "verdict": self.verdict,
            "soundness_failure": bool(self.soundness_failures),
            "failed": [p.name for p in self.failures],
            "model": _jsonable(self.model),
            "config": _jsonable(self.config.to_dict()),
            "properties": [p.to_dict() for p in self.properties],
            "timings": _jsonable({k: round(v, 4) for k, v in self.timings.items()}),
        }

    def to_json(self, path: Union[str, os.PathLike[str], None] = None, *, indent: int = 2) -> str:
        """The report as JSON (``schema.json``); written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"
        if path is not None:
            from ..io import atomic_write_bytes

            atomic_write_bytes(path, text.encode())
        return text

    def to_markdown(self, path: Union[str, os.PathLike[str], None] = None) -> str:
        """The report as Markdown, citing the theorem page of every property (written to ``path``
        when given, with the links to the proof pages relative to its folder)."""
        from .report import render_markdown

        text = render_markdown(self, base=None if path is None else Path(path).resolve().parent)
        if path is not None:
            from ..io import atomic_write_bytes

            atomic_write_bytes(path, text.encode())
        return text

    def table(self) -> str:
        """The plain-text table printed by ``python -m injcert certify``."""
        from .report import render_table

        return render_table(self)

    def figures(self, folder: Union[str, os.PathLike[str]]) -> list[Path]:
        """Write the figures (PNG) into ``folder``; returns their paths."""
        from .report import write_figures

        return write_figures(self, folder)

    def __str__(self) -> str:
        return self.table()


# ----------------------------------------------------------------------------- loading


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def _load(model_or_path: Any, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    from ..io import load_checkpoint

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


def _channels(model: nn.Module) -> int:
    c = getattr(model, "in_channels", None)
    if c is None and isinstance(getattr(model, "config", None), dict):
        c = model.config.get("in_channels")
    return int(c) if c else 3


def _with_t_max(schedule: Any, t_max: Optional[float]) -> Any:
    if t_max is None or float(t_max) == float(schedule.t_max):
        return schedule
    from ..model.schedule import get_schedule

    return get_schedule(dict(schedule.to_config(), t_max=float(t_max)))


#: Phases of :func:`certify` (keys of ``Certificate.timings``) and their progress-bar labels.
_PHASES = {"load": "load checkpoint", "lipschitz": "Lipschitz bound", "flow": "flow constants",
           "integrator": "integrator", "logdet": "log-determinants", "empirical": "empirical checks"}


class _Timer:
    def __init__(self, timings: dict[str, float], name: str, stages: Any = None) -> None:
        self.timings, self.name, self.stages = timings, name, stages

    def __enter__(self) -> "_Timer":
        if self.stages is not None:
            self.stages._bar.set_postfix_str(_PHASES.get(self.name, self.name))
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0
        if self.stages is not None:
            self.stages._bar.update(1)


# ----------------------------------------------------------------------------- certify


def certify(model_or_path: Union[str, os.PathLike[str], nn.Module], config: Optional[CertifyConfig] = None,
            *, progress: bool = False, **options: Any) -> Certificate:
    r"""Certify a checkpoint (or model): Lipschitz bound, injectivity and stability, log-determinants.

    Arguments:
        model_or_path: a checkpoint file written by :func:`injcert.save_checkpoint`, or a model
            with the signature ``model(x, t, y=None, m=None)`` and a ``schedule``.
        config: a :class:`CertifyConfig`; default ``CertifyConfig()``.
        progress: show a progress bar over the phases on stderr (``python -m injcert certify``
            does unless ``--quiet``).
        **options: fields of :class:`CertifyConfig` overriding ``config`` (``steps=20``, ...).

    Returns:
        The :class:`Certificate` (``.verdict``, ``.properties``, ``.to_json()``, ``.to_markdown()``).

    Raises:
        CheckpointError: the checkpoint is missing, truncated, corrupt, a pickle, of an unknown
            architecture or config (unusable input; the CLI exits with status 2).
        ConfigError: an unknown option or a bad value.
    """
    cfg = (config or CertifyConfig()).replace(**options) if options else (config or CertifyConfig())
    if not isinstance(cfg, CertifyConfig):
        raise ConfigError(f"config must be a CertifyConfig, got {type(cfg).__name__}")
    from .._progress import Stages

    phases = [k for k in _PHASES if k != "empirical" or (cfg.empirical and cfg.samples > 0)]
    stages = Stages("certify", phases, enabled=progress)
    try:
        return _certify(model_or_path, cfg, stages)
    finally:
        stages.close()


def _certify(model_or_path: Union[str, os.PathLike[str], nn.Module], cfg: CertifyConfig, stages: Any) -> Certificate:
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    device = _resolve_device(cfg.device)
    with _Timer(timings, "load", stages):
        model, info = _load(model_or_path, device)
    schedule = _with_t_max(model.schedule, cfg.t_max)
    info["t_max"] = float(schedule.t_max)
    info["device"] = str(device)
    props: list[Property] = []
    data: dict[str, Any] = {}
    cert = Certificate(properties=props, model=info, config=cfg, timings=timings, data=data)

    from ..io import has_nonfinite

    bad = has_nonfinite(model)
    if bad:
        props.append(Property(
            "finite_weights", FAIL, "certified", float(len(bad)), 0.0, THEOREMS["finite"],
            f"{len(bad)} parameter(s)/buffer(s) hold NaN or inf: {', '.join(bad[:8])}"
            + (" ..." if len(bad) > 8 else "") + "; nothing else was evaluated",
            {"nonfinite": bad},
        ))
        timings["total"] = time.perf_counter() - t_start
        return cert
    n_params = info["parameters"]
    props.append(Property("finite_weights", PASS, "certified", 0.0, 0.0, THEOREMS["finite"],
                          f"all {n_params} parameters are finite", {}))

    from . import checks

    channels = _channels(model)
    shape = (channels, cfg.patch_size, cfg.patch_size)
    info["input_shape"] = list(shape)

    # --- the Lipschitz bound --------------------------------------------------------------------
    from ..solvers import make_grid

    g = make_grid(schedule, cfg.steps, cfg.grid).tolist()
    with _Timer(timings, "lipschitz", stages):
        grid_t = [float(schedule.t_of_varsigma(torch.tensor(v, dtype=torch.float64))) for v in g[:-1]]
        lip_prop, L = checks.certified_lipschitz(model, shape, info.get("lipschitz_budget"), grid_t)
    props.append(lip_prop)
    data["layers"] = lip_prop.details.get("layers", [])
    if L is None:
        for name in ("drift_lipschitz", "flow_bilipschitz", "integrator", "logdet_interval"):
            props.append(Property(name, SKIPPED, "certified", None, None, THEOREMS["lipschitz"],
                                  "not evaluated: no certified Lipschitz bound", {}))
        timings["total"] = time.perf_counter() - t_start
        return cert

    with _Timer(timings, "flow", stages):
        hs, ls, qs = step_margins(g, L, schedule)
        data.update(grid=g, h=hs, drift=ls, margins=qs)
        props.append(_drift_property(L, g, ls))
        props.append(_flow_property(L, schedule, cfg, g, qs, model))
        needed = steps_needed(L, schedule, cfg.grid) if max(qs) >= 1.0 else cfg.steps
    with _Timer(timings, "integrator", stages):
        props.append(checks.integrator_property(model, schedule, cfg, L, g, qs, needed, info, device, data))

    # --- log-determinants -----------------------------------------------------------------------
    with _Timer(timings, "logdet", stages):
        props.extend(checks.logdet_properties(model, schedule, cfg, L, g, qs, device, data))

    # --- empirical checks -----------------------------------------------------------------------
    if cfg.empirical and cfg.samples > 0:
        with _Timer(timings, "empirical", stages):
            props.extend(checks.empirical_properties(model, schedule, cfg, L, g, qs, device, data, info))
    timings["total"] = time.perf_counter() - t_start
    return cert


def _drift_property(L: Union[float, LipschitzProfile], g: list[float], ls: list[float]) -> Property:
    kmax = max(range(len(ls)), key=lambda k: ls[k])
    kmin = min(range(len(ls)), key=lambda k: ls[k])
    what = "alpha(s_k)*L(t_k)" if isinstance(L, LipschitzProfile) else "alpha(s_k)*L"
    return Property(
        "drift_lipschitz", PASS, "certified", max(ls), None, THEOREMS["flow"],
        f"drift Lipschitz in x̄ per step {what}: max {max(ls):.4g} (step {kmax}), min {min(ls):.4g} (step {kmin})",
        {"per_step": ls, "varsigma_left": g[:-1],
         "note": "alpha(s) = 1/sqrt(1+s^2) and L(t) do not increase, so the left end bounds the drift over "
                 "[s_k, s_{k+1}]"},
    )


def _lognorm(model: Any, schedule: Any, s_max: float) -> Optional[dict[str, Any]]:
    """The tight, one-sided flow constants when the model exposes an exact linear part."""
    rest = getattr(model, "nonlinear_lipschitz_at", None)
    integral = getattr(model, "linear_part_integral", None)
    if not callable(rest) or not callable(integral):
        return None
    try:
        prof = LipschitzProfile(rest, float(rest(0.0)), "nonlinear part")
        lo, hi = lognorm_exponents(prof, integral, schedule, s_max)
    except (UnsupportedModuleError, ValueError):
        return None
    what = ("w(t) x of the denoiser parameterisation" if getattr(model, "parameterization", "eps") == "denoiser"
            else f"the Gaussian-data skip (v = {getattr(model, 'data_variance', None)})")
    return {"Lambda_minus": lo, "Lambda_plus": hi, "lower_text": _fmt_exp(lo), "upper_text": _fmt_exp(hi),
            "linear_part": what,
            "formula": "Lambda+- = int s(varsigma) d varsigma +- int alpha l(t) d varsigma (logarithmic norm)"}


def _flow_property(L: float, schedule: Any, cfg: CertifyConfig, g: list[float], qs: list[float],
                   model: Any = None) -> Property:
    s_max = float(g[-1])
    tight = _lognorm(model, schedule, s_max) if model is not None else None
    lam = gronwall_profile(L, schedule, s_max)
    s_short = float(schedule.varsigma(min(float(cfg.short_t_max), float(schedule.t_max))))
    lam_short = gronwall_profile(L, schedule, s_short)
    per_step = [gronwall_exponent(L, a, b, schedule) for a, b in zip(g, g[1:])]
    log_lo, log_hi = _log_products(qs)
    loose = lam > math.log(1e6)
    ok = math.isfinite(lam)
    summary = (
        f"exact flow over [0, {schedule.t_max:g}] is injective and e^-{lam:.4g} <= |Phi x - Phi y|/|x - y| <= e^{lam:.4g}"
        f" = {_fmt_exp(lam)}"
    )
    if tight is not None:
        summary += (f"; log-norm (exact linear part): {tight['lower_text']} <= ratio <= {tight['upper_text']}")
    if loose:
        summary += (f" (astronomically loose but proven; tighter certified: [0, {min(cfg.short_t_max, schedule.t_max):g}]"
                    f" gives e^{lam_short:.4g} = {_fmt_exp(lam_short)}, per-step max e^{max(per_step):.3g},"
                    f" discrete Euler map prod(1+h_k L_k) = e^{log_hi:.4g})")
    return Property(
        "flow_bilipschitz", PASS if ok else FAIL, "certified", lam, None, THEOREMS["flow"], summary,
        {
            "Lambda": lam,
            "upper": _exp_or_none(lam),
            "lower": _exp_or_none(-lam),
            "upper_text": _fmt_exp(lam),
            "lower_text": _fmt_exp(-lam),
            "log10_upper": lam / math.log(10.0),
            "varsigma_max": s_max,
            "formula": ("Lambda = sum over 400 geometric pieces of L(t(s_k)) * (asinh s_{k+1} - asinh s_k), rounded up"
                        if isinstance(L, LipschitzProfile) else "Lambda = L * asinh(varsigma_max), rounded up"),
            "loose": loose,
            "short_range": {"t_max": min(float(cfg.short_t_max), float(schedule.t_max)), "varsigma_max": s_short,
                            "Lambda": lam_short, "upper_text": _fmt_exp(lam_short)},
            "per_step_Lambda": per_step,
            "lognorm": tight,
            "discrete_euler": {"log_lower": log_lo, "log_upper": log_hi,
                               "lower_text": _fmt_exp(log_lo), "upper_text": _fmt_exp(log_hi),
                               "certified_injective": bool(max(qs) < 1.0)},
        },
    )
