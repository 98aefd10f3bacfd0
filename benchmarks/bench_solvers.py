"""Integrator accuracy, round-trip error and cost on the analytic-score problem (asv suite).

Problem: :class:`injcert.testing.AnalyticMixtureScore` (3-component per-pixel mixture, std 0.1),
float64, sampling from $t_{\\max} = 0.995$ down to $t = 0$ (geometric grids start at $t_{\\min} = 10^{-3}$).
Accuracy: RMS error of the sample against dopri5 at rtol = atol = 1e-10.
Run ``python benchmarks/bench_solvers.py`` for the table.
"""

from __future__ import annotations

import time

import torch

from injcert.errors import NonConvergenceError
from injcert.solvers import get_solver, make_grid, probability_flow_field
from injcert.testing import AnalyticMixtureScore, flow_map

torch.set_num_threads(1)

CONFIGS = [("ddim", "uniform"), ("ddim", "geometric"), ("reversible", "uniform"), ("reversible", "geometric"),
           ("reversible_heun_xbar", "uniform"), ("reversible_heun_xbar", "geometric"),
           ("leapfrog", "uniform"), ("leapfrog", "geometric")]
STEPS = [10, 20, 50, 100]
_CACHE: dict = {}


def _problem():
    if "p" not in _CACHE:
        model = AnalyticMixtureScore()
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
        x0 = model.sample_data(4, (1, 8, 8), gen)
        ref = flow_map(model, z, model.schedule.t_max, 0.0)
        _CACHE["p"] = (model, z, x0, ref)
    return _CACHE["p"]


def sample_error(method: str, kind: str, steps: int) -> tuple[float, int]:
    model, z, _, ref = _problem()
    field = probability_flow_field(model)
    alpha = float(model.schedule.alpha(model.schedule.t_max))
    out = get_solver(method).decode(field, z / alpha, make_grid(model.schedule, steps, kind))
    return float((out.value() - ref).pow(2).mean().sqrt()), out.nfe


def round_trip(method: str, kind: str, steps: int) -> tuple[float, int]:
    model, _, x0, _ = _problem()
    field = probability_flow_field(model)
    grid = make_grid(model.schedule, steps, kind)
    solver = get_solver(method)
    lat = solver.encode(field, x0, grid)
    try:
        out = solver.decode(field, lat, grid)
    except NonConvergenceError:
        return float("nan"), lat.nfe
    return float((out.value() - x0).abs().max()), lat.nfe + out.nfe


class SolverAccuracy:
    params = ([f"{m}/{k}" for m, k in CONFIGS], STEPS)
    param_names = ["method/grid", "steps"]

    def setup(self, mk: str, steps: int) -> None:
        _problem()

    def track_rms_error(self, mk: str, steps: int) -> float:
        return sample_error(*mk.split("/"), steps)[0]

    def track_round_trip_max_abs(self, mk: str, steps: int) -> float:
        return round_trip(*mk.split("/"), steps)[0]

    def time_decode(self, mk: str, steps: int) -> None:
        sample_error(*mk.split("/"), steps)


if __name__ == "__main__":
    _problem()
    print("RMS sample error vs dopri5 (rtol 1e-10); analytic 3-mixture, float64, 4x1x8x8")
    print(f"{'method/grid':32s}" + "".join(f"{n:>10d}" for n in STEPS) + "   NFE(decode)")
    for m, k in CONFIGS:
        errs, nfes = zip(*(sample_error(m, k, n) for n in STEPS))
        print(f"{m + '/' + k:32s}" + "".join(f"{e:10.2e}" for e in errs) + "   " + "/".join(map(str, nfes)))
    print("\nround trip max |decode(encode(x0)) - x0| (geometric grid)")
    print(f"{'method':24s}" + "".join(f"{n:>10d}" for n in STEPS) + "   NFE(enc+dec)")
    for m in ["ddim", "fixed_point", "reversible", "leapfrog", "dopri5"]:
        res = [round_trip(m, "geometric", n) for n in STEPS]
        print(f"{m:24s}" + "".join(f"{e:10.2e}" for e, _ in res) + "   " + "/".join(str(n) for _, n in res))
    t0 = time.perf_counter()
    e, n = sample_error("dopri5", "geometric", 1)
    print(f"\ndopri5 (rtol=atol=1e-6): RMS {e:.2e}, NFE {n}, {time.perf_counter() - t0:.2f}s")
    print("fixed_point: nan = NonConvergenceError (h*L >= 1 with L = alpha*138 on this problem)")
