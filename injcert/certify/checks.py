r"""The computations behind each certificate entry: certified quantities and empirical refutations.

The empirical checks run in **float64** on a copy of the network (``requires_grad`` off, so
:class:`~injcert.model.layers.LipConv2d` uses its cached effective weight), on held-out image
patches (:data:`injcert.data.images.HELDOUT_IMAGES`) with random times and random corruptions as
conditions. The float64 copy is a (very slightly) different function from the shipped float32
network — its normalised weights are recomputed in float64 — so the comparisons use the certified
bound of *that* copy, $L_{64}$, reported next to $L$.

A measurement may only *refute* a certified bound; a refutation beyond
:data:`~injcert.certify.certificate.FLOAT64_TOLERANCE` is a soundness failure.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..errors import InjcertError, NonConvergenceError, UnsupportedModuleError
from ..data.corruptions import corrupt_batch
from ..data.images import PatchDataset
from ..solvers import get_solver, integrate, make_grid, probability_flow_field
from ..theory.flow import fixed_point_error_bound
from ..theory.lipschitz import lipschitz_bound, lipschitz_lower_bound
from ..theory.logdet import step_logdet_interval, trace_estimate
from .certificate import (
    FAIL,
    FLOAT64_TOLERANCE,
    INFO,
    PASS,
    SKIPPED,
    THEOREMS,
    CertifyConfig,
    LipschitzProfile,
    Property,
    _channels,
    _fmt_exp,
    _log_products,
    round_down,
    round_up,
    step_margins,
)

__all__ = [
    "certified_lipschitz",
    "integrator_property",
    "logdet_properties",
    "empirical_properties",
    "heldout_patches",
    "random_conditions",
    "round_trip",
    "euler_flow",
    "float64_copy",
    "fixed_point_error_bound",
]

#: Number of standard errors beyond which a Hutch++ estimate outside the certified interval is
#: treated as a contradiction (for bounded Rademacher probes this has negligible probability).
HUTCHPP_SIGMAS = 8.0
#: Relative per-step tolerance of the fixed-point inverse in the round-trip check (its certified
#: a-posteriori bound, not this target, is what the measured error is compared to).
FIXED_POINT_TOL = 1e-7


# ----------------------------------------------------------------------------- helpers


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` with gradients off (cached effective weights), in eval mode."""
    m = copy.deepcopy(model).to(torch.float64).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def frozen(model: nn.Module) -> nn.Module:
    """``model`` itself if no parameter needs grad, else a copy with gradients off."""
    if not any(p.requires_grad for p in model.parameters()):
        return model
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def model_dtype(model: nn.Module) -> torch.dtype:
    p = next(iter(model.parameters()), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


def heldout_patches(n: int, channels: int, size: int, seed: int, dtype: torch.dtype,
                    device: torch.device) -> Tensor:
    """``n`` patches ``channels×size×size`` of the held-out images (deterministic in ``seed``)."""

    ds = PatchDataset(patch_size=size, channels=channels, length=n, seed=seed, split="heldout")
    return torch.stack([ds[i] for i in range(n)]).to(device=device, dtype=dtype)


def random_conditions(x: Tensor, seed: int, t_max: float, p_uncond: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Random times ``t ~ U(0, t_max)`` and random corruptions ``(y, m)`` of ``x`` (same device/dtype)."""

    g = torch.Generator().manual_seed(int(seed) + 7919)
    t = torch.rand(x.shape[0], generator=g, dtype=torch.float64) * float(t_max)
    y, m = corrupt_batch(x.detach().cpu().to(torch.float64), g, p_uncond)
    return (t.to(device=x.device, dtype=x.dtype), y.to(device=x.device, dtype=x.dtype),
            m.to(device=x.device, dtype=x.dtype))


def _norms(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1)


def _grid(schedule: Any, steps: int, kind: str) -> Tensor:
    return make_grid(schedule, steps, kind)


def round_trip(model: nn.Module, x: Tensor, cond: Optional[tuple[Tensor, Tensor]], schedule: Any, steps: int,
               method: str, grid_kind: str = "geometric", **solver_options: Any) -> tuple[Tensor, Any, Any]:
    """``(x_back, encoded_state, decoded_state)`` of an encode/decode round trip with ``method``."""
    solver = get_solver(method, **solver_options)
    field = probability_flow_field(model, schedule)
    grid = _grid(schedule, steps, grid_kind)
    with torch.no_grad():
        enc = solver.encode(field, x, grid, cond)
        dec = solver.decode(field, enc, grid, cond)
    return dec.value(), enc, dec


def euler_flow(model: nn.Module, x: Tensor, cond: Optional[tuple[Tensor, Tensor]], schedule: Any,
               grid: list[float], keep: Optional[list] = None) -> Tensor:
    r"""The discrete Euler/DDIM encode map $\bar x_0 \mapsto \bar x_N$ (in $\bar x$ coordinates): the
    ``ddim`` solver run by :func:`injcert.solvers.integrate` (``keep`` receives its states)."""
    with torch.no_grad():
        return integrate("ddim", probability_flow_field(model, schedule), grid, x, cond, direction="encode",
                         keep=keep).x


# ----------------------------------------------------------------------------- certified entries


def certified_lipschitz(model: nn.Module, shape: tuple, budget: Optional[float],
                        grid_t: Optional[list[float]] = None) -> tuple[Property, Any]:
    """The certified, size-independent bound of $\\varepsilon_\\theta$ in $x$ and its comparison with the budget.

    A model with a noise-adaptive budget (``certified_lipschitz_at`` and ``lipschitz_budget_at``,
    ``lipschitz_kappa`` set) is certified per noise level: $L(t_k) \\le B(t_k)$ at every grid time
    ``grid_t``, and the returned bound is a :class:`LipschitzProfile`. Otherwise it is one number.
    """

    m = model if next(iter(model.parameters()), torch.empty(0)).device.type == "cpu" else copy.deepcopy(model).cpu()
    theorem = THEOREMS["lipschitz"]
    try:
        lb = lipschitz_bound(frozen(m), shape, size_independent=True)
    except UnsupportedModuleError as exc:
        return Property("lipschitz_bound", FAIL, "certified", None, budget, theorem,
                        f"no certified bound: {str(exc).splitlines()[0]}", {"error": str(exc)}), None
    L = float(lb.value)
    layers = [{"name": r.name or "<root>", "type": r.type, "bound": float(r.bound)} for r in lb.layers]
    details: dict[str, Any] = {"size_independent": True, "input_shape": list(shape), "layers": layers,
                               "uniform_over": "every t in [0, t_max] and every condition (y, m)"}
    if not math.isfinite(L):
        return Property("lipschitz_bound", FAIL, "certified", None, budget, theorem,
                        "the certified bound is not finite", details), None
    adaptive = getattr(m, "lipschitz_kappa", None) is not None and callable(getattr(m, "certified_lipschitz_at", None))
    if adaptive and grid_t:
        rows = []
        for t in grid_t:
            lt, bt = float(m.certified_lipschitz_at(t)), float(m.lipschitz_budget_at(t))
            rows.append({"t": float(t), "certified": lt, "budget": bt})
        details.update(uniform_over="every condition (y, m) and every t' >= t (non-increasing in t)",
                       per_t=rows, kappa=float(m.lipschitz_kappa), cap=budget)
        over = [r for r in rows if r["certified"] > r["budget"]]
        profile = LipschitzProfile(m.certified_lipschitz_at, L)
        if over or (budget is not None and L > budget):
            worst = max(over, key=lambda r: r["certified"] / r["budget"]) if over else {"t": 0.0, "certified": L,
                                                                                       "budget": budget}
            return Property("lipschitz_bound", FAIL, "certified", worst["certified"], worst["budget"], theorem,
                            f"L(t) = {worst['certified']:.6g} EXCEEDS the budget B(t) = {worst['budget']:.6g} at "
                            f"t = {worst['t']:.4g}", details), profile
        ratio = max(r["certified"] / r["budget"] for r in rows)
        return Property("lipschitz_bound", PASS, "certified", L, budget, theorem,
                        f"L(t) <= B(t) = min({m.lipschitz_kappa:g}/sigma_t, {budget:g}) at all {len(rows)} grid times "
                        f"(at most {100 * ratio:.3g}% of it); L(t_min) = {rows[0]['certified']:.4g}, "
                        f"L(t_max) = {rows[-1]['certified']:.4g}; sup_t L = {L:.6g}", details), profile
    if budget is None:
        return Property("lipschitz_bound", PASS, "certified", L, None, theorem,
                        f"L = {L:.6g} (certified, every input size; the model declares no budget)", details), L
    if not math.isfinite(budget) or L <= budget:
        slack = "" if not math.isfinite(budget) else f", {100 * (1 - L / budget):.3g}% below"
        return Property("lipschitz_bound", PASS, "certified", L, budget, theorem,
                        f"L = {L:.6g} <= declared budget {budget:.6g}{slack}", details), L
    return Property("lipschitz_bound", FAIL, "certified", L, budget, theorem,
                    f"L = {L:.6g} EXCEEDS the declared budget {budget:.6g} by {L - budget:.4g} "
                    f"({100 * (L / budget - 1):.3g}%)", details), L


def integrator_property(model: nn.Module, schedule: Any, cfg: CertifyConfig, L: float, g: list[float],
                        qs: list[float], needed: Optional[int], info: dict, device: torch.device,
                        data: dict) -> Property:
    """Injectivity of the chosen integrator: margins $h_kL_k<1$ (Euler) or algebraic bijectivity (reversible)."""
    qmax = max(qs)
    worst = int(max(range(len(qs)), key=lambda k: qs[k]))
    log_lo, log_hi = _log_products(qs)
    margins = {"max": qmax, "worst_step": worst, "per_step": qs, "steps_needed": needed,
               "discrete_lower_text": _fmt_exp(log_lo), "discrete_upper_text": _fmt_exp(log_hi),
               "discrete_log_lower": log_lo, "discrete_log_upper": log_hi}
    if cfg.method == "reversible":
        x, exact, err = reversible_round_trip(model, schedule, cfg, info, device, data)
        details = {"method": "reversible", "algebraic": "bijection on the int64 lattice (Theorem 3)",
                   "measured_bit_exact": exact, "measured_max_abs_error": err, "measured_on": list(x.shape),
                   "dtype": str(x.dtype).replace("torch.", ""), "margins_informational": margins}
        overflow = _lattice_overflow("integrator", data, details)
        if overflow is not None:
            return overflow
        if exact:
            return Property("integrator", PASS, "certified", 0.0, 0.0, THEOREMS["reversible"],
                            f"reversible: exact bijection (algebraic) and bit-exact round trip measured on "
                            f"{x.shape[0]} input(s) of shape {tuple(x.shape[1:])}", details)
        return Property("integrator", FAIL, "certified", err, 0.0, THEOREMS["reversible"],
                        f"SOUNDNESS FAILURE: reversible round trip is not bit-exact (max |error| {err:.3e})",
                        details, soundness_failure=True)
    theorem = THEOREMS["discrete"]
    budget = info.get("lipschitz_budget")
    details = {"method": cfg.method, "margins": margins}
    if cfg.method == "fixed_point" and budget is not None and math.isfinite(budget) and budget < float(L):
        return Property("integrator", FAIL, "certified", qmax, 1.0, theorem,
                        f"fixed_point inverts with the declared budget {budget:.4g} < certified L = {L:.4g}: "
                        "its error bounds are not certified", details)
    if qmax < 1.0:
        extra = ""
        if cfg.method == "fixed_point":
            extra = "; inverse by Banach iteration with a certified error bound (see round_trip_fixed_point)"
        return Property("integrator", PASS, "certified", qmax, 1.0, theorem,
                        f"{cfg.method}: every Euler step is injective, max h_k L_k = {qmax:.4g} < 1 "
                        f"(step {worst}); discrete map bi-Lipschitz in [{_fmt_exp(log_lo)}, {_fmt_exp(log_hi)}]{extra}",
                        details)
    bad = sum(q >= 1.0 for q in qs)
    need = f"; needs >= {needed} {cfg.grid} steps" if needed else ""
    return Property("integrator", FAIL, "certified", qmax, 1.0, theorem,
                    f"{cfg.method}: {bad} of {len(qs)} steps have h_k L_k >= 1 (max {qmax:.4g} at step {worst}, "
                    f"{qmax - 1:.4g} over): injectivity of the discrete map is not certified{need}", details)


def reversible_round_trip(model: nn.Module, schedule: Any, cfg: CertifyConfig, info: dict, device: torch.device,
                          data: dict) -> tuple[Tensor, bool, float]:
    """Bit-exact round trip of the reversible integrator in the model's own dtype (cached in ``data``).

    On the ``samples`` held-out patches with random corruptions as conditions, or on one random
    input when ``samples == 0``.
    """
    if "_reversible" in data:
        return data["_reversible"]
    dt = model_dtype(model)
    c = int(info["input_shape"][0])
    if cfg.samples > 0:
        x = heldout_patches(cfg.samples, c, cfg.patch_size, cfg.seed, torch.float64, device)
        _, y, m = random_conditions(x, cfg.seed, float(schedule.t_max))
        cond: Optional[tuple[Tensor, Tensor]] = (y.to(dt), m.to(dt))
    else:
        gen = torch.Generator().manual_seed(cfg.seed)
        x = torch.rand((1, c, cfg.patch_size, cfg.patch_size), generator=gen, dtype=torch.float64).mul(2).sub(1)
        x, cond = x.to(device), None
    x = x.to(dt)
    try:
        back, _, _ = round_trip(frozen(model), x, cond, schedule, cfg.steps, "reversible", cfg.grid)
    except OverflowError as exc:  # the state left the int64 lattice: Theorem 3's precondition fails
        data["_reversible_overflow"] = str(exc).splitlines()[0]
        data["_reversible"] = (x, False, math.inf)
        return x, False, math.inf
    exact = bool(torch.equal(back, x))
    err = float((back.to(torch.float64) - x.to(torch.float64)).abs().max())
    data["_reversible"] = (x, exact, err)
    return x, exact, err


def _lattice_overflow(name: str, data: dict, details: dict) -> Optional[Property]:
    """A FAIL for ``name`` when the reversible round trip left the lattice range (not a soundness
    failure: the bijection holds on the lattice, and the code refused to leave it)."""
    why = data.get("_reversible_overflow")
    if why is None:
        return None
    return Property(name, FAIL, "certified" if name == "integrator" else "empirical", math.inf, 0.0,
                    THEOREMS["reversible"], f"the reversible integration left the int64 lattice: {why}", details)


def logdet_properties(model: nn.Module, schedule: Any, cfg: CertifyConfig, L: float, g: list[float],
                      qs: list[float], device: torch.device, data: dict) -> list[Property]:
    r"""Certified per-step log-det intervals, the exact value on a small input, Liouville and Hutch++."""

    theorem = THEOREMS["logdet"]
    m64 = float64_copy(model)
    field = probability_flow_field(m64, schedule)
    c = _channels_of(model)
    s = cfg.logdet_size
    d = c * s * s
    hs = [b - a for a, b in zip(g, g[1:])]
    # certified intervals on the small input's dimension
    lo_k, hi_k = [], []
    for h, q in zip(hs, qs):
        if q < 1.0:
            lo, hi = step_logdet_interval(h, q / h if h > 0 else 0.0, d)
            lo, hi = min(lo, round_down(d * math.log1p(-q))), max(hi, round_up(d * math.log1p(q)))
        else:
            lo, hi = -math.inf, round_up(d * math.log1p(q))
        lo_k.append(lo)
        hi_k.append(hi)
    sum_lo = -math.inf if any(v == -math.inf for v in lo_k) else round_down(math.fsum(lo_k))
    sum_hi = round_up(math.fsum(hi_k))

    # exact per-step values along the Euler trajectory of one held-out patch (+ corruption)
    try:
        x = heldout_patches(1, c, s, cfg.seed + 1, torch.float64, device)
    except InjcertError:
        x = torch.rand((1, c, s, s), generator=torch.Generator().manual_seed(cfg.seed), dtype=torch.float64).to(device)
    _, y, m = random_conditions(x, cfg.seed + 1, float(schedule.t_max))
    cond = (y, m)
    exact_k, trace_k = [], []
    kept: list = []
    euler_flow(m64, x, cond, schedule, g, keep=kept)  # the states of the integrator that runs
    for a, h, st in zip(g, hs, kept):
        jac = dense_jacobian(lambda z, a=a: field(a, z, cond), st.x)
        eye = torch.eye(d, dtype=jac.dtype, device=jac.device)
        _, la = torch.linalg.slogdet(eye + h * jac)
        exact_k.append(float(la))
        trace_k.append(h * float(torch.diagonal(jac).sum()))
    exact = math.fsum(exact_k)
    trace_sum = math.fsum(trace_k)
    tol = FLOAT64_TOLERANCE
    bad_steps = [k for k, (v, lo, hi) in enumerate(zip(exact_k, lo_k, hi_k))
                 if v < lo - tol * (1 + abs(lo)) or v > hi + tol * (1 + abs(hi))]
    in_sum = sum_lo - tol * (1 + abs(sum_lo) if math.isfinite(sum_lo) else 1) <= exact <= sum_hi + tol * (1 + abs(sum_hi))
    data.update(logdet_exact=exact_k, logdet_lo=lo_k, logdet_hi=hi_k, logdet_trace=trace_k, logdet_dim=d)
    props: list[Property] = []
    details = {"dim": d, "input_shape": [c, s, s], "exact": exact, "certified_lower": sum_lo,
               "certified_upper": sum_hi, "per_step_exact": exact_k, "per_step_lower": lo_k,
               "per_step_upper": hi_k, "steps_outside": bad_steps,
               "map": "discrete Euler/DDIM encode map, log|det| = sum_k log|det(I + h_k J_k)|"}
    if bad_steps or not in_sum:
        props.append(Property(
            "logdet_interval", FAIL, "certified", exact, sum_hi, theorem,
            f"SOUNDNESS FAILURE: exact log|det| {exact:.6g} (d = {d}) outside the certified interval "
            f"[{sum_lo:.6g}, {sum_hi:.6g}] (steps {bad_steps[:5]})", details, soundness_failure=True))
    else:
        one_sided = "" if math.isfinite(sum_lo) else " (lower end -inf: some h_k L_k >= 1)"
        props.append(Property(
            "logdet_interval", PASS, "certified", exact, sum_hi, theorem,
            f"exact log|det| = {exact:.6g} on a {c}x{s}x{s} input lies in the certified "
            f"[{sum_lo:.6g}, {sum_hi:.6g}]{one_sided}, and so does every step", details))

    # Liouville: log|det(I + hJ)| - h tr J, certified |.| <= d q^2 / (2 (1 - q)) when q < 1.
    diffs = [e - t for e, t in zip(exact_k, trace_k)]
    gaps = [round_up(d * q * q / (2 * (1 - q))) if q < 1 else math.inf for q in qs]
    viol = [k for k, (df, gp) in enumerate(zip(diffs, gaps)) if abs(df) > gp + tol * (1 + abs(df))]
    total_gap = math.fsum(gaps) if all(math.isfinite(v) for v in gaps) else math.inf
    ld = {"trace_integral": trace_sum, "exact": exact, "difference": exact - trace_sum,
          "certified_tolerance": total_gap, "per_step_difference": diffs, "per_step_tolerance": gaps,
          "rule": "|log|det(I+hJ)| - h tr J| <= d q^2 / (2(1-q)), q = h L < 1"}
    if viol:
        props.append(Property(
            "logdet_liouville", FAIL, "certified", exact - trace_sum, total_gap, theorem,
            f"SOUNDNESS FAILURE: per-step |log det - h tr J| exceeds d q^2/(2(1-q)) at steps {viol[:5]}",
            ld, soundness_failure=True))
    else:
        props.append(Property(
            "logdet_liouville", INFO, "certified", exact - trace_sum, total_gap, theorem,
            f"exact {exact:.6g} vs trace integral sum h_k tr J_k = {trace_sum:.6g}: difference "
            f"{exact - trace_sum:.3g} (certified tolerance {total_gap:.3g})", ld))

    # Hutch++ on a full-size input: sum_k h_k tr J_k with its standard error.
    gen = torch.Generator(device=device.type if device.type != "mps" else "cpu").manual_seed(cfg.seed + 2)
    shape = (c, cfg.patch_size, cfg.patch_size)
    D = c * cfg.patch_size * cfg.patch_size
    try:
        xf = heldout_patches(1, c, cfg.patch_size, cfg.seed + 2, torch.float64, device)
    except InjcertError:
        xf = torch.zeros((1, *shape), dtype=torch.float64, device=device)
    _, yf, mf = random_conditions(xf, cfg.seed + 2, float(schedule.t_max))
    condf = (yf, mf)
    gc = make_grid(schedule, min(cfg.steps, cfg.hutchpp_steps), cfg.grid).tolist()
    hc = [b - a for a, b in zip(gc, gc[1:])]
    qc = step_margins(gc, L, schedule)[2]
    est_k, var = [], 0.0
    keptf: list = []
    euler_flow(m64, xf, condf, schedule, gc, keep=keptf)
    for a, h, st in zip(gc, hc, keptf):
        est, se = trace_estimate(lambda z, a=a: field(a, z, condf), st.x, "hutchpp", cfg.hutchpp_queries, generator=gen)
        est_k.append(h * float(est[0]))
        var += (h * float(se[0])) ** 2
    est_sum = math.fsum(est_k)
    se_sum = math.sqrt(var)
    cert = round_up(D * math.fsum(qc))  # |sum h_k tr J_k| <= D sum_k h_k L_k
    outside = max(0.0, abs(est_sum) - cert)
    data.update(hutchpp_grid=gc, hutchpp_per_step=est_k, hutchpp_se=se_sum, hutchpp_bound=cert, hutchpp_dim=D)
    hd = {"estimate": est_sum, "stderr": se_sum, "dim": D, "input_shape": list(shape),
          "certified_abs_bound": cert, "queries_per_step": cfg.hutchpp_queries, "per_step": est_k,
          "grid_steps": len(hc), "rule": "|sum_k h_k tr J_k| <= D sum_k h_k alpha(s_k) L on its own grid",
          "estimator": "Hutch++ (Meyer, Musco, Musco, Woodruff 2021) of sum_k h_k tr J_k"}
    if outside > HUTCHPP_SIGMAS * se_sum + FLOAT64_TOLERANCE * (1 + cert):
        props.append(Property(
            "logdet_hutchpp", FAIL, "empirical", est_sum, cert, theorem,
            f"SOUNDNESS FAILURE: Hutch++ trace integral {est_sum:.6g} ± {se_sum:.2g} lies "
            f"{outside / max(se_sum, 1e-300):.3g} standard errors outside the certified ±{cert:.6g}",
            hd, soundness_failure=True))
    else:
        props.append(Property(
            "logdet_hutchpp", INFO, "empirical", est_sum, cert, theorem,
            f"Hutch++ trace integral on {c}x{cfg.patch_size}x{cfg.patch_size}: {est_sum:.6g} ± {se_sum:.2g} "
            f"(certified |.| <= {cert:.4g})", hd))
    return props


def dense_jacobian(f: Any, x: Tensor) -> Tensor:
    """The dense Jacobian ``(d, d)`` of ``f`` at the single example ``x`` (shape ``1×C×H×W``).

    Reverse mode (``torch.func.jacrev``, vmapped vjps): for these square maps it is about twice
    as fast as :func:`injcert.theory.logdet.per_example_jacobian`'s forward mode on CPU.
    """
    shape = x.shape

    def flat(v: Tensor) -> Tensor:
        return f(v.view(shape)).reshape(-1)

    return torch.func.jacrev(flat)(x.reshape(-1))


def _channels_of(model: nn.Module) -> int:
    return _channels(model)


# ----------------------------------------------------------------------------- empirical entries


def empirical_properties(model: nn.Module, schedule: Any, cfg: CertifyConfig, L: float, g: list[float],
                         qs: list[float], device: torch.device, data: dict, info: dict) -> list[Property]:
    """Lipschitz lower bound, round trips of every integrator, injectivity and growth of the Euler map."""

    props: list[Property] = []
    c = _channels_of(model)
    m64 = float64_copy(model)
    mcpu = m64 if device.type == "cpu" else copy.deepcopy(m64).cpu()
    try:
        L64 = float(lipschitz_bound(mcpu, (c, cfg.patch_size, cfg.patch_size), size_independent=True).value)
    except UnsupportedModuleError:
        L64 = float(L)
    adaptive = isinstance(L, LipschitzProfile)
    Lp64: Any = LipschitzProfile(mcpu.certified_lipschitz_at, L64) if adaptive else L64
    x = heldout_patches(cfg.samples, c, cfg.patch_size, cfg.seed, torch.float64, device)
    t, y, m = random_conditions(x, cfg.seed, float(schedule.t_max))
    cond = (y, m)
    tol = FLOAT64_TOLERANCE

    # 1. Lipschitz lower bound (power iteration + ascent on held-out patches, random t and c).
    gen = torch.Generator(device=device.type).manual_seed(cfg.seed + 3)

    k = min(x.shape[0], 4)
    tk, yk, mk = t[:k], y[:k], m[:k]

    def eps(z: Tensor) -> Tensor:
        return m64(z, tk, yk, mk)

    lower = float(lipschitz_lower_bound(eps, x[:k], n_iter=cfg.lipschitz_iters, ascent_steps=1, generator=gen))
    # the samples' times are >= min(tk): a profile's value there bounds them all
    L_check = float(Lp64(float(tk.min()))) if adaptive else L64
    ratio = L_check / lower if lower > 0 else math.inf
    ld = {"lower": lower, "upper": L_check, "upper_float32_model": float(L), "ratio_upper_over_lower": ratio,
          "samples": k, "method": "power iteration on J^T J + gradient ascent (achieved ratio)"}
    data["lipschitz_lower"] = lower
    if lower > L_check * (1 + tol):
        props.append(Property("lipschitz_empirical", FAIL, "empirical", lower, L_check, THEOREMS["lipschitz"],
                              f"SOUNDNESS FAILURE: measured |J v|/|v| = {lower:.6g} exceeds the certified "
                              f"L = {L_check:.6g} by {100 * (lower / L_check - 1):.3g}%", ld, soundness_failure=True))
    else:
        props.append(Property("lipschitz_empirical", PASS, "empirical", lower, L_check, THEOREMS["lipschitz"],
                              f"lower bound {lower:.4g} <= certified {L_check:.4g} (ratio upper/lower {ratio:.3g})",
                              ld))

    # 2. Round trips of each integrator.
    qs64 = step_margins(g, Lp64, schedule)[2]
    dt = model_dtype(model)
    _, exact, err = reversible_round_trip(model, schedule, cfg, info, device, data)
    rd = {"max_abs_error": err, "bit_exact": exact, "dtype": str(dt).replace("torch.", ""), "steps": cfg.steps}
    overflow = _lattice_overflow("round_trip_reversible", data, rd)
    if overflow is not None:
        props.append(overflow)
    elif exact:
        props.append(Property("round_trip_reversible", PASS, "empirical", 0.0, 0.0, THEOREMS["reversible"],
                              f"decode(encode(x)) == x bit for bit on {cfg.samples} held-out patches ({rd['dtype']})", rd))
    else:
        props.append(Property("round_trip_reversible", FAIL, "empirical", err, 0.0, THEOREMS["reversible"],
                              f"SOUNDNESS FAILURE: reversible round trip error {err:.3e} != 0", rd,
                              soundness_failure=True))

    budget = info.get("lipschitz_budget")
    fp_ok = adaptive or (budget is not None and math.isfinite(budget) and budget >= L64)
    # the fixed-point inverse runs with the field's bound: L(t) of the weights, or the declared budget
    qs_b = step_margins(g, budget, schedule)[2] if fp_ok and not adaptive else qs64
    if not fp_ok:
        props.append(Property("round_trip_fixed_point", INFO, "empirical", None, None, THEOREMS["discrete"],
                              "not run: the fixed-point inverse needs a finite declared budget >= the certified L",
                              {"budget": budget, "L": L64}))
    elif max(qs_b) >= 1.0:
        props.append(Property("round_trip_fixed_point", INFO, "empirical", None, None, THEOREMS["discrete"],
                              f"not certified at {cfg.steps} steps: max h_k L_k = {max(qs_b):.4g} >= 1 "
                              "(the fixed-point inverse would raise NonConvergenceError)", {"max_margin": max(qs_b)}))
    else:
        try:
            kf = min(x.shape[0], 2)
            xk, condk = x[:kf], (y[:kf], m[:kf])
            back, enc, dec = round_trip(m64, xk, condk, schedule, cfg.steps, "fixed_point", cfg.grid,
                                        tol=FIXED_POINT_TOL)
            errs = _norms(back - xk)
            bound = fixed_point_error_bound(list(dec.error_bounds), qs_b)
            scale = float(_norms(enc.x).max()) if enc.x.numel() else 1.0
            allowed = bound + tol * max(1.0, scale) * _growth(qs_b)
            fd = {"max_l2_error": float(errs.max()), "certified_bound": bound, "allowed_with_rounding": allowed,
                  "per_step_error_bounds": list(dec.error_bounds), "steps": cfg.steps, "samples": kf,
                  "iteration_tolerance": FIXED_POINT_TOL}
            if float(errs.max()) > allowed:
                props.append(Property("round_trip_fixed_point", FAIL, "empirical", float(errs.max()), bound,
                                      THEOREMS["discrete"], f"SOUNDNESS FAILURE: fixed-point round trip error "
                                      f"{float(errs.max()):.3e} exceeds its certified bound {bound:.3e}", fd,
                                      soundness_failure=True))
            else:
                props.append(Property("round_trip_fixed_point", PASS, "empirical", float(errs.max()), bound,
                                      THEOREMS["discrete"], f"round trip error {float(errs.max()):.3e} <= certified "
                                      f"{bound:.3e} (float64)", fd))
        except NonConvergenceError as exc:
            props.append(Property("round_trip_fixed_point", INFO, "empirical", None, None, THEOREMS["discrete"],
                                  f"fixed-point inverse did not converge: {str(exc).splitlines()[0]}", {}))

    # Flows of the discrete Euler map, in halves A, B sharing A's conditions: phi(A), phi(B), phi(A + delta).
    n = x.shape[0]
    a_n = max(1, n // 2)
    xa = x[:a_n]
    xb = x[a_n:2 * a_n]
    xd = _perturb(xa, cfg)
    ya, ma = y[:a_n], m[:a_n]
    parts = [xa, xd] + ([xb] if xb.shape[0] == a_n else [])
    reps = len(parts)
    flows = euler_flow(m64, torch.cat(parts), (ya.repeat(reps, 1, 1, 1), ma.repeat(reps, 1, 1, 1)), schedule, g)
    fa, fd_ = flows[:a_n], flows[a_n:2 * a_n]
    # naive DDIM inversion: nothing certifies it; report the error.
    back = _ddim_decode(m64, fa, (ya, ma), schedule, g)
    derr = float(_norms(back - xa).max())
    props.append(Property("round_trip_ddim", INFO, "empirical", derr, None, THEOREMS["discrete"],
                          f"naive DDIM inversion round trip error {derr:.3e} (uncertified, for comparison)",
                          {"max_l2_error": derr, "steps": cfg.steps, "samples": a_n}))

    # 3. Injectivity and growth of the discrete Euler map (float64).
    ratios = [_norms(fa - fd_) / _norms(xa - xd).clamp_min(1e-300)]
    if reps == 3:
        fb = flows[2 * a_n:]
        dab = _norms(xa - xb)
        keep = dab > 0
        ratios.append((_norms(fa - fb) / dab.clamp_min(1e-300))[keep])
    pairs = torch.cat(ratios)
    log_lo, log_hi = _log_products(qs64)
    lower_c = 0.0 if log_lo == -math.inf else math.exp(max(log_lo, -745.0))
    valid = torch.isfinite(pairs)
    rmin = float(pairs[valid].min()) if bool(valid.any()) else math.nan
    rmax = float(pairs[valid].max()) if bool(valid.any()) else math.nan
    data.update(empirical_ratios=pairs[valid].tolist())
    idet = {"min_ratio": rmin, "max_ratio": rmax, "certified_lower": lower_c, "certified_log_lower": log_lo,
            "certified_log_upper": log_hi, "certified_upper_text": _fmt_exp(log_hi),
            "pairs": int(valid.sum()), "perturbation": cfg.perturbation,
            "map": "Euler/DDIM encode map in x̄ coordinates, float64, same condition within a pair"}
    if log_lo > -math.inf and math.log(max(rmin, 1e-300)) < log_lo + math.log1p(-tol):
        props.append(Property("injectivity_empirical", FAIL, "empirical", rmin, lower_c, THEOREMS["discrete"],
                              f"SOUNDNESS FAILURE: two inputs came closer (ratio {rmin:.4g}) than the certified "
                              f"lower constant {_fmt_exp(log_lo)} allows", idet, soundness_failure=True))
    else:
        what = f">= certified {_fmt_exp(log_lo)}" if log_lo > -math.inf else "(no certified lower constant: some h_k L_k >= 1)"
        props.append(Property("injectivity_empirical", PASS, "empirical", rmin, lower_c, THEOREMS["discrete"],
                              f"min distance ratio after the flow {rmin:.4g} {what}; {int(valid.sum())} pairs", idet))
    if math.log(max(rmax, 1e-300)) > log_hi + math.log1p(tol):
        props.append(Property("growth_empirical", FAIL, "empirical", rmax, _exp_or_inf(log_hi), THEOREMS["discrete"],
                              f"SOUNDNESS FAILURE: perturbation grew by {rmax:.4g} > certified {_fmt_exp(log_hi)}",
                              idet, soundness_failure=True))
    else:
        props.append(Property("growth_empirical", PASS, "empirical", rmax, _exp_or_inf(log_hi), THEOREMS["discrete"],
                              f"max growth {rmax:.4g} <= certified prod(1 + h_k L_k) = {_fmt_exp(log_hi)}", idet))

    if cfg.round_trip_study:
        data["round_trip_study"] = _round_trip_study(model, m64, x[:2], (y[:2], m[:2]), schedule, cfg,
                                                     Lp64 if adaptive else budget, L64)
    return props


def _exp_or_inf(v: float) -> float:
    return math.exp(v) if v < 709.0 else math.inf


def _growth(qs: list[float]) -> float:
    out = 1.0
    for q in qs:
        out /= (1.0 - q)
    return out


def _perturb(x: Tensor, cfg: CertifyConfig) -> Tensor:
    g = torch.Generator().manual_seed(cfg.seed + 13)
    d = torch.randn(x.shape, generator=g, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    d = d / _norms(d).view(-1, 1, 1, 1) * _norms(x).clamp_min(1.0).view(-1, 1, 1, 1) * cfg.perturbation
    return x + d


def _ddim_decode(model: nn.Module, z: Tensor, cond: Any, schedule: Any, g: list[float]) -> Tensor:
    with torch.no_grad():
        return integrate("ddim", probability_flow_field(model, schedule), g, z, cond, direction="decode").x


def _round_trip_study(model: nn.Module, m64: nn.Module, x: Tensor, cond: Any, schedule: Any, cfg: CertifyConfig,
                      budget: Any, L64: float) -> dict[str, list]:
    """Round-trip error vs number of steps for each integrator (for the figure)."""
    out: dict[str, list] = {"steps": list(cfg.round_trip_steps), "reversible": [], "fixed_point": [], "ddim": []}
    dt = model_dtype(model)
    fm = frozen(model)
    for n in cfg.round_trip_steps:
        back, _, _ = round_trip(fm, x.to(dt), (cond[0].to(dt), cond[1].to(dt)), schedule, n, "reversible", cfg.grid)
        out["reversible"].append(float((back.double() - x).abs().max()))
        back, _, _ = round_trip(m64, x, cond, schedule, n, "ddim", cfg.grid)
        out["ddim"].append(float(_norms(back - x).max()))
        finite = budget is not None and math.isfinite(float(budget)) and float(budget) > 0
        qs = step_margins(_grid(schedule, n, cfg.grid).tolist(), budget, schedule)[2] if finite else [2.0]
        if max(qs) < 1.0:
            try:
                back, _, _ = round_trip(m64, x[:1], (cond[0][:1], cond[1][:1]), schedule, n, "fixed_point",
                                        cfg.grid, tol=FIXED_POINT_TOL)
                out["fixed_point"].append(float(_norms(back - x[:1]).max()))
            except NonConvergenceError:
                out["fixed_point"].append(None)
        else:
            out["fixed_point"].append(None)
    return out
