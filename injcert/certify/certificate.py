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

The pieces: :mod:`~injcert.certify.result` (the types above), :mod:`~injcert.certify.context`
(what the checks share, computed once), one module per family of entries —
:mod:`~injcert.certify.lipschitz`, :mod:`~injcert.certify.flow`, :mod:`~injcert.certify.integrator`,
:mod:`~injcert.certify.logdet`, :mod:`~injcert.certify.empirical` — run in the order of
:data:`CHECKS` on what :mod:`~injcert.certify.numerics` evaluates (float64 copies, held-out inputs,
flows), and :mod:`~injcert.certify.report` (table, Markdown, figures).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from .._progress import Stages
from ..errors import ConfigError
from ..io import has_nonfinite
from . import empirical, flow, integrator, lipschitz, logdet
from .context import CertContext, load_model, resolve_device, steps_needed
from .result import (FAIL, FLOAT64_TOLERANCE, INFO, METHODS, PASS, SKIPPED, STATUSES, THEOREMS, Certificate,
                     CertifyConfig, Property)

# The result types and constants are imported above for the callers of this module's old names;
# their home (and their __all__) is certify.result.
__all__ = ["CertContext", "CHECKS", "certify", "finite_weights", "steps_needed"]

#: Phases of :func:`certify` (keys of ``Certificate.timings``) and their progress-bar labels.
_PHASES = {"load": "load checkpoint", "lipschitz": "Lipschitz bound", "flow": "flow constants",
           "integrator": "integrator", "logdet": "log-determinants", "empirical": "empirical checks"}

#: The checks after ``finite_weights``, in report order, each with the phase it is timed under (a
#: phase's time is the sum of its checks') and its lane (:func:`_run_checks`). Every entry after
#: ``lipschitz`` needs the certified bound (``SKIPPED`` without one).
CHECKS: tuple[tuple[str, Callable[[CertContext], list[Property]], int], ...] = (
    ("lipschitz", lipschitz.check, 0),
    ("flow", flow.check, 0),
    ("integrator", integrator.check, 1),
    ("logdet", logdet.check, 1),
    ("empirical", empirical.lipschitz_check, 1),
    ("empirical", empirical.round_trip_check, 2),
    ("empirical", empirical.pairs_check, 2),
)


class _Timer:
    def __init__(self, timings: dict[str, float], name: str, stages: Any = None) -> None:
        self.timings, self.name, self.stages = timings, name, stages

    def __enter__(self) -> "_Timer":
        if self.stages is not None:
            self.stages._bar.set_postfix_str(_PHASES.get(self.name, self.name))
        self.t0 = time.perf_counter()
        return self

    _lock = threading.Lock()  # checks of one phase may end at the same time in two lanes

    def __exit__(self, *exc: Any) -> None:
        with _Timer._lock:
            self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0
        if self.stages is not None:
            self.stages._bar.update(1)


def _phases(cfg: CertifyConfig) -> list[str]:
    """The phases that run (the empirical checks only with ``empirical`` and some samples)."""
    return [k for k in _PHASES if k != "empirical" or (cfg.empirical and cfg.samples > 0)]


def _stages(cfg: CertifyConfig) -> list[str]:
    """The progress bar's stages: loading, then one per entry of :data:`CHECKS` that runs."""
    phases = _phases(cfg)
    return ["load"] + [phase for phase, _, _ in CHECKS if phase in phases]


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
    stages = Stages("certify", _stages(cfg), enabled=progress)
    try:
        return _certify(model_or_path, cfg, stages)
    finally:
        stages.close()


def _certify(model_or_path: Union[str, os.PathLike[str], nn.Module], cfg: CertifyConfig, stages: Any) -> Certificate:
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    with _Timer(timings, "load", stages):
        model, info = load_model(model_or_path, device)
    ctx = CertContext(model, info, cfg, device)
    info["t_max"] = float(ctx.schedule.t_max)
    info["device"] = str(device)
    cert = Certificate(properties=[finite_weights(ctx)], model=info, config=cfg, timings=timings, data=ctx.data)
    if cert.properties[0].status == PASS:  # after non-finite weights nothing else is evaluated
        info["input_shape"] = list(ctx.shape)
        cert.properties.extend(_run_checks(ctx, timings, stages))
    timings["total"] = time.perf_counter() - t_start
    return cert


def _run_checks(ctx: CertContext, timings: dict[str, float], stages: Any) -> list[Property]:
    """The entries of :data:`CHECKS`, each timed under its phase, returned in report order. Lane 0
    (the bound, the flow constants) runs first; the rest need the bound (``SKIPPED`` without one) and
    their lanes, which share no work but what the context computes once, run side by side on a CPU
    with two threads or more (:func:`_side_by_side`), else in order."""
    props: list[Property] = []
    phases = _phases(ctx.cfg)
    todo = [(k, phase, check, lane) for k, (phase, check, lane) in enumerate(CHECKS) if phase in phases]
    for k, phase, check, lane in [e for e in todo if e[3] == 0]:
        if phase != "lipschitz" and ctx.L is None:
            return props + lipschitz.not_evaluated()
        with _Timer(timings, phase, stages):
            props.extend(check(ctx))
    rest = [e for e in todo if e[3] != 0]
    if rest and ctx.L is None:
        return props + lipschitz.not_evaluated()
    lanes = [[e for e in rest if e[3] == lane] for lane in sorted({e[3] for e in rest})]
    threads = torch.get_num_threads()
    if ctx.device.type != "cpu" or threads < 2 or len(lanes) < 2:
        lanes = [rest] if rest else []
    results = _side_by_side(ctx, lanes, timings, stages, threads)
    return props + [p for k, *_ in rest for p in results[k]]


def _side_by_side(ctx: CertContext, lanes: list[list[tuple]], timings: dict[str, float],
                  stages: Any, threads: int) -> dict[int, list[Property]]:
    """Run each lane's checks (``(index, phase, check, lane)``) in order, the lanes in threads (torch's
    intra-op threads shared out between them, and restored after): the network is evaluated by small
    batches that one thread barely keeps busy, so two independent checks at once use the cores far
    better. Results do not
    depend on it (every random draw has its own seeded generator; shared state is computed once,
    :class:`~injcert.certify.context.cached_property`). A check's error is raised here, in the
    caller's thread; the threads are daemons, so an interrupt does not wait for them."""
    results: dict[int, list[Property]] = {}
    errors: list[BaseException] = []

    def run(lane: list[tuple]) -> None:
        try:
            for k, phase, check, _ in lane:
                with _Timer(timings, phase, stages):
                    results[k] = check(ctx)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    if len(lanes) <= 1:
        for lane in lanes:
            run(lane)
    else:
        torch.set_num_threads(max(1, threads // len(lanes)))
        try:
            workers = [threading.Thread(target=run, args=(lane,), daemon=True) for lane in lanes]
            for w in workers:
                w.start()
            for w in workers:
                while w.is_alive():
                    w.join(0.2)  # short waits: Ctrl-C reaches the caller
        finally:
            torch.set_num_threads(threads)
    if errors:
        raise errors[0]
    return results


def finite_weights(ctx: CertContext) -> Property:
    """``finite_weights``: no parameter or buffer holds NaN or inf."""
    bad = has_nonfinite(ctx.model)
    if bad:
        return Property(
            "finite_weights", FAIL, "certified", float(len(bad)), 0.0, THEOREMS["finite"],
            f"{len(bad)} parameter(s)/buffer(s) hold NaN or inf: {', '.join(bad[:8])}"
            + (" ..." if len(bad) > 8 else "") + "; nothing else was evaluated",
            {"nonfinite": bad},
        )
    return Property("finite_weights", PASS, "certified", 0.0, 0.0, THEOREMS["finite"],
                    f"all {ctx.info['parameters']} parameters are finite", {})
