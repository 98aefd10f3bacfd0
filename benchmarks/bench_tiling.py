"""Tiled high-resolution evaluation: peak memory vs whole-image evaluation, and bit identity.

One network evaluation $\\varepsilon_\\theta(x, t)$ at 1024² and 2048² (float32, 3 channels) of the
small :func:`injcert.cli.compare.fallback_model` architecture (16 channels, 2 levels; the
tiling mechanism, not the weights, is measured), either on the whole image or through
:class:`injcert.tasks.tiling.TiledModel` with 256² tiles and the model's receptive-field halo.
``peakmem_forward`` is the process's peak resident memory; ``track_max_abs_diff`` must be 0
(tiled output equal to the whole-image output bit for bit).

Run ``python benchmarks/bench_tiling.py`` for a table.
"""

from __future__ import annotations

import resource
import time

import torch

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


if __name__ == "__main__":
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
