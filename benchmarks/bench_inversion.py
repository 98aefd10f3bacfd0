"""Inversion: round-trip error, NFE and time per integrator, step count and dtype (asv suite).

``decode(encode(x))`` against ``x`` through the model (:data:`injcert.DEFAULT_CHECKPOINT`, or the
small untrained fallback of :func:`injcert.cli.compare.bench_model` while none is shipped) on a
16×16 centre crop of the held-out ``astronaut`` image. Methods: ``ddim`` (naive DDIM inversion),
``fixed_point`` (certified inverse; skipped where it cannot certify a step, i.e. raises
``NonConvergenceError``), ``reversible`` (bit-exact: error 0) and ``dopri5`` (torchdiffeq, adaptive,
rtol = atol = 1e-4; run once, at the "10 steps" slot, since steps do not apply).

Run ``python benchmarks/bench_inversion.py`` for a table.
"""

from __future__ import annotations

import math

import torch

from injcert.cli.compare import bench_model, load_batch, round_trip

torch.set_num_threads(1)

METHODS = ["ddim", "fixed_point", "reversible", "dopri5"]
STEPS = [10, 20, 50, 100]
DTYPES = ["float32", "float64"]
SIZE = 16
DOPRI5_TOL = 1e-4


def _inputs():
    model, _ = bench_model()
    return model, load_batch(["astronaut"], SIZE)[0]


def _run(model, x, method: str, steps: int, dtype: str) -> dict:
    return round_trip(model, x, method, steps, getattr(torch, dtype), dopri5_tol=DOPRI5_TOL)


class Inversion:
    params = (METHODS, STEPS, DTYPES)
    param_names = ["method", "steps", "dtype"]
    timeout = 600

    def setup_cache(self) -> dict:
        model, x = _inputs()
        out = {}
        for m in METHODS:
            for n in STEPS:
                for dt in DTYPES:
                    if m == "dopri5" and n != STEPS[0]:
                        continue
                    out[(m, n, dt)] = _run(model, x, m, n, dt)
        return out

    def setup(self, cache: dict, method: str, steps: int, dtype: str) -> None:
        r = cache.get((method, steps, dtype))
        if r is None:
            raise NotImplementedError("dopri5 is adaptive: run once")
        if r["failed"]:
            raise NotImplementedError("fixed_point cannot certify a step here (NonConvergenceError)")
        self.model, self.x = _inputs()

    def time_round_trip(self, cache: dict, method: str, steps: int, dtype: str) -> None:
        _run(self.model, self.x, method, steps, dtype)

    def track_max_abs_error(self, cache: dict, method: str, steps: int, dtype: str) -> float:
        return cache[(method, steps, dtype)]["max_abs"]

    track_max_abs_error.unit = "max |x - decode(encode(x))|"

    def track_nfe(self, cache: dict, method: str, steps: int, dtype: str) -> float:
        return cache[(method, steps, dtype)]["nfe"]

    track_nfe.unit = "NFE"


if __name__ == "__main__":
    model, x = _inputs()
    print(f"round trip max-abs error / NFE, astronaut {SIZE}x{SIZE}")
    for dt in DTYPES:
        for m in METHODS:
            cells = []
            for n in STEPS[:1] if m == "dopri5" else STEPS:
                r = _run(model, x, m, n, dt)
                cells.append("failed" if math.isnan(r["max_abs"]) else f"{r['max_abs']:.2e}/{int(r['nfe'])}")
            print(f"{dt:8s} {m:12s} " + "  ".join(f"{c:>16s}" for c in cells))
