"""Certified bounds of networks written as a user writes them, next to what brackets them.

    python benchmarks/user_network_bounds.py [--size 8] [--points 4]

Three small score-network-like modules with custom ``forward`` methods and no registered rule — a
residual conv net, a U-Net with concatenation, average pooling and nearest upsampling, and the same
U-Net with a time branch (an MLP of t giving a bias and a per-channel scale) and spectral-norm
parametrized convolutions — each bounded by :func:`injcert.lipschitz_bound` (traced op by op), next
to an empirical lower bound (the largest exact Jacobian norm at random points: the true constant is
at least this) and the naive composition (the product of every convolution's exact operator norm
with the activations' constants, summed at the joins), once with each layer's exact norm at this
size and once with its certified bound (:func:`injcert.operator_norm_bound`, which at small sizes
lies a few per cent above the exact norm). A sound bound that uses the structure lies between the
lower bound and the naive product of the same per-layer bounds.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import injcert  # noqa: E402
from injcert.benchlib import markdown_table  # noqa: E402
from injcert.testing.assertions import exact_jacobian_norm  # noqa: E402


class ResNet(nn.Module):
    def __init__(self, c: int = 3, w: int = 8) -> None:
        super().__init__()
        self.inp = nn.Conv2d(c, w, 3, padding=1)
        self.a1, self.a2 = nn.Conv2d(w, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1)
        self.out = nn.Conv2d(w, c, 3, padding=1)

    def forward(self, x):
        h = self.inp(x)
        h = h + 0.5 * self.a2(F.relu(self.a1(F.relu(h))))
        return self.out(F.silu(h))


class UNet(nn.Module):
    def __init__(self, c: int = 3, w: int = 8, time: bool = False, sn: bool = False) -> None:
        super().__init__()
        wrap = nn.utils.parametrizations.spectral_norm if sn else (lambda m: m)
        self.e1, self.e2 = wrap(nn.Conv2d(c, w, 3, padding=1)), wrap(nn.Conv2d(w, 2 * w, 3, padding=1))
        self.d1 = wrap(nn.Conv2d(3 * w, w, 3, padding=1))
        self.out = wrap(nn.Conv2d(w, c, 1))
        self.time = nn.Sequential(nn.Linear(1, 16), nn.SiLU(), nn.Linear(16, 2 * w)) if time else None

    def forward(self, x, t=None):
        h1 = F.gelu(self.e1(x))
        h2 = self.e2(F.avg_pool2d(h1, 2))
        if self.time is not None:
            bias, scale = self.time(t.view(-1, 1)).chunk(2, dim=1)
            h1 = h1 * (1 + 0.1 * torch.tanh(scale))[:, :, None, None] + bias[:, :, None, None]
        up = F.interpolate(F.relu(h2), scale_factor=2, mode="nearest")
        return self.out(F.relu(self.d1(torch.cat([up, h1], dim=1))))


def _conv_norm(conv: nn.Conv2d, shape: tuple) -> float:
    """The exact operator norm of a convolution's linear part on inputs of ``shape`` (dense SVD)."""
    w = conv.weight.detach().double()
    x = torch.zeros(1, *shape, dtype=torch.float64)
    jac = torch.func.jacrev(lambda v: F.conv2d(v.view_as(x), w, None, conv.stride, conv.padding).reshape(-1))(
        x.reshape(-1))
    return float(torch.linalg.matrix_norm(jac, 2))


def _certified_norm(conv: nn.Conv2d, shape: tuple) -> float:
    return float(injcert.operator_norm_bound(conv, shape))


def naive(net: nn.Module, c: int, s: int, _conv_norm=_conv_norm) -> float:
    """Product of per-layer norms (exact by default) along the network (joins: sum), activations at
    their constants."""
    gelu, silu = 1.1290, 1.0999
    if isinstance(net, ResNet):
        w = net.inp.out_channels
        a = _conv_norm(net.inp, (c, s, s))
        inner = 1 + 0.5 * _conv_norm(net.a1, (w, s, s)) * _conv_norm(net.a2, (w, s, s))
        return a * inner * silu * _conv_norm(net.out, (w, s, s))
    w = net.e1.out_channels
    l1 = gelu * _conv_norm(net.e1, (c, s, s))
    if net.time is not None:
        l1 *= 1.1
    l2 = l1 * 0.5 * _conv_norm(net.e2, (w, s // 2, s // 2)) * 2.0  # avg pool 1/2, nearest upsampling x2
    return (l1 + l2) * _conv_norm(net.d1, (3 * w, s, s)) * _conv_norm(net.out, (w, s, s))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--points", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    c, s = 3, args.size
    rows = []
    t = torch.tensor([0.3])
    for name, net, extra in (("residual conv net", ResNet(), ()), ("U-Net (cat, pool, nearest)", UNet(), ()),
                             ("U-Net + time branch + spectral_norm", UNet(time=True, sn=True), (t,))):
        net = net.eval()
        bound = injcert.lipschitz_bound(net, (c, s, s), args=extra).value
        pts = torch.rand(args.points, c, s, s, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
        net64 = net.double()
        lower = exact_jacobian_norm(lambda x: net64(x, *(e.double() for e in extra)) if extra else net64(x), pts)
        net = net.float()
        upper, upper_cert = naive(net, c, s), naive(net, c, s, _certified_norm)
        rows.append([name, lower, bound, upper, upper_cert,
                     "yes" if lower <= bound * (1 + 1e-9) and bound <= upper_cert else "NO"])
    print(markdown_table(["network", "empirical lower bound", "certified (traced)", "naive, exact layer norms",
                          "naive, certified layer norms", "lower <= certified <= naive (certified norms)"], rows))


if __name__ == "__main__":
    main()
