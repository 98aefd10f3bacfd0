r"""Log-determinant estimators: exact (dense Jacobian) vs Hutchinson vs Hutch++ — time and error.

The quantity is the Liouville integrand $\operatorname{tr}\,\partial f/\partial x$ (Theorem 6): its
time integral along a trajectory is $\log|\det \partial\Phi/\partial x|$, and it is what
:func:`injcert.theory.logdet.trace` estimates with ``method="hutchinson"|"hutchpp"``. The drift is
$f(x) = \tanh(\mathrm{conv}(x))$ (3 channels, 3×3, zero padding), whose trace is known in closed
form, $\sum_{c,p} \tanh'(z_{c,p})\,w_{c,c,1,1}$, at every size, so the error of every method is
measured against the truth. ``exact`` builds the dense per-example Jacobian
(:func:`injcert.theory.logdet.per_example_jacobian`, $d$ forward-mode products) and is run up to
$d = 3072$; ``time_exact_slogdet`` adds the dense ``slogdet`` of the Euler step
$x + h f(x)$ — the cost of an exact log-determinant. $d = 3\cdot n^2$ for $n = 8, 16, 32, 64$.

Run ``python benchmarks/bench_logdet.py`` for a table.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from injcert.theory.logdet import logdet, per_example_jacobian, trace

torch.set_num_threads(1)

SIDES = [8, 16, 32, 64]  # d = 192, 768, 3072, 12288
METHODS = ["exact", "hutchinson", "hutchpp"]
EXACT_MAX_D = 4096
PROBES = 30


class _Drift(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=True).double()
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g, dtype=torch.float64) * 0.3)
            self.conv.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64) * 0.1)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x))

    def true_trace(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        centre = torch.diagonal(self.conv.weight[:, :, 1, 1]).view(1, 3, 1, 1)
        return ((1 - torch.tanh(z) ** 2) * centre).flatten(1).sum(1)


def problem(side: int):
    f = _Drift()
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return f, x


def estimate(f: _Drift, x: torch.Tensor, method: str) -> float:
    with torch.no_grad():
        if method == "exact":
            return float(torch.diagonal(per_example_jacobian(f, x), dim1=1, dim2=2).sum())
        gen = torch.Generator().manual_seed(2)
        return float(trace(f, x, method=method, n_probes=PROBES, generator=gen).value[0])


class LogDet:
    params = (METHODS, SIDES)
    param_names = ["method", "side"]
    timeout = 300

    def setup(self, method: str, side: int) -> None:
        if method == "exact" and 3 * side * side > EXACT_MAX_D:
            raise NotImplementedError("dense Jacobian beyond d = 4096")
        self.f, self.x = problem(side)
        with torch.no_grad():
            self.truth = float(self.f.true_trace(self.x)[0])

    def time_trace(self, method: str, side: int) -> None:
        estimate(self.f, self.x, method)

    def track_rel_error(self, method: str, side: int) -> float:
        return abs(estimate(self.f, self.x, method) - self.truth) / abs(self.truth)

    track_rel_error.unit = "relative error"

    def track_dim(self, method: str, side: int) -> int:
        return 3 * side * side

    track_dim.unit = "d"


class ExactSlogdet:
    params = ([8, 16, 32],)
    param_names = ["side"]
    timeout = 300

    def setup(self, side: int) -> None:
        self.f, self.x = problem(side)

    def time_exact_slogdet(self, side: int) -> None:
        h = 0.05
        with torch.no_grad():
            logdet(lambda z: z + h * self.f(z), self.x, method="exact")


if __name__ == "__main__":
    print(f"tr(df/dx) of tanh(conv3x3): relative error and time ({PROBES} probes), float64")
    print(f"{'d':>7s}" + "".join(f"{m:>24s}" for m in METHODS))
    for side in SIDES:
        f, x = problem(side)
        truth = float(f.true_trace(x)[0])
        cells = []
        for m in METHODS:
            if m == "exact" and 3 * side * side > EXACT_MAX_D:
                cells.append(f"{'skipped':>24s}")
                continue
            t0 = time.perf_counter()
            err = abs(estimate(f, x, m) - truth) / abs(truth)
            cells.append(f"{err:12.2e} {time.perf_counter() - t0:9.3f}s ")
        print(f"{3 * side * side:7d}" + "".join(cells))
