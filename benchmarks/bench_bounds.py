"""asv suite: tightness and time of certified operator norms and log-determinants.

Side by side for 3x3 convolutions on 32x32 inputs: the certified ``operator_norm_bound``,
the exact spectrum (Sedghi et al. 2019: full ``fft2`` + per-frequency ``svdvals``; exact for
circular padding only), power iteration (uncertified lower bound), and the Frobenius bound
$\\sqrt{k_hk_w}\\|W\\|_F$. Run ``python benchmarks/bench_bounds.py`` for a table.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from injcert.theory.logdet import logdet
from injcert.theory.spectral import operator_norm_bound, operator_norm_interval

torch.set_num_threads(1)


def exact_circular_norm(weight: torch.Tensor, n: int) -> float:
    """Sedghi et al. (2019): all singular values of a stride-1 circular conv via full fft2 + SVD."""
    w = weight.detach().to(torch.float64)
    k = torch.zeros(*w.shape[:2], n, n, dtype=torch.float64)
    k[..., : w.shape[-2], : w.shape[-1]] = w
    blocks = torch.fft.fft2(k).permute(2, 3, 0, 1)
    return float(torch.linalg.svdvals(blocks)[..., 0].max())


def frobenius_bound(weight: torch.Tensor) -> float:
    kh, kw = weight.shape[-2:]
    return math.sqrt(kh * kw) * float(weight.detach().double().norm())


def power_iteration(layer: nn.Module, shape: tuple, n_iter: int = 50) -> float:
    return operator_norm_interval(layer, shape, n_iter=n_iter)[0]


def _layer(channels: int, mode: str) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(channels, channels, 3, padding=1, padding_mode=mode, bias=False)


class CircularTightness:
    """bound / exact for circular padding, where the FFT gives the exact norm."""

    params = ([16, 32, 64],)
    param_names = ["channels"]
    timeout = 300

    def setup(self, channels: int) -> None:
        self.layer = _layer(channels, "circular")
        self.shape = (channels, 32, 32)
        self.exact = exact_circular_norm(self.layer.weight, 32)

    def track_bound_over_exact(self, channels: int) -> float:
        return operator_norm_bound(self.layer, self.shape) / self.exact


class ConvNorms:
    params = ([16, 32, 64], ["circular", "zeros"])
    param_names = ["channels", "padding_mode"]
    timeout = 300

    def setup(self, channels: int, mode: str) -> None:
        self.layer = _layer(channels, mode)
        self.shape = (channels, 32, 32)
        self.exact = exact_circular_norm(self.layer.weight, 32) if mode == "circular" else None

    def time_certified_bound(self, channels: int, mode: str) -> None:
        operator_norm_bound(self.layer, self.shape)

    def time_exact_fft_svd(self, channels: int, mode: str) -> None:
        exact_circular_norm(self.layer.weight, 32)

    def time_power_iteration(self, channels: int, mode: str) -> None:
        power_iteration(self.layer, self.shape)

    def time_frobenius(self, channels: int, mode: str) -> None:
        frobenius_bound(self.layer.weight)

    def track_interval_width(self, channels: int, mode: str) -> float:
        lo, hi = operator_norm_interval(self.layer, self.shape, n_iter=50)
        return (hi - lo) / hi

    def track_frobenius_over_bound(self, channels: int, mode: str) -> float:
        return frobenius_bound(self.layer.weight) / operator_norm_bound(self.layer, self.shape)

    def track_size_independent_over_bound(self, channels: int, mode: str) -> float:
        return operator_norm_bound(self.layer, self.shape, size_independent=True) / operator_norm_bound(self.layer, self.shape)


class ExactLogdet:
    params = [4096]
    param_names = ["dim"]
    timeout = 120

    def setup(self, dim: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(dim, dim, dtype=torch.float64, generator=g) * (0.5 / math.sqrt(dim))
        self.x = torch.randn(1, dim, dtype=torch.float64, generator=g)

    def time_exact_logdet(self, dim: int) -> None:
        logdet(lambda z: z + torch.tanh(z @ self.a.T), self.x)


class BoundSpeed:
    """asv: time of the certified bound of a 128->128 3x3 convolution against the exact spectrum
    (full fft2 + per-frequency SVD, Sedghi et al.) of the same layer, one run, as a ratio; 64^2 on
    the CPU, 256^2 on a GPU (where the bound runs batched Gram iteration on the device)."""

    params = [["cpu", "cuda"]]
    param_names = ["device"]
    timeout = 900

    def setup_cache(self) -> dict[str, dict[str, float]]:
        out = {}
        layer = _layer(128, "circular")
        for dev in self.params[0]:
            if dev == "cuda" and not torch.cuda.is_available():
                continue
            n = 64 if dev == "cpu" else 256
            operator_norm_bound(layer, (128, 8, 8), device=dev)  # warm-up (CUDA context, kernels)
            bound = _timeit(lambda: operator_norm_bound(layer, (128, n, n), device=dev), repeat=1)
            exact = _timeit(lambda: exact_circular_norm(layer.weight, 64), repeat=1) if dev == "cpu" else math.nan
            out[dev] = {"bound_s": bound, "exact_s": exact, "side": n}
        return out

    def setup(self, cache: dict, device: str) -> None:
        if device not in cache:
            raise NotImplementedError(f"no {device} device here")

    def track_bound_seconds(self, cache: dict, device: str) -> float:
        return cache[device]["bound_s"]

    track_bound_seconds.unit = "seconds"  # type: ignore[attr-defined]

    def track_bound_over_exact_fft_svd(self, cache: dict, device: str) -> float:
        if math.isnan(cache[device]["exact_s"]):
            raise NotImplementedError("the exact spectrum is timed on the CPU only")
        return cache[device]["bound_s"] / cache[device]["exact_s"]

    track_bound_over_exact_fft_svd.unit = "ratio"  # type: ignore[attr-defined]


def _timeit(fn, repeat: int = 3) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    rows = []
    for c in ConvNorms.params[0]:
        for mode in ConvNorms.params[1]:
            layer, shape = _layer(c, mode), (c, 32, 32)
            bound = operator_norm_bound(layer, shape)
            lo, _ = operator_norm_interval(layer, shape, n_iter=50)
            exact = exact_circular_norm(layer.weight, 32) if mode == "circular" else float("nan")
            si = operator_norm_bound(layer, shape, size_independent=True)
            rows.append(
                (
                    c,
                    mode,
                    bound / exact if mode == "circular" else float("nan"),
                    (bound - lo) / bound,
                    si / bound,
                    frobenius_bound(layer.weight) / bound,
                    _timeit(lambda: operator_norm_bound(layer, shape)),
                    _timeit(lambda: exact_circular_norm(layer.weight, 32)),
                    _timeit(lambda: power_iteration(layer, shape), 1),
                )
            )
    head = ("C", "padding", "bound/exact", "width", "sizeind/bound", "frob/bound", "t_bound", "t_exact", "t_power50")
    print(("{:>4} {:>9} {:>12} {:>8} {:>14} {:>11} {:>8} {:>8} {:>9}").format(*head))
    for r in rows:
        print("{:>4} {:>9} {:>12.6f} {:>8.4f} {:>14.4f} {:>11.3f} {:>8.3f} {:>8.3f} {:>9.3f}".format(*r))
    b = ExactLogdet()
    b.setup(4096)
    print(f"exact logdet d=4096: {_timeit(lambda: b.time_exact_logdet(4096), 1):.2f} s")


if __name__ == "__main__":
    main()
