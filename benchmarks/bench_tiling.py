"""Tiled high-resolution evaluation: peak memory vs whole-image evaluation, and bit identity.

One network evaluation $\\varepsilon_\\theta(x, t)$ at 1024² and 2048² (float32, 3 channels) of the
small :func:`injcert.cli.compare.fallback_model` architecture (16 channels, 2 levels; the
tiling mechanism, not the weights, is measured), either on the whole image or through
:class:`injcert.tasks.tiling.TiledModel` with 256² tiles and the model's receptive-field halo.
``peakmem_forward`` is the process's peak resident memory; ``track_max_abs_diff`` must be 0
(tiled output equal to the whole-image output bit for bit).

``ConvSpeed`` times one evaluation of the shipped model at 256² under the three convolution paths:
the shape-stable one as shipped (im2col a strip of rows at a time, :data:`~injcert.tasks.tiling.STRIP_BYTES`),
the same with one strip for the whole image (how it was first written: one im2col of the whole
input, then the same GEMMs; the same bits), and PyTorch's default oneDNN kernels (faster, not
shape-stable).

Run ``python benchmarks/bench_tiling.py`` for the memory table, ``python benchmarks/bench_tiling.py
speed`` for the speed table.
"""

from __future__ import annotations

import resource
import sys
import time

import torch

import injcert
import injcert.tasks.tiling as tiling
from injcert.cli.compare import fallback_model
from injcert.tasks.tiling import TiledModel, shape_stable_convolutions

torch.set_num_threads(1)

SIZES = [1024, 2048]
MODES = ["whole", "tiled"]
TILE = 256


def _setup(size: int):
    model = fallback_model()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.full((1,), 0.5)
    return model, x, t


def _forward(model, x, t, mode: str) -> torch.Tensor:
    """``tiled``: TiledModel; ``whole``: one evaluation with the same (shape-stable) convolutions;
    ``whole-onednn``: one evaluation with PyTorch's default (faster, shape-dependent) kernels."""
    with torch.no_grad():
        if mode == "tiled":
            return TiledModel(model, tile=TILE)(x, t)
        with shape_stable_convolutions(mode == "whole"):
            return model(x, t)


class TilingMemory:
    params = (SIZES, MODES)
    param_names = ["size", "mode"]
    timeout = 300

    def setup(self, size: int, mode: str) -> None:
        self.model, self.x, self.t = _setup(size)

    def peakmem_forward(self, size: int, mode: str) -> None:
        _forward(self.model, self.x, self.t, mode)


class TilingIdentity:
    params = ([1024],)
    param_names = ["size"]
    timeout = 300

    def setup(self, size: int) -> None:
        self.model, self.x, self.t = _setup(size)

    def track_max_abs_diff(self, size: int) -> float:
        whole = _forward(self.model, self.x, self.t, "whole")
        tiled = _forward(self.model, self.x, self.t, "tiled")
        return float((whole - tiled).abs().max())

    track_max_abs_diff.unit = "max |tiled - whole| (0 = bit-identical)"

    def track_max_abs_diff_vs_onednn(self, size: int) -> float:
        whole = _forward(self.model, self.x, self.t, "whole-onednn")
        tiled = _forward(self.model, self.x, self.t, "tiled")
        return float((whole - tiled).abs().max())

    track_max_abs_diff_vs_onednn.unit = "max |tiled - whole with oneDNN| (rounding only)"


#: ConvSpeed's paths: name -> (shape-stable, strip bytes)
CONV_PATHS = {"stable, strips": (True, None), "stable, one strip": (True, 1 << 40), "oneDNN": (False, None)}


class ConvSpeed:
    params = (list(CONV_PATHS), ["float32", "float64"])
    param_names = ["path", "dtype"]
    timeout = 300

    def setup(self, path: str, dtype: str) -> None:
        dt = getattr(torch, dtype)
        self.model = injcert.load_checkpoint(str(injcert.DEFAULT_CHECKPOINT)).to(dt)
        gen = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(2, 1, 3, 256, 256, generator=gen, dtype=dt)
        self.m = torch.ones(1, 3, 256, 256, dtype=dt)
        self.t = torch.full((1,), 0.3, dtype=dt)
        self.saved = tiling.STRIP_BYTES

    def teardown(self, path: str, dtype: str) -> None:
        tiling.STRIP_BYTES = self.saved

    def time_forward(self, path: str, dtype: str) -> None:
        stable, strip = CONV_PATHS[path]
        tiling.STRIP_BYTES = self.saved if strip is None else strip
        with torch.no_grad(), shape_stable_convolutions(stable):
            self.model(self.x, self.t, self.y, self.m)


def speed_table(repeats: int = 3) -> None:
    """Every path in one process, interleaved, best of ``repeats``: ratios to the shipped path."""
    for dtype in ConvSpeed.params[1]:
        best = {}
        for _ in range(repeats):
            for path in CONV_PATHS:
                bench = ConvSpeed()
                bench.setup(path, dtype)
                t0 = time.perf_counter()
                bench.time_forward(path, dtype)
                best[path] = min(best.get(path, float("inf")), time.perf_counter() - t0)
                bench.teardown(path, dtype)
        ref = best["stable, strips"]
        print(f"{dtype}, {torch.get_num_threads()} threads: " + "; ".join(
            f"{p} {sec:.3f} s ({sec / ref:.2f}x)" for p, sec in best.items()))


if __name__ == "__main__" and sys.argv[1:] == ["speed"]:
    speed_table()
elif __name__ == "__main__":
    import multiprocessing as mp

    def child(size: int, mode: str, q) -> None:
        model, x, t = _setup(size)
        t0 = time.perf_counter()
        _forward(model, x, t, mode)
        q.put((time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))

    ctx = mp.get_context("fork")
    for size in SIZES:
        for mode in MODES:
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(size, mode, q))
            p.start()
            sec, mib = q.get()
            p.join()
            print(f"{size}^2 {mode:6s} peak RSS {mib:8.0f} MiB  {sec:6.2f} s")
