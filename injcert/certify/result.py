r"""The result types of :func:`~injcert.certify.certify`: options, entries, the certificate, and the
constants they are read against.

* :class:`CertifyConfig`: the options (every field has a default).
* :class:`Property`: one entry — a status (:data:`PASS`, :data:`FAIL`, :data:`INFO`,
  :data:`SKIPPED`), a number, the bound it is compared to, the theorem page that makes it sound.
* :class:`Certificate`: the entries in their fixed order, what was certified, timings and the
  arrays behind the figures; its JSON is documented by ``injcert/certify/schema.json``.

:data:`FLOAT64_TOLERANCE` is the only slack a float64 measurement gets before it counts as
contradicting a certified bound (a **soundness failure**).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..errors import ArgumentError, ConfigError
from ..io import atomic_write_bytes
from .report import render_markdown, render_table, write_figures

__all__ = [
    "PASS",
    "FAIL",
    "INFO",
    "SKIPPED",
    "STATUSES",
    "METHODS",
    "FLOAT64_TOLERANCE",
    "THEOREMS",
    "CertifyConfig",
    "Property",
    "Certificate",
    "exp_or_none",
    "fmt_exp",
]

PASS, FAIL, INFO, SKIPPED = "PASS", "FAIL", "INFO", "SKIPPED"
STATUSES = (PASS, FAIL, INFO, SKIPPED)
METHODS = ("reversible", "fixed_point", "ddim")

#: Relative tolerance granted to float64 *measurements* before they count as contradicting a
#: certified bound. It covers the rounding of float64 network evaluations and norms (relative
#: error $\lesssim 10^{-13}$ for the depths used here) with a margin of $10^4$.
FLOAT64_TOLERANCE: float = 1e-9

#: The proof page behind each kind of entry.
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


def exp_or_none(v: float) -> Optional[float]:
    """``exp(v)`` when it is a finite float64, else ``None`` (JSON holds the log instead)."""
    if not math.isfinite(v) or v > 709.0:
        return None if v != -math.inf else 0.0
    return math.exp(v)


def fmt_exp(log_value: float) -> str:
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


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class CertifyConfig:
    """Options of :func:`~injcert.certify.certify` (every field has a default; ``certify(path, steps=20)``
    overrides one).

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


# ----------------------------------------------------------------------------- entries


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
            raise ArgumentError(f"status must be one of {STATUSES}, got {self.status!r}")
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


# ----------------------------------------------------------------------------- JSON helpers


def _version() -> str:
    """``injcert.__version__``, read from the loaded package (it is set before the package imports
    this subpackage; importing the parent package from here would make an import cycle)."""
    return str(getattr(sys.modules.get(__name__.split(".")[0]), "__version__", "unknown"))


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


# ----------------------------------------------------------------------------- the certificate


@dataclass
class Certificate:
    """The result of :func:`~injcert.certify.certify`.

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
            atomic_write_bytes(path, text.encode())
        return text

    def to_markdown(self, path: Union[str, os.PathLike[str], None] = None) -> str:
        """The report as Markdown, citing the theorem page of every property (written to ``path``
        when given, with the links to the proof pages relative to its folder)."""
        text = render_markdown(self, base=None if path is None else Path(path).resolve().parent)
        if path is not None:
            atomic_write_bytes(path, text.encode())
        return text

    def table(self) -> str:
        """The plain-text table printed by ``python -m injcert certify``."""
        return render_table(self)

    def figures(self, folder: Union[str, os.PathLike[str]]) -> list[Path]:
        """Write the figures (PNG) into ``folder``; returns their paths."""
        return write_figures(self, folder)

    def __str__(self) -> str:
        return self.table()
