"""Traced Lipschitz bounds of users' modules (proofs/05, items 12-18; injcert/theory/traced.py).

Every bound is checked against the spectral norm of dense float64 Jacobians (a lower bound of the
true constant); every rule has a case whose exact constant is known, so a wrong rule fails.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.parametrizations import orthogonal, spectral_norm, weight_norm

import injcert
from injcert.errors import UnsupportedModuleError
from injcert.testing import exact_jacobian_norm
from injcert.theory.lipschitz import lipschitz_bound, residual_bound
from injcert.theory.traced import traced_lipschitz_bound

SHAPE = (2, 6, 6)
D = torch.float64


def _truth(fn, shape=SHAPE, n=3, seed=0) -> float:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn((n, *shape), dtype=D, generator=g)
    return exact_jacobian_norm(fn, xs)


def _exact_norm(layer: nn.Module, shape) -> float:
    """Exact operator norm of a bias-free linear layer (dense Jacobian)."""
    return exact_jacobian_norm(lambda v: F.conv2d(v, layer.weight, None, layer.stride, layer.padding)
                               if isinstance(layer, nn.Conv2d) else F.linear(v, layer.weight),
                               torch.zeros((1, *shape), dtype=D))


class Fn(nn.Module):
    """A user module whose forward is ``fn(self, x, *args)``."""

    def __init__(self, fn, **mods):
        super().__init__()
        self.fn = fn
        for k, v in mods.items():
            setattr(self, k, v)

    def forward(self, x):
        return self.fn(self, x)


def _bound_ok(net, shape=SHAPE, args=(), kwargs=None):
    b = lipschitz_bound(net, shape, args=args, kwargs=kwargs).value
    truth = _truth(lambda v: net(v, *args, **(kwargs or {})), shape)
    assert b * (1 + 1e-9) >= truth, (b, truth)
    return b, truth


# ----------------------------------------------------------------------------- random user networks


def _conv(cin, cout, param):
    c = nn.Conv2d(cin, cout, 3, padding=1)
    return {"none": lambda m: m, "sn": spectral_norm, "wn": weight_norm}[param](c)


class Residual(nn.Module):
    def __init__(self, param):
        super().__init__()
        self.a, self.b = _conv(2, 2, param), _conv(2, 2, param)

    def forward(self, x, t):
        return x + self.b(F.relu(self.a(x)))


class TwoBranch(nn.Module):
    def __init__(self, param):
        super().__init__()
        self.a, self.b, self.mix = _conv(2, 2, param), _conv(2, 1, param), nn.Conv2d(3, 2, 1)

    def forward(self, x, t):
        return self.mix(torch.cat([self.a(x), F.silu(self.b(x))], dim=1))


class UpDown(nn.Module):
    def __init__(self, param):
        super().__init__()
        self.c = _conv(2, 2, param)

    def forward(self, x, t):
        h = F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(torch.tanh(self.c(h)), 2)


class TimeBlock(nn.Module):
    def __init__(self, param):
        super().__init__()
        self.c = _conv(2, 2, param)
        self.scale = nn.Sequential(nn.Linear(1, 4), nn.SiLU(), nn.Linear(4, 2))
        self.shift = nn.Linear(1, 2)

    def forward(self, x, t):
        tt = t.view(-1, 1)
        s = self.scale(tt)[:, :, None, None]
        return self.c(x) * s + self.shift(tt)[:, :, None, None] + t.sum()


class Structure(nn.Module):
    def __init__(self, param):
        super().__init__()
        self.c = _conv(4, 2, param)

    def forward(self, x, t):
        h = F.pad(x[:, :, 1:, :], (0, 0, 1, 0))  # crop one row, pad it back with zeros
        s = torch.stack([h, x.flip(-1)], dim=1).flatten(1, 2)  # (1, 4, H, W)
        out = self.c(s)
        return out.reshape(out.shape[0], -1).reshape(x.shape)


BLOCKS = [Residual, TwoBranch, UpDown, TimeBlock, Structure]


class UserNet(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x, t):
        for blk in self.blocks:
            x = blk(x, t)
        return x


@st.composite
def user_nets(draw):
    torch.manual_seed(draw(st.integers(0, 10_000)))
    kinds = draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=3))
    param = draw(st.sampled_from(["none", "sn", "wn"]))
    net = UserNet([k(param) for k in kinds]).double().eval()
    t = torch.tensor([draw(st.floats(0.0, 1.0))], dtype=D)
    return net, t


@given(user_nets())
def test_traced_bound_dominates_dense_jacobians(case):
    net, t = case
    b = lipschitz_bound(net, SHAPE, args=(t,))
    truth = _truth(lambda v: net(v, t))
    assert b.value * (1 + 1e-9) >= truth
    assert b.layers  # leaf layers are listed
    assert lipschitz_bound(net, SHAPE, kwargs={"t": t}).value == b.value


def test_traced_chain_equals_the_sequential_rule_and_the_naive_product():
    torch.manual_seed(3)
    c1, c2 = nn.Conv2d(2, 3, 3, padding=1).double(), nn.Conv2d(3, 2, 3, padding=1).double()
    seq = lipschitz_bound(nn.Sequential(c1, nn.ReLU(), c2), SHAPE).value
    chain = Fn(lambda s, x: s.c2(F.relu(s.c1(x))), c1=c1, c2=c2)
    assert lipschitz_bound(chain, SHAPE).value == seq
    naive = injcert.operator_norm_bound(c1, SHAPE) * injcert.operator_norm_bound(c2, (3, 6, 6))
    assert seq <= naive * (1 + 1e-12)  # the naive composition of the per-layer bounds
    l1, l2 = nn.Linear(72, 10).double(), nn.Linear(10, 72).double()
    lin = Fn(lambda s, x: s.l2(F.gelu(s.l1(x.flatten(1)))).view(x.shape), l1=l1, l2=l2)
    b, _ = _bound_ok(lin)
    exact = _exact_norm(l1, (72,)) * _exact_norm(l2, (10,)) * injcert.theory.lipschitz.GELU_LIPSCHITZ
    assert exact <= b <= exact * (1 + 1e-6)  # exact per-layer norms (Gram iteration is tight on Linear)
    res = Fn(lambda s, x: x + s.c2(F.relu(s.c1(x))), c1=c1, c2=c2)
    assert lipschitz_bound(res, SHAPE).value == residual_bound(seq)
    _bound_ok(res)


# ----------------------------------------------------------------------------- one exact case per rule


@pytest.mark.parametrize("fn, exact", [
    (lambda s, x: torch.cat([x, x], 1), math.sqrt(2)),  # max instead of sqrt-sum would give 1
    (lambda s, x: torch.cat([x, 2 * x, torch.ones_like(x)], 1), math.sqrt(5)),
    (lambda s, x: torch.stack([x, x, x], 0), math.sqrt(3)),
    (lambda s, x: x + x - (-x), 3.0),  # shared sub-paths: the sum rule
    (lambda s, x: x[:, :1] + torch.zeros(1, 4, 6, 6, dtype=D), 2.0),  # broadcast copies 4 times
    (lambda s, x: x * torch.tensor([-3.0, 0.5], dtype=D).view(1, 2, 1, 1), 3.0),
    (lambda s, x: x / torch.tensor([4.0, -0.25], dtype=D).view(1, 2, 1, 1), 4.0),
    (lambda s, x: -x * 0.5 + 7.0, 0.5),
    (lambda s, x: F.pad(x, (1, 1, 1, 1), value=3.0), 1.0),
    (lambda s, x: F.pad(x, (2, 2, 2, 2), mode="replicate"), 3.0),  # corner copied 3 x 3 times
    (lambda s, x: F.pad(x, (2, 1, 0, 0), mode="reflect"), math.sqrt(2)),
    (lambda s, x: F.pad(x, (3, 3, 0, 0), mode="circular"), math.sqrt(2)),
    (lambda s, x: F.interpolate(x, scale_factor=2, mode="nearest"), 2.0),
    (lambda s, x: F.interpolate(x, scale_factor=3), 3.0),
    (lambda s, x: F.avg_pool2d(x, 2), 0.5),
    (lambda s, x: F.max_pool2d(x, 3, 1, 1), 3.0),
    (lambda s, x: x.mean(dim=(2, 3)), 1 / 6),
    (lambda s, x: x.sum(dim=1), math.sqrt(2)),
    (lambda s, x: torch.sum(x), 6 * math.sqrt(2)),
    (lambda s, x: x.repeat(1, 2, 1, 1), math.sqrt(2)),
    (lambda s, x: x[:, :1].expand(1, 3, 6, 6), math.sqrt(3)),
    (lambda s, x: x[:, 1:, ::2, 1:-1].permute(0, 3, 1, 2).reshape(1, -1).unsqueeze(0).squeeze(0), 1.0),
    (lambda s, x: F.leaky_relu(x, 2.0), 2.0),
    (lambda s, x: F.leaky_relu(x, 0.5) + torch.clamp(x, -100.0, 100.0), 2.0),
    (lambda s, x: 4 * torch.sigmoid(x * 0.0 + 0.0 * x) + F.relu(x).clamp(-100.0, 100.0), 1.0),
    (lambda s, x: F.linear(x.flatten(1), s.w), None),
    (lambda s, x: x.flatten(1) @ s.w.T, None),
    (lambda s, x: s.w @ x.flatten(2).transpose(1, 2).reshape(72, 1), None),
    (lambda s, x: F.conv2d(x, s.k, padding=1), None),
    (lambda s, x: F.conv_transpose2d(x, s.k, stride=2), None),
])
def test_each_rule_against_its_exact_constant(fn, exact):
    torch.manual_seed(0)
    net = Fn(fn)
    net.register_buffer("w", torch.randn(5, 72, dtype=D))
    net.register_buffer("k", torch.randn(2, 2, 3, 3, dtype=D))
    b, truth = _bound_ok(net)
    if exact is not None:
        assert math.isclose(truth, exact, rel_tol=1e-9)
    if any("conv" in name for name in fn.__code__.co_names):  # the weight's bound is the equivalent layer's operator_norm_bound
        tr = "conv_transpose2d" in fn.__code__.co_names
        layer = (nn.ConvTranspose2d(2, 2, 3, stride=2, bias=False) if tr else nn.Conv2d(2, 2, 3, padding=1, bias=False))
        layer = layer.double()
        with torch.no_grad():
            layer.weight.copy_(net.k)
        assert b == injcert.operator_norm_bound(layer, SHAPE)
    else:
        assert b <= truth * (1 + 1e-6) + 1e-12, (b, truth)  # these rules are exact


def test_time_branch_scale_is_charged_at_its_max():
    torch.manual_seed(1)
    blk = TimeBlock("none").double()
    for tv in (0.0, 0.7):
        t = torch.tensor([tv], dtype=D)
        b, truth = _bound_ok(blk, args=(t,))
        s = blk.scale(t.view(-1, 1)).abs().max().item()
        conv = lipschitz_bound(blk.c, SHAPE).value
        assert math.isclose(b, conv * s, rel_tol=1e-12)


def test_rows_and_size_independent_traced_bound():
    net = UserNet([Residual("sn"), TwoBranch("none")]).double()
    t = torch.zeros(1, dtype=D)
    b = lipschitz_bound(net, SHAPE, args=(t,))
    names = [r.name for r in b.layers]
    assert names[0] == "blocks.0.a" and "blocks.0.b" in names and "blocks.0.relu" in names
    assert "ParametrizedConv2d" in b.table() or "Conv2d" in b.table()
    big = lipschitz_bound(net, SHAPE, args=(t,), size_independent=True).value
    assert big * (1 + 1e-9) >= _truth(lambda v: net(v, t), (2, 9, 7))
    with pytest.raises(UnsupportedModuleError, match="sum over n"):
        lipschitz_bound(Fn(lambda s, x: x.sum(1)), SHAPE, size_independent=True)


def test_custom_module_inside_a_sequential_is_traced():
    torch.manual_seed(2)
    half = Fn(lambda s, x: 0.5 * x)
    b = lipschitz_bound(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1).double(), half), SHAPE)
    assert [r.type for r in b.layers] == ["Conv2d", "Fn"]
    assert b.layers[1].bound == 0.5


def test_inplace_updates_are_checked():
    torch.manual_seed(4)
    c = nn.Conv2d(2, 2, 3, padding=1).double()

    def ok(s, x):
        h = s.c(x)
        h += x
        return F.relu(h, inplace=True)

    _bound_ok(Fn(ok, c=c))

    def aliased(s, x):
        y = s.c(x)
        z = y
        z += x  # mutates y too: y + z is 2 c(x) + 2x, not 2 c(x) + x
        return y + z

    with pytest.raises(UnsupportedModuleError, match="in-place.*aliased"):
        lipschitz_bound(Fn(aliased, c=c), SHAPE)

    def scale_later(s, x):
        k = torch.ones(1, dtype=D)
        h = x * k
        k *= 10.0  # runs once at trace time on the frozen constant: the graph would compute 20 x, forward 11 x
        return h + x * k

    with pytest.raises(UnsupportedModuleError, match="does not reproduce its forward"):
        lipschitz_bound(Fn(scale_later), SHAPE)
    with pytest.raises(UnsupportedModuleError, match="in-place"):
        lipschitz_bound(Fn(lambda s, x: x.add_(1.0)), SHAPE)


def test_random_factors_and_training_dropout_are_refused():
    with pytest.raises(UnsupportedModuleError, match="random"):
        lipschitz_bound(Fn(lambda s, x: x * torch.rand(1, dtype=D)), SHAPE)
    with pytest.raises(UnsupportedModuleError, match="dropout"):
        lipschitz_bound(Fn(lambda s, x: F.dropout(x, 0.5)), SHAPE)
    assert lipschitz_bound(Fn(lambda s, x: F.dropout(x, 0.5, training=False)), SHAPE).value == 1.0
    with pytest.raises(UnsupportedModuleError, match="does not reproduce"):  # frozen at trace time by fx
        lipschitz_bound(Fn(lambda s, x: x + torch.randn(1, dtype=D)), SHAPE)
    t = torch.zeros(1, dtype=D)  # a random draw from a traced input is a random node: refused as a factor
    with pytest.raises(UnsupportedModuleError, match="factor is random"):
        lipschitz_bound(_TwoIn(), SHAPE, args=(t,))


class _TwoIn(nn.Module):
    def forward(self, x, t):
        return x * torch.rand_like(t)


# ----------------------------------------------------------------------------- refusals


class GNBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(2, 2, 3, padding=1), nn.GroupNorm(1, 2)

    def forward(self, x):
        return x + self.norm(self.conv(x))


class Attn(nn.Module):
    def forward(self, x):
        q = x.flatten(2)
        return q @ F.softmax(q.transpose(1, 2) @ q, dim=-1)


@pytest.mark.parametrize("net, pattern", [
    (GNBlock(), r"GroupNorm module 'norm' at norm \(.*test_traced_bounds.py:\d+ in forward: return x \+ "
                r"self.norm\(self.conv\(x\)\)\): normalisation by statistics of x"),
    (Fn(lambda s, x: F.group_norm(x, 1)), r"F.group_norm .*normalisation by statistics of x"),
    (Fn(lambda s, x: x * x), r"operator.mul at <root> .*product of two x-dependent tensors"),
    (Attn(), r"operator.matmul .*dot-product attention has no global Lipschitz bound \(Kim et al. 2021\)"),
    (Fn(lambda s, x: F.softmax(x, -1)), r"F.softmax .*dot-product attention"),
    (Fn(lambda s, x: torch.exp(x)), r"torch.exp .*no traced Lipschitz rule"),
    (Fn(lambda s, x: x[:, torch.tensor([0, 0])]), r"indexing"),
    (Fn(lambda s, x: 1.0 / x), r"denominator"),
    (Fn(lambda s, x: F.softplus(x)), r"Softplus"),
])
def test_refusals_are_one_line_naming_the_op(net, pattern):
    with pytest.raises(UnsupportedModuleError, match=pattern) as e:
        lipschitz_bound(net.double(), SHAPE)
    assert "\n" not in str(e.value)


def test_untraceable_and_torch_modules_keep_naming_the_type():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedModuleError, match="Branchy.*could not trace"):
        lipschitz_bound(Branchy(), SHAPE)
    with pytest.raises(UnsupportedModuleError, match="no Lipschitz rule for module type PixelShuffle"):
        lipschitz_bound(nn.PixelShuffle(2), (4, 2, 2))


def test_cond_unet_keeps_its_hand_rule_and_does_not_trace():
    from injcert.model.unet import CondUNet

    torch.manual_seed(0)
    m = CondUNet(base_channels=4, channel_mults=(1, 2), lipschitz_budget=30.0, emb_dim=8).double().eval()
    assert lipschitz_bound(m, (3, 8, 8)).value > 0  # the registered rule, as before
    # its forward branches on its inputs (Python control flow), which torch.fx cannot trace
    with pytest.raises(UnsupportedModuleError, match="CondUNet.*could not trace"):
        traced_lipschitz_bound(m, (3, 8, 8), args=(torch.tensor([0.5], dtype=D),))


def test_public_exports():
    for name in ("register_lipschitz_rule", "residual_bound", "concat_bound", "product_bound", "sum_bound"):
        assert getattr(injcert, name) is getattr(injcert.theory, name)
        assert name in injcert.__all__


# ----------------------------------------------------------------------------- operator_norm_interval


@pytest.mark.parametrize("param", [spectral_norm, orthogonal, weight_norm])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_operator_norm_interval_reads_parametrized_weights(param, kind):
    """Regression: ``KeyError: 'weight'`` on parametrized layers (the weight lives in parametrizations)."""
    torch.manual_seed(5)
    layer = param(nn.Linear(4, 4) if kind == "linear" else nn.Conv2d(2, 2, 3, padding=1)).double().eval()
    shape = (4,) if kind == "linear" else (2, 5, 5)
    lo, hi = injcert.operator_norm_interval(layer, shape)
    w = layer.weight.detach()
    exact = exact_jacobian_norm(lambda v: F.linear(v, w) if kind == "linear" else F.conv2d(v, w, padding=1),
                                torch.zeros((1, *shape), dtype=D))
    assert lo <= exact * (1 + 1e-9) and hi >= exact * (1 - 1e-9)
    assert lo >= 0.99 * exact
