r"""Conditional reconstruction of a corrupted image through the exactly invertible flow.

Long because the pipeline's steps call the pipeline itself: both gates and every coarse level of the
pyramid run :func:`reconstruct_full` again on a modified observation.

The observation is used **during the whole trajectory**, not only at $t = 0$
(``docs/design.md``, Restoration):

**Missing pixels or a blurred region** (``start="estimate"``, the default): a classical estimate
$\hat x_{\mathrm{cl}}$ (:func:`~injcert.tasks.classical.classical_estimate`: biharmonic inpainting,
least squares for the local blur operator) gives the starting point at an intermediate noise level $\varsigma_e$: inside
the region to restore, the hidden state is $\hat x_{\mathrm{cl}} + \varsigma_e\varepsilon$ (seeded);
outside, the observed pixels follow **their own encoded trajectory** — after every sub-update of
the bit-exact decode they are reset to it (the mechanism of Theorem 7,
:func:`~injcert.tasks.guided.guided_decode`). The network, conditioned on $(y, m)$, sees the whole
image at every step. $\varsigma_e$ (:func:`start_sigma`) and whether fresh noise is added
(``noise_scale``) were chosen on the training images: a start at a higher level lets the network
change more, which pays only where it restores better than the classical method. Where every
missing pixel is within a few pixels of observed ones (random pixels, thin gaps), the level is
also bounded by the estimate's own error, measured by hiding a seeded tenth of the observed pixels
and re-estimating them (:func:`holdout_error`): a fill that is already accurate (as a biharmonic
fill of a large image can be) is not perturbed at a level far above its error. A blurred region, where
no pixel is seen sharp, bounds its level by a bootstrap of the deblurring method instead (blur the
estimate again and deblur it: :func:`blur_bootstrap_error`).

**Additive noise only** (every pixel observed as is or with additive Gaussian noise of known
$\sigma$, channel 2 of the map): by default the same start from a classical estimate (BM3D given
$\sigma$; chosen on the training images by ``python benchmarks/tune_start_levels.py``, where it
beat both BM3D itself and the start from the observation below; see ``docs/benchmarks/results.md``), at a
level bounded by BM3D's own error, estimated without the truth by Stein's unbiased risk estimate
(:func:`sure_error`): BM3D's estimate of a large, smooth image is far more accurate than the tuned
level, and re-noising it there loses detail BM3D had kept. The flow is then kept only where the
same estimate of its own error, for the whole pipeline, is lower than BM3D's (:func:`_noise_gate`).
With ``start="observation"``: $y = x + \sigma\varepsilon$ *is* a point of the flow in the
coordinates $\bar x = x_0 + \varsigma\varepsilon$, at $\varsigma = \sigma$. The reconstruction then
starts there — at $\bar x = y$ plus fresh noise of std $\sqrt{\sigma_{\max}^2 - \sigma_{\text{pix}}^2}$
where a pixel is less noisy than the most noisy one — and integrates from $\varsigma = \sigma_{\max}$ to 0.

``start="noise"`` starts inside the region from pure noise at $t_{\max}$ (still with the observed
pixels on their trajectory); the classical estimate then plays no role.

Guarantees (tests in ``tests/test_tasks.py``): deterministic (the same seed gives the same output
bit for bit); pixels observed as is ($m_0 = 1$) equal $y$ exactly; the decode is exactly invertible —
:func:`~injcert.tasks.guided.guided_encode` maps the final state back to the start bit for bit (noise
start: :func:`~injcert.tasks.invert.encode_state`). Methods other than ``"reversible"`` decode without
resets (from the start level, known pixels pasted at the end).

The start level and the estimate's error without the truth (:func:`start_sigma`, :func:`holdout_error`,
:func:`blur_bootstrap_error`, :data:`START_SIGMA`, the hidden observation and its scores) live in
:mod:`injcert.tasks.start_levels`; every name stays importable from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import cached_property, partial
from typing import Any, Callable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.corruptions import expand_map, local_blur
from ..data.classical import METHODS, classical_estimate
from ..errors import ArgumentError, ArgumentTypeError
from ..metrics import ssim
from ..solvers import Grid, SolverState, integrate, probability_flow_field
from .guided import GuidedResult, guided_decode
from .invert import decode_full
from .start_levels import (  # noqa: F401  (re-exported: the start level and the hold-out's pieces)
    START_SIGMA, _distance_map, _distance_to_known, _holdout_pixels, _level, _shifted_hole, _start_kind,
    blur_bootstrap_error, can_hide, hidden_observation, hidden_scores, holdout_error, holdout_hide, start_choice,
    start_sigma, sure_error,
)

__all__ = ["Reconstruction", "reconstruct", "reconstruct_full", "start_sigma", "pyramid_levels", "STARTS",
           "holdout_error", "blur_bootstrap_error", "sure_error", "holdout_gate", "hidden_observation", "hidden_scores", "Holdout",
           "GATE_OFF", "RESTORER", "BLEND", "START_BLEND", "ReconstructOptions", "start_choice"]

STARTS = ("auto", "estimate", "observation", "noise")


@dataclass
class Reconstruction:
    """A reconstruction with what is needed to audit it.

    Attributes:
        image: the reconstruction $\\hat x$ (known pixels equal to ``y`` exactly).
        flow_image: the decoded image before the data-consistency projection.
        state: the full $t = 0$ solver state.
        noise: the x-space start of the decode (at ``t_start``).
        residual: $\\lVert A(\\hat x) - y\\rVert_2$ per example when an operator was given, else ``None``.
        nfe: network evaluations.
        t_start: the time the decode started from.
        estimate: the classical estimate the decode started from (``None`` without one).
        estimate_method: its name.
        guided: the guided flow's data (:func:`~injcert.tasks.guided.guided_encode` inverts it).
        holdout: the flow's validation (a :class:`Holdout`): for missing pixels or a blurred region
            (:func:`holdout_gate`) the RMS error and SSIM on held-out observed pixels of the start and
            of the flow, the flow kept iff its error is lower and its SSIM no lower; for additive noise
            (:func:`_noise_gate`) the SURE estimates of the RMS error of the denoiser and of the flow,
            the flow kept iff its estimate is lower (:attr:`flow_kept`). ``None`` where it was not run.
        start_check: where a model with a restorer chose its start for missing pixels
            (``estimate="auto"``): the cross-validated RMS errors ``(restorer, classical)`` on observed
            pixels hidden in the shape of the hole (:func:`start_choice`); the restorer starts unless its
            error exceeds :data:`START_MARGIN` times the classical one. ``None`` where no choice was made.
        pyramid_holdout: where a coarse-to-fine start lost its gate's hold-out to the restorer
            (:data:`PYRAMID_VS_RESTORER`) and the image was restored from the single-scale start instead:
            that hold-out.
    """

    image: Tensor
    flow_image: Tensor
    state: SolverState
    noise: Tensor
    residual: Optional[Tensor]
    nfe: int
    t_start: float = 0.0
    estimate: Optional[Tensor] = None
    estimate_method: Optional[str] = None
    guided: Optional[GuidedResult] = None
    holdout: Optional[Holdout] = None
    start_check: Optional[tuple[float, float]] = None
    pyramid_holdout: Optional[Holdout] = None

    @property
    def flow_kept(self) -> Optional[bool]:
        """Whether the gate kept the flow (``None`` where it did not run)."""
        return None if self.holdout is None else _flow_kept(self.holdout)


class Holdout(NamedTuple):
    """What :func:`holdout_gate` measured on the observed pixels it hid: the RMS error of the start
    (the classical or coarse-to-fine estimate) and of the flow there, and the SSIM of each against the
    truth with only the hidden pixels taken from it (every other pixel is the truth, or, inside the
    real hole, the start: the same in all three images). For additive noise (:func:`_noise_gate`):
    the SURE estimates of the RMS error of the denoiser and of the flow, and no SSIM (``nan``). For a
    coarse-to-fine start of a model with a restorer, ``restorer`` and ``restorer_ssim`` score the
    single-scale start (:func:`_single_scale`) of the same hidden observation on the same pixels (:func:`_restorer_beats_pyramid`); ``nan`` elsewhere."""

    start: float
    flow: float
    start_ssim: float
    flow_ssim: float
    restorer: float = math.nan
    restorer_ssim: float = math.nan


def _flow_kept(holdout: Holdout) -> bool:
    """The gate's rule: the flow restores the hidden pixels with a lower RMS error than its start and,
    where :data:`GATE_SSIM` and an SSIM was measured, an SSIM no lower."""
    no_ssim = math.isnan(holdout.start_ssim) or math.isnan(holdout.flow_ssim)
    return holdout.flow < holdout.start and (not GATE_SSIM or no_ssim or holdout.flow_ssim >= holdout.start_ssim)


def _restorer_beats_pyramid(holdout: Optional[Holdout]) -> bool:
    """Whether $R(c)$ restored a coarse-to-fine start's hidden pixels better than the gate's choice
    (the flow where it was kept, else the start): a lower RMS error and an SSIM no lower."""
    if holdout is None or math.isnan(holdout.restorer):
        return False
    kept = _flow_kept(holdout)
    rms, sim = (holdout.flow, holdout.flow_ssim) if kept else (holdout.start, holdout.start_ssim)
    return holdout.restorer < rms and holdout.restorer_ssim >= sim


#: Whether a coarse-to-fine start competes with the model's restorer (``estimate="auto"``,
#: ``levels="auto"``): its gate also scores the single-scale start (:func:`_single_scale`: $R(c)$, or
#: its mean with the classical fill) of the hidden observation, and where that wins
#: (:func:`_restorer_beats_pyramid`) the image is restored from it with no pyramid instead. A
#: large hole in a textured image is filled better by $R(c)$, a smooth one by the pyramid. Chosen on
#: the *training* images by ``python benchmarks/pyramid_restorer.py``; see ``docs/model.md``.
PYRAMID_VS_RESTORER = True

#: The name of the start estimate that is the model's own restorer $R(c)$ (``Reconstruction.estimate_method``).
RESTORER = "restorer"
#: :func:`start_choice` keeps $R(c)$ as the start unless its cross-validated error exceeds the
#: classical fill's by more than this factor. On one image the check is a noisy estimate, and $R(c)$
#: restores the real holes better in most cases; against a factor of 1 this about halved the loss of
#: the wrong choices (hole RMS in dB, summed over the mask kinds at 64² and 256²). Chosen on the *training*
#: images by ``python benchmarks/start_check_margin.py``; see ``docs/model.md``.
START_MARGIN = 1.1
#: The name of the start estimate that is the mean of $R(c)$ and the classical fill (:data:`START_BLEND`).
BLEND = "restorer+classical"
#: A hole whose farthest missing pixel lies more than this many pixels (Chebyshev) from an observed one
#: — a box, a wide stroke — starts from the mean of $R(c)$ and the classical fill, with no start check.
#: Deep inside a large hole both errors are large and only weakly correlated, so their mean has a lower
#: error than either, and a check on one image cannot tell which of the two is better. Chosen on
#: photographs that neither network was trained on (``python benchmarks/start_blend.py``); on the
#: training images, which $R(c)$ has learnt, $R(c)$ alone is better, so they cannot choose it. ``None``
#: turns it off.
START_BLEND: Optional[float] = 6.0


def _uses_restorer(model: Any, estimate: Union[str, Tensor], masks_only: bool) -> bool:
    r"""Whether the start estimate may be the model's restorer: asked for by name, or ``"auto"`` for
    missing pixels (blur and noise keep their classical starts: least squares with the known operator,
    BM3D given $\sigma$) when the model has one; for ``"auto"``, :func:`start_choice` then decides
    between it and the classical path (:func:`_choose_estimate`)."""
    has = getattr(model, "restorer", None) is not None and callable(getattr(model, "anchor", None))
    if isinstance(estimate, str) and estimate in (RESTORER, BLEND):
        if not has:
            raise ArgumentError(f"estimate {estimate!r} needs a model with a restorer")
        return True
    return has and isinstance(estimate, str) and estimate == "auto" and masks_only


def _check(y: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(y, Tensor) or y.ndim != 4 or not y.is_floating_point():
        raise ArgumentError(f"y must be a float N×C×H×W tensor, got {type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
    if not isinstance(m, Tensor) or m.ndim != 4 or m.shape[0] != y.shape[0] or m.shape[2:] != y.shape[2:]:
        raise ArgumentError(f"m must be N×K×H×W matching y {tuple(y.shape)}, got {tuple(getattr(m, 'shape', ()))}")
    return y, expand_map(m.to(y.dtype))


@dataclass(frozen=True, eq=False)
class ReconstructOptions:
    r"""The options of one reconstruction: the keyword arguments of :func:`reconstruct_full` (which
    builds this object) and what every step of the pipeline reads.

    Attributes:
        method: integrator name (``"reversible"`` keeps the observed pixels on their trajectory).
        grid: the kind of $\varsigma$ grid from the start level to 0 (``"geometric"`` or ``"uniform"``).
        operator: the realised forward operator $A$ (e.g. ``Observation.operator``) for the residual.
        start: ``"auto"`` = ``"estimate"`` (from the classical estimate at $\varsigma_e$: biharmonic,
            least-squares deblurring or BM3D by corruption), ``"observation"`` (additive noise only: from
            $y$ itself at $\varsigma = \sigma$) or ``"noise"`` (from pure noise at $t_{\max}$).
        sigma_start: $\varsigma_e$ for ``"estimate"`` (default :func:`start_sigma`).
        noise_scale: the fresh noise added to the estimate is ``noise_scale`` $\cdot\varsigma_e\varepsilon$:
            1 treats the estimate as a clean image to be re-noised (SDEdit, Meng et al. 2022), 0 (the
            default, measured better on the training images) treats it as already noisy at level
            $\varsigma_e$: its own error plays the noise.
        estimate: a classical method name (see :mod:`~injcert.data.classical`), ``"auto"``,
            :data:`RESTORER`, :data:`BLEND` (the mean of the two), or an estimate image of ``y``'s
            shape. ``"auto"`` for missing pixels: :data:`BLEND` for a hole far from observed pixels
            (:data:`START_BLEND`), else $R(c)$ or the classical fill by :func:`start_choice`.
        blur_sigma: the PSF of the deblurring estimate.
        levels: coarse-to-fine for missing pixels: reconstruct the image downsampled ``levels`` times
            by 2 first and start each finer level from the upsampled coarser reconstruction, faded into
            the level's classical estimate along the observed pixels (:data:`PYRAMID_BLEND`), instead of
            the classical estimate alone (:func:`pyramid_levels` for ``"auto"``: halve until every
            missing pixel lies within a quarter of the network's receptive field of an observed one).
        gate: for missing pixels or a blurred region started from a classical estimate at the default
            level, keep the flow only where it validates (:func:`holdout_gate`): the same pipeline, run
            with observed pixels hidden (or blurred) in the shape of the hole, must restore them better
            than its start; otherwise the start level is :data:`GATE_OFF`, where the flow keeps the
            estimate. Doubles the cost. A blurred region starts at :data:`GATE_OFF` without a proxy
            unless :data:`BLUR_FLOW`. For additive noise the flow is kept only where Stein's unbiased
            estimate of its error is below the denoiser's (:func:`_noise_gate`). Every guarantee holds
            either way.
        progress: show a progress bar.

    Raises:
        ArgumentError: an unknown ``start``, ``noise_scale`` outside ``[0, 1]``, ``sigma_start <= 0``.
    """

    method: str = "reversible"
    grid: str = "geometric"
    operator: Optional[Callable[[Tensor], Tensor]] = None
    start: str = "auto"
    sigma_start: Optional[float] = None
    noise_scale: float = 0.0
    estimate: Union[str, Tensor] = "auto"
    blur_sigma: float = 2.0
    levels: Union[int, str] = "auto"
    gate: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        if self.start not in STARTS:
            raise ArgumentError(f"start must be one of {list(STARTS)}, got {self.start!r}")
        if not (0.0 <= float(self.noise_scale) <= 1.0):
            raise ArgumentError(f"noise_scale must lie in [0, 1], got {self.noise_scale!r}")
        if self.sigma_start is not None and not float(self.sigma_start) > 0:
            raise ArgumentError(f"sigma_start must be > 0, got {self.sigma_start!r}")


_OPTION_NAMES = frozenset(f.name for f in fields(ReconstructOptions))


@dataclass(eq=False)
class _Run:
    """One reconstruction as its steps see it: the observation, the seeded noise ``z``, and what each
    step adds (the start, the start level and the gate's measurement, the decoded flow)."""

    y: Tensor
    m: Tensor
    steps: int
    seed: int
    z: Tensor
    #: the start (:func:`_start`): the estimate and its name, the pyramid depth, the start level
    #: $\varsigma_e$ and its kind (``None`` where the start is not an estimate at a chosen level)
    est: Optional[Tensor] = None
    est_name: Optional[str] = None
    n_levels: int = 0
    kind: Optional[str] = None
    level: Optional[float] = None
    target: Optional[Tensor] = None  # what the region starts from (the estimate, or zeros for noise)
    xbar: Optional[Tensor] = None  # the whole start state, where the start gives it (observation)
    t_start: float = 0.0
    est_error: Optional[float] = None  # the estimate's own error estimate behind the start level
    holdout: Optional[Holdout] = None  # (:func:`_gate`)
    start_check: Optional[tuple[float, float]] = None  # (:func:`_choose_estimate`)
    #: the flow (:func:`_flow`)
    flow: Optional[Tensor] = None
    state: Optional[SolverState] = None
    noise: Optional[Tensor] = None
    guided: Optional[GuidedResult] = None

    @cached_property
    def known(self) -> Tensor:
        return self.m[:, :1] == 1

    @cached_property
    def noisy(self) -> Tensor:
        return self.m[:, 2:3] > 0

    @cached_property
    def masks_only(self) -> bool:
        return not bool((self.m[:, 1:3] > 0).any())

    @cached_property
    def y_obs(self) -> Tensor:
        return self.y * self.m[:, :1] if self.masks_only else self.y  # missing pixels carry no information

    @property
    def region(self) -> Tensor:
        return ~self.known  # pixels to restore (missing, blurred, noisy)


@torch.no_grad()
def reconstruct_full(model: Any, y: Tensor, m: Tensor, steps: int = 50, seed: int = 0,
                     **options: Any) -> Reconstruction:
    """Reconstruct and return the audit trail (see :class:`Reconstruction`).

    Arguments:
        model: the conditional $\\varepsilon$-network.
        y: the observation, N×C×H×W in $[-1, 1]$ (missing pixels may hold anything).
        m: the corruption map N×K×H×W (K = 3, or 1 = missing-pixel map only).
        steps: integration steps (from the start level to 0).
        seed: seed of the noise (a CPU generator, so results agree across devices).
        options: the keyword arguments of :class:`ReconstructOptions` (``method``, ``grid``,
            ``operator``, ``start``, ``sigma_start``, ``noise_scale``, ``estimate``, ``blur_sigma``,
            ``levels``, ``gate``, ``progress``), documented there.

    The pipeline is a few steps with one signature ``step(model, run, options)``: :func:`_start`
    (the estimate and the start level), :func:`_gate` (:func:`holdout_gate`), :func:`_flow` (the
    guided decode, or a plain one), :func:`_finish`. Where the restorer beat a coarse-to-fine start in
    the gate's hold-out (:data:`PYRAMID_VS_RESTORER`), the image is restored from $R(c)$ instead.

    Raises:
        ArgumentError: shapes or dtypes that do not fit, an unknown ``start``, estimate, method or grid.
        ArgumentTypeError: an unknown option name.
    """
    y, m = _check(y, m)
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise ArgumentTypeError(f"reconstruct_full() got an unexpected keyword argument {unknown[0]!r}")
    opts = ReconstructOptions(**options)
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device=y.device)
    run = _Run(y, m, steps, seed, z)
    for step in (_start, _gate):
        run = step(model, run, opts)
    if run.n_levels > 0 and _restorer_beats_pyramid(run.holdout):  # restored from R(c), no pyramid
        single = _single_scale(model, m)[0]
        out = reconstruct_full(model, y, m, steps, seed, **{**options, "levels": 0, "estimate": single})
        out.pyramid_holdout = run.holdout
        return out
    return _finish(model, _flow(model, run, opts), opts)


def _start(model: Any, run: _Run, opts: ReconstructOptions) -> _Run:
    """Step 1, where the flow starts: the noisy observation itself (``start="observation"``), pure noise
    at $t_{\\max}$ (``"noise"``), or an estimate (:func:`_choose_estimate`) at the level of
    :func:`_start_level`."""
    sched = model.schedule
    if opts.start == "observation":
        return _start_observation(model, run, opts)
    if opts.start == "noise":
        run.t_start = float(sched.t_max)
        run.target = torch.zeros_like(run.y)
        return run
    run = _choose_estimate(model, run, opts)
    run.target = run.est
    return _start_level(model, run, opts)


def _start_observation(model: Any, run: _Run, opts: ReconstructOptions) -> _Run:
    """``start="observation"``: $y = x + \\sigma_{\\text{pix}}\\varepsilon$ is the flow's state at
    $\\varsigma = \\sigma_{\\text{pix}}$; every pixel is topped up to the largest $\\sigma$ with fresh noise."""
    sched, y, m = model.schedule, run.y, run.m
    only_noise = bool((run.known | run.noisy).all()) and bool(run.noisy.any())
    s_noise = float(m[:, 2].max()) if only_noise else 0.0
    if not (only_noise and 0 < s_noise < float(sched.varsigma(sched.t_max))):
        raise ArgumentError("start='observation' needs an observation with additive noise only (map channel 2 set, "
                         f"sigma below varsigma(t_max)); got a map with max sigma {s_noise!r}")
    run.t_start = float(sched.t_of_varsigma(s_noise))
    extra = torch.sqrt(torch.clamp(s_noise**2 - m[:, 2:3].double() ** 2, min=0.0))
    run.xbar = (y.double() + extra * run.z).to(y.dtype)
    return run


def _choose_estimate(model: Any, run: _Run, opts: ReconstructOptions) -> _Run:
    """The estimate the region starts from: a given image, the coarse-to-fine pyramid
    (:func:`_coarse_estimate`), the model's restorer $R(c)$ for missing pixels (:func:`_uses_restorer`),
    or a classical estimate; and the pyramid depth."""
    y, m, estimate = run.y, run.m, opts.estimate
    use_restorer = _uses_restorer(model, estimate, run.masks_only)
    n_levels = pyramid_levels(model, m) if opts.levels == "auto" else int(opts.levels)
    blend = isinstance(estimate, str) and estimate == BLEND
    if use_restorer and isinstance(estimate, str) and estimate == "auto":
        # a hole the coarse-to-fine pyramid fills keeps it: R(c) is checked against the plain classical
        # fill only, which the pyramid improves on for large holes in large images
        blend = n_levels == 0 and _blends(m)
        run.start_check = None if n_levels > 0 or blend else start_choice(run.y_obs, m, model.anchor, seed=run.seed)
        use_restorer = n_levels == 0 and (run.start_check is None
                                          or run.start_check[0] <= START_MARGIN * run.start_check[1])
    n_levels = 0 if use_restorer else n_levels
    pyramid = n_levels > 0 and not isinstance(estimate, Tensor) and run.masks_only and min(y.shape[-2:]) >= 16
    given = (_coarse_estimate(model, y, m, run.steps, run.seed, n_levels, method=opts.method, grid=opts.grid,
                              sigma_start=opts.sigma_start, noise_scale=opts.noise_scale, progress=opts.progress,
                              estimate=estimate, blur_sigma=opts.blur_sigma, gate=opts.gate)
             if pyramid else estimate if isinstance(estimate, Tensor) else None)
    run.n_levels = n_levels
    if given is not None:
        if given.shape != y.shape:
            raise ArgumentError(f"estimate must have the shape of y {tuple(y.shape)}, got {tuple(given.shape)}")
        run.est_name, run.est = (f"pyramid{n_levels}" if pyramid else "given"), given.to(y.dtype)
    elif blend:
        run.est_name, run.est = BLEND, _blend_estimate(model, run.y_obs, m).to(device=y.device, dtype=y.dtype)
    elif use_restorer:
        run.est_name, run.est = RESTORER, model.anchor(run.y_obs, m).to(device=y.device, dtype=y.dtype)
    else:
        run.est_name, est = classical_estimate(run.y_obs, m, estimate, blur_sigma=opts.blur_sigma)
        run.est = est.to(device=y.device, dtype=y.dtype)
    return run


def _blend_estimate(model: Any, y: Tensor, m: Tensor) -> Tensor:
    """The mean of the restorer $R(c)$ and the classical fill (:data:`START_BLEND`); observed pixels as is."""
    _, fill = classical_estimate(y, m, "auto")
    return 0.5 * (model.anchor(y, m).to(fill) + fill)


def _blends(m: Tensor) -> bool:
    """Whether a single-scale start for map ``m`` is :data:`BLEND` (:data:`START_BLEND`)."""
    return START_BLEND is not None and _distance_to_known(m[:, :1] == 1) > START_BLEND


def _restorer_estimate(model: Any, name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The function of ``(y, m)`` behind a start estimate that uses the restorer: :data:`RESTORER`
    ($R(c)$) or :data:`BLEND` (:func:`_blend_estimate`)."""
    return model.anchor if name == RESTORER else partial(_blend_estimate, model)


def _single_scale(model: Any, m: Tensor) -> tuple[str, Callable[[Tensor, Tensor], Tensor]]:
    """The estimate (name, function of ``(y, m)``) that a hole far from observed pixels starts from
    without the pyramid: :data:`BLEND` where :data:`START_BLEND` applies, else $R(c)$. It is what a
    coarse-to-fine start competes with (:data:`PYRAMID_VS_RESTORER`)."""
    name = BLEND if _blends(m) else RESTORER
    return name, _restorer_estimate(model, name)


def _start_level(model: Any, run: _Run, opts: ReconstructOptions) -> _Run:
    """The start level $\\varsigma_e$: ``sigma_start``, or :func:`start_sigma` of the map bounded by the
    estimate's own error (:func:`holdout_error` near observed pixels, :func:`blur_bootstrap_error` for a
    blurred region, :func:`sure_error` for additive noise)."""
    if opts.sigma_start is not None:
        run.level = float(opts.sigma_start)
        return run
    m, est_name = run.m, run.est_name
    kind = _start_kind(m)
    err = None
    if kind == "missing_near" and run.masks_only and est_name in METHODS:
        err = holdout_error(run.y_obs, m, est_name, seed=run.seed, blur_sigma=opts.blur_sigma)
    elif kind == "missing_near" and est_name in (RESTORER, BLEND):
        err = holdout_error(run.y_obs, m, _restorer_estimate(model, est_name), seed=run.seed)
    elif kind == "blur" and est_name in METHODS:
        err = blur_bootstrap_error(run.est, m, est_name, blur_sigma=opts.blur_sigma)
    elif kind == "noise" and est_name in METHODS:
        err = sure_error(run.y_obs, m, est_name, seed=run.seed, estimate=run.est)
    run.kind, run.level, run.est_error = kind, _level(kind, err), err
    return run


def _gate(model: Any, run: _Run, opts: ReconstructOptions) -> _Run:
    """Step 2, for a start from a classical estimate at the default level (``gate``): keep the flow
    only where it validates on hidden observed pixels (:func:`holdout_gate`), else start at
    :data:`GATE_OFF`; a blurred region goes to :data:`GATE_OFF` without a proxy unless :data:`BLUR_FLOW`.
    A coarse-to-fine start's hold-out also scores the restorer (:data:`PYRAMID_VS_RESTORER`)."""
    kind = run.kind
    if kind is None:  # no default level to validate: sigma_start given, or not an estimate start
        return run
    if kind == "noise":
        return _noise_gate(model, run, opts)
    gated_kind = run.masks_only or (kind == "blur" and not bool(run.noisy.any()))
    if not (opts.gate and gated_kind and not isinstance(opts.estimate, Tensor)):
        return run
    if kind == "blur" and not BLUR_FLOW:
        run.level = GATE_OFF  # the flow keeps the least-squares estimate; no proxy is run
        return run
    contender = (_single_scale(model, run.m)[1] if PYRAMID_VS_RESTORER and run.n_levels > 0 and opts.levels == "auto"
                 and _uses_restorer(model, opts.estimate, run.masks_only) else None)
    run.holdout = holdout_gate(model, run.y_obs, run.m, run.steps, run.seed, kind, run.level,
                               levels=run.n_levels, contender=contender, **_rerun_options(opts))
    if run.holdout is not None and not _flow_kept(run.holdout):
        run.level = GATE_OFF
    return run


def _rerun_options(opts: ReconstructOptions) -> dict[str, Any]:
    """The options a gate reruns the same pipeline with (the start level and the gate are its own)."""
    return {k: getattr(opts, k) for k in ("method", "grid", "noise_scale", "estimate", "blur_sigma")}


def _pasted(run: _Run) -> Tensor:
    """The decoded flow with the known pixels pasted over it: the reconstruction's image."""
    return torch.where(run.known.expand_as(run.flow), run.y, run.flow)


def _noise_gate(model: Any, run: _Run, opts: ReconstructOptions) -> _Run:
    r"""Step 2 for additive noise started from a classical denoiser at the default level (``gate``):
    keep the flow only where its risk is lower than the denoiser's. Noise hides nothing to hold out;
    both risks are Stein's unbiased estimates (:func:`sure_error`, one seeded probe, the same for
    both): the denoiser's is the one behind the start level, the flow's is that of the whole pipeline
    $y \mapsto \hat x$ (the denoiser, then the flow from the same level with the same seed), which
    costs one more run of both. The flow is decoded here; where it is not kept, the start level is
    :data:`GATE_OFF` and :func:`_flow` decodes again from there (the denoiser's estimate)."""
    err = run.est_error
    if not (opts.gate and run.est_name in METHODS and not isinstance(opts.estimate, Tensor)
            and err is not None and math.isfinite(err)):
        return run
    run = _flow(model, run, opts)

    def pipeline(u: Tensor, m: Tensor) -> Tensor:
        return reconstruct_full(model, u.to(run.y.dtype), m, run.steps, run.seed, sigma_start=run.level,
                                gate=False, **_rerun_options(opts)).image

    flow_err = sure_error(run.y_obs, run.m, pipeline, seed=run.seed, estimate=_pasted(run))
    run.holdout = Holdout(err, flow_err, math.nan, math.nan)
    if not _flow_kept(run.holdout):
        run.level, run.flow, run.state, run.noise, run.guided = GATE_OFF, None, None, None, None
    return run


def _flow(model: Any, run: _Run, opts: ReconstructOptions) -> _Run:
    """Step 3, the decode from the start to $t = 0$: guided (the observed pixels reset to their own
    encoded trajectory after every sub-update, :func:`~injcert.tasks.guided.guided_decode`) for the
    ``"reversible"`` method, else plain (:func:`_plain_decode`). Nothing to do where the gate
    (:func:`_noise_gate`) already decoded the flow it kept."""
    if run.flow is not None:
        return run
    sched = model.schedule
    if run.level is not None:
        run.t_start = min(float(sched.t_of_varsigma(run.level)), float(sched.t_max))
    if run.xbar is not None or opts.method != "reversible":
        return _plain_decode(model, run, opts)
    y = run.y
    x_ref = torch.where(run.region.expand_as(y), run.target, y)
    res = guided_decode(model, x_ref, run.region, run.target, run.t_start, run.steps, (run.y_obs, run.m),
                        progress=opts.progress, grid=opts.grid,
                        noise=run.z * float(opts.noise_scale) if opts.start != "noise" else run.z)
    state = SolverState(x=res.final[0], aux=res.final[1], dtype=y.dtype, frac_bits=res.frac_bits, scale=1.0)
    state.nfe = res.nfe
    run.state, run.flow, run.guided = state, res.image, res
    run.noise = res.start[0].to(torch.float64).mul(2.0 ** -res.frac_bits).to(y.dtype)
    return run


def _plain_decode(model: Any, run: _Run, opts: ReconstructOptions) -> _Run:
    """No lattice, no resets: decode the whole image from the start level (the observation's own
    state, or the start inside the region and the re-noised observation outside); :func:`_finish`
    pastes the known pixels. Reports no gate measurement (as it never has)."""
    sched, y, z = model.schedule, run.y, run.z
    xbar = run.xbar
    if xbar is None:
        s_e = float(sched.varsigma(run.t_start))
        xbar = (run.target.double() + s_e * float(opts.noise_scale) * z).to(y.dtype)
        xbar = torch.where(run.region.expand_as(y), xbar, (y.double() + s_e * z).to(y.dtype))
    field = probability_flow_field(model)
    run.state = integrate(opts.method, field, Grid.make(sched, run.steps, opts.grid, t_end=run.t_start), xbar,
                          (run.y_obs, run.m), direction="decode", progress=opts.progress)
    run.noise = (xbar.double() * float(sched.alpha(run.t_start))).to(y.dtype)
    run.flow, run.holdout = run.state.value(), None
    return run


#: What :func:`holdout_gate` hides where the missing pixels are near observed ones (random pixels, thin
#: gaps): ``"pixels"``, the seeded 10 % of observed pixels of :func:`holdout_error`, or ``"shifted"``,
#: the hole moved by half the image as for larger holes. ``"pixels"`` gained the most PSNR over
#: biharmonic summed over random pixels, gaps and free-form masks. Chosen on the *training* images by
#: ``python benchmarks/holdout_gate.py``; see ``docs/benchmarks/results.md``.
GATE_NEAR = "pixels"
#: Whether :func:`holdout_gate`'s rule also asks that the flow not lower the SSIM on the hidden pixels
#: (:class:`Holdout`), besides lowering their RMS error: against the RMS alone, fewer masks lose PSNR
#: or SSIM to the classical estimate and the summed PSNR gain is larger. Chosen on the *training*
#: images by ``python benchmarks/holdout_gate.py``; see ``docs/benchmarks/results.md``.
GATE_SSIM = True
#: Whether the gate may keep the flow for a blurred region. ``False``: with the gate on (the default),
#: a blurred region starts at :data:`GATE_OFF` without running the proxy, and the result is the
#: least-squares estimate (``gate=False`` still runs the flow). For a noise-free blur the network
#: adds next to nothing to ``lsmr_local`` (``python benchmarks/holdout_gate.py``), less than running
#: least squares for longer (``python benchmarks/gate_probes.py blur``), and the proxy cannot tell the
#: masks it loses on. Chosen on the *training* images by those two scripts; see
#: ``docs/benchmarks/results.md``.
BLUR_FLOW = False
#: The start level where :func:`holdout_gate` turns the flow off: the flow keeps its start (the
#: classical or coarse-to-fine estimate) to float precision, and stays the exact invertible map.
GATE_OFF = 1e-6


def holdout_gate(model: Any, y: Tensor, m: Tensor, steps: int, seed: int, kind: str, sigma_start: float, *,
                 blur_sigma: float = 2.0, contender: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                 **options: Any) -> Optional[Holdout]:
    r"""Validate the flow on observed pixels hidden in the shape of the hole; returns the RMS error
    on them, and the SSIM, of the start and of the flow (a :class:`Holdout`; ``None`` where no observed
    pixel can be hidden, or hiding them would leave an image with none).

    Missing pixels near observed ones (``kind`` ``"missing_near"``: random pixels, thin gaps): the
    seeded 10 % of :func:`holdout_error`; larger holes: the hole itself moved by half the image
    (:func:`_shifted_hole`); a blurred region (``kind`` ``"blur"``): the region moved by half the
    image, where it lands on sharp observed pixels, blurred there by the same local operator
    (:func:`~injcert.data.corruptions.local_blur`, PSF ``blur_sigma``). The same pipeline —
    estimate, pyramid, start level ``sigma_start``, ``options`` — then restores the observation with
    those pixels hidden too, without a gate of its own. The truth of the hidden pixels is known,
    nothing else is used: a cross-validated choice between the flow and its start, made per image.
    ``contender(y, m)`` (the restorer, for a coarse-to-fine start) is scored on the same hidden
    observation and pixels, as :attr:`Holdout.restorer`."""
    known = m[:, :1] == 1
    hide = holdout_hide(m, kind, seed, GATE_NEAR)
    if not can_hide(known, hide):
        return None  # nothing to hide, or nothing observed left to restore from
    y2, m2 = hidden_observation(y, m, hide, blurred=kind == "blur", blur_sigma=blur_sigma)
    r = reconstruct_full(model, y2, m2, steps, seed, sigma_start=sigma_start, gate=False, blur_sigma=blur_sigma,
                         **options)
    assert r.estimate is not None
    (start_rms, start_ssim), (flow_rms, flow_ssim) = (hidden_scores(y, known, hide, r.estimate, a)
                                                      for a in (r.estimate, r.image))
    if contender is None:
        return Holdout(start_rms, flow_rms, start_ssim, flow_ssim)
    return Holdout(start_rms, flow_rms, start_ssim, flow_ssim,
                   *hidden_scores(y, known, hide, r.estimate, contender(y2, m2).to(y2)))


def pyramid_levels(model: Any, m: Tensor, min_side: int = 16) -> int:
    """Halvings until every missing pixel is within a quarter of the receptive field of an observed one
    (never below ``min_side`` pixels); 0 for maps with blurred or noisy pixels."""
    m = expand_map(m)
    if bool((m[:, 1:3] > 0).any()):
        return 0
    reach = max(2, int(getattr(model, "receptive_field_radius", 32)) // 4)
    d = _distance_to_known(m[:, :1] == 1)
    side = min(m.shape[-2:])
    n = 0
    while d > reach and side // 2 >= min_side:
        d, side, n = d / 2, side // 2, n + 1
    return n


#: Coarse-to-fine (:func:`_coarse_estimate`): the width, in pixels of each level, of the band along the
#: observed pixels over which the upsampled coarse fill fades into the level's own classical estimate.
#: A band removes the seam the first version (no band, a coarse pixel observed only where all four
#: fine ones are) left along the hole. Chosen on the *training* images without the network by
#: ``python benchmarks/pyramid_blend.py``; see ``docs/benchmarks/results.md``.
PYRAMID_BLEND = 16.0
#: When a coarse pixel counts as observed: ``"any"`` of its four fine pixels is (their mean), or only
#: when ``"all"`` are (the first version).
PYRAMID_OBSERVED = "any"


def _coarse_estimate(model: Any, y: Tensor, m: Tensor, steps: int, seed: int, levels: int, *,
                     estimate: Union[str, Tensor] = "auto", blur_sigma: float = 2.0, **kw: Any) -> Tensor:
    """The estimate a pyramid level starts from: the reconstruction of the 2x-downsampled observation
    (a coarse pixel is observed where any of its four fine ones is: their mean), upsampled, faded into
    this level's classical estimate over :data:`PYRAMID_BLEND` pixels along the observed ones — the
    classical estimate is continuous with them to the pixel, the coarse fill carries the context."""
    known = (m[:, :1] == 1).to(y.dtype)
    h, w = y.shape[-2:]
    ph, pw = h % 2, w % 2
    yk, kk = F.pad(y * known, (0, pw, 0, ph)), F.pad(known, (0, pw, 0, ph))
    cnt = F.avg_pool2d(kk, 2)
    m_c = (cnt > 0 if PYRAMID_OBSERVED == "any" else cnt >= 1.0).to(y.dtype)
    y_c = F.avg_pool2d(yk, 2) / cnt.clamp_min(0.25) * m_c
    coarse = reconstruct_full(model, y_c, m_c, steps, seed, levels=levels - 1, estimate=estimate,
                              blur_sigma=blur_sigma, **kw).image
    up = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]
    _, fine = classical_estimate(y * known, m, estimate, blur_sigma=blur_sigma)
    weight = (_distance_map(known[:, 0] == 1) / PYRAMID_BLEND).clamp(max=1.0).to(y)
    return torch.where(known.bool().expand_as(y), y, torch.lerp(fine.to(y), up, weight))


def _finish(model: Any, run: _Run, opts: ReconstructOptions) -> Reconstruction:
    """Step 4: the known pixels pasted over the flow, the residual under ``operator``, the audit trail."""
    y, flow = run.y, run.flow
    image = _pasted(run)
    residual = None
    if opts.operator is not None:
        residual = (opts.operator(image) - y).flatten(1).norm(dim=1)
    return Reconstruction(image=image, flow_image=flow, state=run.state, noise=run.noise, residual=residual,
                          nfe=run.state.nfe, t_start=run.t_start, estimate=run.est, estimate_method=run.est_name,
                          guided=run.guided, holdout=run.holdout, start_check=run.start_check)


def reconstruct(model: Any, y: Tensor, m: Tensor, steps: int = 50, seed: int = 0, *, method: str = "reversible",
                grid: str = "geometric", progress: bool = False, **options: Any) -> Tensor:
    """Reconstruct the corrupted observation ``y`` with map ``m``; returns the image.

    Deterministic: the same ``seed`` gives the same output bit for bit. Pixels observed as is
    (``m[:, 0] == 1``) equal ``y`` exactly. ``steps``, ``seed``, ``method``, ``grid`` and ``progress``
    mean what they mean for :func:`~injcert.encode` and :func:`~injcert.edit`; ``options`` are the
    reconstruction's own (``start``, ``sigma_start``, ``estimate``, ``levels``, ...). See
    :func:`reconstruct_full` for them and the audit trail (noise, full state, residual).
    """
    return reconstruct_full(model, y, m, steps, seed, method=method, grid=grid, progress=progress, **options).image
