"""Certified bounds of ``torch.export`` programs (proofs/05, item 20; injcert/theory/traced.py).

An exported program's ``.module()`` is a graph of ``torch.ops.aten`` ops with the weights as
``get_attr`` constants. Its bound must equal the eager module's (each aten op gets the rule of the
torch-level function it is), at a fixed shape and size-independently, and dominate the dense
float64 Jacobian; unknown aten ops are refused by name. The CLI certifies a saved ``.pt2``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import injcert
from injcert.cli import main
from injcert.errors import UnsupportedModuleError
from injcert.testing import exact_jacobian_norm

D = torch.float64
AUTO = torch.export.Dim.AUTO
DYN = ({0: AUTO, 2: AUTO, 3: AUTO}, {0: AUTO})


class ResNet(nn.Module):
    """A residual conv block with a time branch, as a user writes it."""

    def __init__(self, c: int = 3, w: int = 6) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, w, 3, padding=1), nn.Conv2d(w, c, 3, padding=1)
        self.t = nn.Linear(1, w)

    def forward(self, x, t):
        h = F.silu(self.a(x) + self.t(t[:, None])[:, :, None, None])
        return 0.5 * x + self.b(h)


class TinyUNet(nn.Module):
    """Down (avg pooling), middle, up (nearest), skip by concatenation, time embedding."""

    def __init__(self, c: int = 3, w: int = 4) -> None:
        super().__init__()
        self.inc = nn.Conv2d(c, w, 3, padding=1)
        self.down = nn.Conv2d(w, w, 3, padding=1)
        self.mid = nn.Conv2d(w, w, 3, padding=1)
        self.out = nn.Conv2d(2 * w, c, 3, padding=1)
        self.temb = nn.Sequential(nn.Linear(1, w), nn.GELU(), nn.Linear(w, w))

    def forward(self, x, t):
        emb = self.temb(t[:, None].to(x.dtype))[:, :, None, None]
        h = F.gelu(self.inc(x) + emb)
        d = F.avg_pool2d(self.down(h), 2)
        m = torch.tanh(self.mid(d))
        u = F.interpolate(m, scale_factor=2, mode="nearest")
        return self.out(torch.cat([u, h], dim=1))


class Zoo(nn.Module):
    """Many other layers: eval BatchNorm, in-place ReLU, max pooling, clamps, permute + linear, reductions."""

    def __init__(self, c: int = 3, w: int = 4) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, w, 3, padding=1)
        self.bn = nn.BatchNorm2d(w)
        self.r = nn.ReLU(inplace=True)
        self.fc = nn.Linear(w, w)
        self.b = nn.Conv2d(w, c, 1)

    def forward(self, x, t):
        h = self.r(self.bn(self.a(x)))
        h = F.leaky_relu(h, 0.2) + F.hardtanh(h) + h.clamp(-1, 1) - torch.sigmoid(h) / 3 + F.relu6(h)
        h = self.fc(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
        p = F.max_pool2d(F.pad(h, (1, 1, 1, 1)), 3, 1)
        h = h + p * 0.25 - h.mean(dim=(2, 3), keepdim=True) + torch.stack([h, -h], 0).mean(0)
        y = self.b(h)
        return y - x.flatten(1).reshape(x.shape) * t[:, None, None, None] + x.narrow(1, 0, 3) / 2


def _make(cls, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = cls().to(D)
    for m in net.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def _export(net: nn.Module, size: int = 8):
    x, t = torch.randn(2, 3, size, size, dtype=D), torch.rand(2, dtype=D)
    return torch.export.export(net, (x, t), dynamic_shapes=DYN)


NETS = [ResNet, TinyUNet, Zoo]
SHAPE = (3, 8, 8)


@pytest.mark.parametrize("cls", NETS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("size_independent", [False, True])
def test_exported_bound_equals_eager_bound(cls, size_independent) -> None:
    net = _make(cls)
    ep = _export(net)
    t = torch.tensor([0.3], dtype=D)
    eager = injcert.lipschitz_bound(net, SHAPE, args=(t,), size_independent=size_independent).value
    for module in (ep.module(), ep):  # the program's module, or the ExportedProgram itself
        got = injcert.lipschitz_bound(module, SHAPE, args=(t,), size_independent=size_independent).value
        assert got == pytest.approx(eager, rel=1e-9, abs=0), (got, eager)
    if not size_independent:  # the core-aten graph (convolution, addmm/bmm, _native_batch_norm_legit_no_training,
        core = ep.run_decompositions().module()  # max_pool2d_with_indices + getitem, constant_pad_nd, x*sigmoid(x))
        got = injcert.lipschitz_bound(core, SHAPE, args=(t,)).value
        assert got == pytest.approx(eager, rel=1e-9, abs=0), (got, eager)


@pytest.mark.parametrize("cls", NETS, ids=lambda c: c.__name__)
def test_exported_bound_dominates_the_dense_jacobian(cls) -> None:
    net = _make(cls, seed=1)
    module = _export(net).module()
    t = torch.tensor([0.7], dtype=D)
    bound = injcert.lipschitz_bound(module, SHAPE, args=(t,)).value
    xs = torch.randn((3, *SHAPE), dtype=D, generator=torch.Generator().manual_seed(0))
    truth = exact_jacobian_norm(lambda v: module(v, t.expand(v.shape[0])), xs)
    assert bound * (1 + 1e-9) >= truth > 0, (bound, truth)


def test_parameters_and_buffers_are_constants_and_only_x_is_the_input() -> None:
    from injcert.theory.lipschitz import BoundContext
    from injcert.theory.traced import _Bounder, _probe_input, _trace

    module = _export(_make(Zoo)).module()
    gm, inputs = _trace(module, _probe_input(module, SHAPE), (torch.tensor([0.3], dtype=D),), {})
    b = _Bounder(module, gm, inputs, BoundContext())
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    attrs = [n for n in gm.graph.nodes if n.op == "get_attr"]
    assert [n.name for n in placeholders] == ["x", "t"] and len(attrs) >= 8  # weights, running stats
    assert placeholders[0] in b.dep and placeholders[1] not in b.dep
    assert not any(n in b.dep for n in attrs)


def test_the_score_model_of_an_exported_network_has_the_eager_bound() -> None:
    net = _make(TinyUNet)
    ep = _export(net)
    eager = injcert.ScoreModel(net, "cosine", "v", probe_size=8)
    exported = injcert.ScoreModel(ep.module(), "cosine", "v", in_channels=3, probe_size=8)
    for t in (0.0, 0.4):
        assert exported.certified_lipschitz_at(t) == pytest.approx(eager.certified_lipschitz_at(t), rel=1e-9)


class _Sin(nn.Module):
    def forward(self, x, t):
        return torch.sin(x)


class _Attn(nn.Module):
    def forward(self, x, t):
        return torch.softmax(x, dim=1)


class _Norm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.n = nn.GroupNorm(1, 3)

    def forward(self, x, t):
        return self.n(x)


class _Indices(nn.Module):
    def forward(self, x, t):
        out, idx = F.max_pool2d(x, 2, return_indices=True)
        return F.interpolate(out + idx.to(x.dtype), scale_factor=2)


@pytest.mark.parametrize("cls, match", [
    (_Sin, r"torch\.ops\.aten\.sin\.default .*no traced Lipschitz rule for this aten op"),
    (_Attn, r"torch\.ops\.aten\._?softmax.*attention"),
    (_Norm, r"torch\.ops\.aten\.(native_)?group_norm.*normalisation"),
    (_Indices, r"indices or batch statistics"),
])
def test_unknown_or_unbounded_aten_ops_are_refused_by_name(cls, match) -> None:
    module = _export(cls().to(D).eval()).module()
    with pytest.raises(UnsupportedModuleError, match=match) as e:
        injcert.lipschitz_bound(module, SHAPE, args=(torch.tensor([0.3], dtype=D),))
    assert "\n" not in str(e.value)


def test_cli_certifies_a_saved_pt2(tmp_path, monkeypatch, capsys) -> None:
    torch.manual_seed(0)
    net = TinyUNet().eval()  # float32, as users save them
    ep = torch.export.export(net, (torch.randn(2, 3, 16, 16), torch.rand(2)), dynamic_shapes=DYN)
    torch.export.save(ep, str(tmp_path / "score.pt2"))
    monkeypatch.chdir(tmp_path)
    rc = main(["certify", "score.pt2", "--schedule", "cosine", "--parameterization", "eps", "--steps", "4",
               "--samples", "0", "--quiet"])
    out, err = capsys.readouterr()
    assert rc in (0, 1), out + err
    line = next(v for v in out.splitlines() if v.startswith("injcert certify: VERDICT:"))
    assert "certified L = " in line and "lipschitz_bound" not in line.split(";")[0], line
    assert "NOT CERTIFIED: flow_bilipschitz" in line
