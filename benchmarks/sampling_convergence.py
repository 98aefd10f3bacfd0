"""Convergence of sampling on the shipped model beyond 50 steps, and whether the last step is to blame.

Prints, for DDIM and the reversible integrator at 25/50/100/200 steps (geometric grid, float64, one
3x32x32 noise), the RMS distance to dopri5 (rtol = atol = 1e-7) both at the end of the full grid
(varsigma = 0) and when the grid stops at varsigma(t_min), i.e. without the fixed last interval
[0, varsigma(t_min)]. Run: ``python benchmarks/sampling_convergence.py [CKPT] [THREADS]``.
"""

from __future__ import annotations

import argparse

import torch

import injcert
from injcert.cli import run_script
from injcert.io import load_checkpoint
from injcert.solvers import get_solver, make_grid, probability_flow_field
from injcert.solvers import Dopri5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    ap.add_argument("threads", nargs="?", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = load_checkpoint(args.checkpoint).double().eval()
    field = probability_flow_field(net)
    sch = field.schedule
    z = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xT = z / float(sch.alpha(sch.t_max))
    with torch.no_grad():
        full = make_grid(sch, 1)
        s_min = float(make_grid(sch, 10)[1])
        ref0 = Dopri5(rtol=1e-7, atol=1e-7).decode(field, xT, full).value()
        refm = Dopri5(rtol=1e-7, atol=1e-7).decode(field, xT, torch.tensor([s_min, float(full[-1])],
                                                                            dtype=torch.float64)).value()
        print(f"|ref(0) - ref(s_min)| rms {float((ref0 - refm).pow(2).mean().sqrt()):.3e}")
        print(f"{'steps':>5} {'method':>10} {'to 0':>10} {'to s_min':>10}")
        for n in (25, 50, 100, 200):
            g = make_grid(sch, n)
            for m in ("ddim", "reversible"):
                out0 = get_solver(m).decode(field, xT, g).value()
                outm = get_solver(m).decode(field, xT, g[1:]).value()
                e0 = float((out0 - ref0).pow(2).mean().sqrt())
                em = float((outm - refm).pow(2).mean().sqrt())
                print(f"{n:5d} {m:>10} {e0:10.3e} {em:10.3e}", flush=True)


if __name__ == "__main__":
    run_script(main)
