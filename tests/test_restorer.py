"""The conditional restorer R(c) and the score network anchored on it (proofs/05, item 11).

R reads only the condition (y, m), so it must change no bound in x; an x-dependence planted inside it
must be caught by the same dense-Jacobian check that tests every bound.
"""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import tiny_unet
from injcert.benchlib import _start_name
from injcert.cli.commands import _reconstruct_info
from injcert.data.corruptions import expand_map, make_corruption
from injcert.model.restorer import (BIHARMONIC_ITERATIONS, Restorer, biharmonic_fill, normalized_convolution,
                                    pull_push_fill)
from injcert.model.unet import CondUNet
from injcert.tasks.guided import guided_encode
import injcert.tasks.reconstruct as rc
from injcert.tasks.reconstruct import BLEND, RESTORER, reconstruct_full
from injcert.tasks.tiling import TiledModel
from injcert.testing.assertions import exact_jacobian_norm

ANCHORED = dict(parameterization="denoiser", lipschitz_kappa=3.5, data_variance=0.25)


def _randomize(module: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def anchored_unet(seed: int = 0, trained: bool = True) -> CondUNet:
    """A tiny score network with a restorer whose zero-initialised last layer is randomised
    (an untrained restorer *is* the pull-push fill; a trained one is not)."""
    net = tiny_unet(seed, restorer={"width": 4, "mults": [1, 2]}, **ANCHORED)
    if trained:
        _randomize(net.restorer, seed + 1)
    return net.eval()


def _obs(seed: int, h: int, w: int, kind: str = "random", dtype=torch.float32):
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1
    y, m = make_corruption(kind)(x, seed)
    return x, y, expand_map(m)


@given(h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 10_000))
@settings(max_examples=25)
def test_restorer_any_size_keeps_observed_pixels(h: int, w: int, seed: int) -> None:
    torch.manual_seed(seed)
    r = Restorer(3, 3, width=4, mults=[1, 2, 2]).eval()
    _randomize(r, seed)
    _, y, m = _obs(seed, h, w)
    with torch.no_grad():
        out = r(y, m)
    assert out.shape == y.shape and torch.isfinite(out).all()
    known = (m[:, :1] == 1).expand_as(y)
    assert torch.equal(out[known], y[known])


@given(h=st.integers(1, 33), w=st.integers(1, 33), c=st.floats(-1, 1), seed=st.integers(0, 1000))
@settings(max_examples=25)
def test_pull_push_fill_reproduces_a_constant_and_keeps_observed(h: int, w: int, c: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    known = (torch.rand(1, 1, h, w, generator=g, dtype=torch.float64) < 0.3).to(torch.float64)
    if not bool(known.any()):
        known[..., 0, 0] = 1.0
    y = torch.full((1, 2, h, w), c, dtype=torch.float64)
    fill = pull_push_fill(y, known)
    assert torch.allclose(fill, y, atol=1e-12)  # a convex combination of observed values everywhere
    noisy = torch.rand(1, 2, h, w, generator=g, dtype=torch.float64)
    fill = pull_push_fill(noisy, known)
    kb = known.bool().expand_as(noisy)
    assert torch.allclose(fill[kb], noisy[kb], rtol=0, atol=1e-12)
    assert float(fill.min()) >= float(noisy[kb].min()) - 1e-12 and float(fill.max()) <= float(noisy[kb].max()) + 1e-12
    est, cert = normalized_convolution(y, known, 2)
    assert torch.allclose(est[cert.expand_as(est) > 1e-3], y[cert.expand_as(est) > 1e-3], atol=1e-9)


def test_untrained_restorer_is_the_classical_fill() -> None:
    net = anchored_unet(trained=False)
    _, y, m = _obs(3, 20, 24, "box")
    with torch.no_grad():
        out = net.anchor(y, m)
    known = (m[:, :1] == 1).to(y.dtype)
    assert torch.equal(out, torch.where(known.bool().expand_as(y), y, biharmonic_fill(y, known, BIHARMONIC_ITERATIONS)))


@given(h=st.integers(2, 10), w=st.integers(2, 10), seed=st.integers(0, 1000))
@settings(max_examples=20)
def test_biharmonic_fill_solves_its_normal_equations(h: int, w: int, seed: int) -> None:
    """Conjugate gradients run for as many steps as there are unknowns solve P L^2 P u = -P L^2 (w y)
    (exact in exact arithmetic): the residual is at rounding level, observed pixels are kept, and an
    image that is constant stays constant."""
    from injcert.model.restorer import _neumann_laplacian

    g = torch.Generator().manual_seed(seed)
    known = (torch.rand(1, 1, h, w, generator=g, dtype=torch.float64) < 0.5).to(torch.float64)
    known[..., 0, 0] = 1.0
    y = torch.rand(1, 2, h, w, generator=g, dtype=torch.float64) * known
    f = biharmonic_fill(y, known, iterations=2 * h * w)
    one = torch.ones(1, 1, h, w, dtype=torch.float64)
    deg = _neumann_laplacian(one, torch.zeros_like(one))
    miss = 1 - known
    res = miss * _neumann_laplacian(_neumann_laplacian(f, deg), deg)
    scale = float(_neumann_laplacian(_neumann_laplacian(known * y, deg), deg).abs().max()) + 1.0
    assert float(res.abs().max()) <= 1e-8 * scale
    assert torch.equal(f[known.bool().expand_as(f)], y[known.bool().expand_as(y)])
    const = torch.full_like(y, 0.3) * known
    assert torch.allclose(biharmonic_fill(const, known, iterations=2 * h * w), torch.full_like(y, 0.3), atol=1e-9)


_SYMMETRIES = [(flip, turns) for flip in (False, True) for turns in range(4)]


def _sym(t: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    return torch.rot90(t.flip(-1) if flip else t, turns, (-2, -1))


@given(h=st.integers(1, 24), w=st.integers(1, 24), seed=st.integers(0, 10_000), g=st.sampled_from(_SYMMETRIES))
@settings(max_examples=20, deadline=None)
def test_the_symmetry_average_commutes_with_every_symmetry_and_keeps_observed_pixels(h, w, seed, g) -> None:
    """R with symmetries=8 is equivariant: R(g y, g m) = g R(y, m) for each of the eight symmetries of
    the square (up to the order of the float sum), where the network alone is not; seen pixels stay y."""
    torch.manual_seed(seed)
    r = Restorer(3, 3, width=4, mults=[1, 2], symmetries=8).eval()
    _randomize(r, seed)
    _, y, m = _obs(seed, h, w, "box" if seed % 2 else "random", dtype=torch.float64)
    r = r.double()
    with torch.no_grad():
        out = r(y, m)
        moved = r(_sym(y, *g), _sym(m, *g))
    assert torch.allclose(moved, _sym(out, *g), atol=1e-12)
    known = (m[:, :1] == 1).expand_as(y)
    assert torch.equal(out[known], y[known])
    with torch.no_grad():
        mean = sum(_unsym(r.network(_sym(y, f, k), _sym(m, f, k)), f, k) for f, k in _SYMMETRIES) / 8
    assert torch.allclose(out, mean, atol=1e-12)


def _unsym(t: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    t = torch.rot90(t, -turns, (-2, -1))
    return t.flip(-1) if flip else t


def test_the_symmetry_average_is_a_model_option_that_changes_no_bound_and_no_weight(tmp_path) -> None:
    """``restorer.symmetries`` survives a checkpoint round trip, needs no other weights, changes the
    estimate but not one bound, and a bad value is one ConfigError line."""
    from injcert.errors import ConfigError
    from injcert.io import load_checkpoint, save_checkpoint

    net = anchored_unet(seed=5)
    cfg = net.config
    cfg["restorer"]["symmetries"] = 8
    sym = CondUNet.from_config(cfg).eval()
    sym.load_state_dict(net.state_dict())
    save_checkpoint(sym, tmp_path / "sym.ckpt")
    back = load_checkpoint(tmp_path / "sym.ckpt").eval()
    assert back.config["restorer"]["symmetries"] == 8 and back.restorer.symmetries == 8
    assert "symmetries" not in net.config["restorer"]
    from injcert.registry import weights_fingerprint
    assert weights_fingerprint(back) != weights_fingerprint(net)  # the same weights, another function
    assert net.certified_lipschitz() == back.certified_lipschitz()
    for t in (0.01, 0.5):
        assert net.certified_lipschitz_at(t) == back.certified_lipschitz_at(t)
    _, y, m = _obs(3, 12, 12, "box")
    with torch.no_grad():
        assert not torch.allclose(net.anchor(y, m), back.anchor(y, m))
        turned = net.restorer(_sym(y, False, 1), _sym(m, False, 1))  # the network alone is not equivariant
        assert not torch.allclose(turned, _sym(net.restorer(y, m), False, 1), atol=1e-4)
    for bad in (2, True, "8"):
        cfg["restorer"]["symmetries"] = bad
        with pytest.raises(ConfigError, match="symmetries"):
            CondUNet.from_config(cfg)


def test_restorer_changes_no_bound() -> None:
    """The certified bound of the model with and without R is the same number, at every t."""
    net = anchored_unet(seed=4)
    plain = tiny_unet(4, **ANCHORED).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("restorer.")})
    assert net.certified_lipschitz() == plain.certified_lipschitz()
    for t in (0.01, 0.3, 0.9):
        assert net.certified_lipschitz_at(t) == plain.certified_lipschitz_at(t)
        assert net.nonlinear_lipschitz_at(t) == plain.nonlinear_lipschitz_at(t)


@given(seed=st.integers(0, 1000), t=st.floats(0.01, 0.99))
@settings(max_examples=10)
def test_anchor_term_is_constant_in_x(seed: int, t: float) -> None:
    """eps(x; with R) - eps(x; R = 0) does not depend on x: the anchor enters D as (I - alpha K_t) R."""
    net = anchored_unet(seed % 7).double()
    _, y, m = _obs(seed, 12, 12, "box", torch.float64)
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(2, 1, 3, 12, 12, generator=g, dtype=torch.float64)
    tt = torch.full((1,), t, dtype=torch.float64)
    with torch.no_grad():
        anchor = net.anchor(y, m)
        diffs = [net(x, tt, y, m, anchor=anchor) - net(x, tt, y, m, anchor=torch.zeros_like(anchor)) for x in xs]
        sched = net.schedule
        a = float(sched.alpha(torch.tensor(t, dtype=torch.float64)))
        w = 1.0 / max(float(sched.sigma(torch.tensor(t, dtype=torch.float64))), net.sigma_cap)
        expected = -w * a * (anchor - a * net.linear_skip(anchor, tt))
    assert torch.allclose(diffs[0], diffs[1], rtol=0, atol=1e-10)
    assert torch.allclose(diffs[0], expected, rtol=1e-10, atol=1e-10)


def test_planted_x_dependence_in_the_restorer_is_caught() -> None:
    """The dense-Jacobian soundness check passes for the honest model and fails for one whose
    'condition' path secretly reads x."""
    net = anchored_unet(seed=2).double()
    _, y, m = _obs(1, 8, 8, "random", torch.float64)
    t = 0.5
    tt = torch.full((1,), t, dtype=torch.float64)
    bound = net.certified_lipschitz_at(t)
    pts = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1

    def honest(x):
        return torch.cat([net(xi[None], tt, y, m) for xi in x])

    def planted(x):
        return torch.cat([net(xi[None], tt, y, m, anchor=net.anchor(y, m) + 50.0 * xi[None]) for xi in x])

    assert exact_jacobian_norm(honest, pts) <= bound * (1 + 1e-9)
    assert exact_jacobian_norm(planted, pts) > bound


def test_anchor_cache_follows_the_condition() -> None:
    net = anchored_unet(seed=5)
    _, y, m = _obs(2, 16, 16, "box")
    with torch.no_grad():
        a1 = net.anchor(y, m)
        assert net.anchor(y, m) is a1  # the same condition: computed once
        y2 = y.clone()
        assert torch.equal(net.anchor(y2, m), a1) and net.anchor(y2, m) is not a1
        y2.add_(0.5)  # an in-place change of the condition is seen
        assert not torch.equal(net.anchor(y2, m), a1)
        with torch.no_grad():
            _randomize(net.restorer, 9, 0.01)  # so are new weights
        assert not torch.equal(net.anchor(y, m), a1)


def test_anchor_cache_is_kept_per_thread() -> None:
    """Two threads, each with its own condition, evaluating one model in turn (the certificate's
    lanes): each runs the restorer once, not at every call; an ended thread's entry is dropped."""
    import threading

    net = anchored_unet(seed=5)
    calls = []
    net.restorer.register_forward_hook(lambda *_: calls.append(threading.get_ident()))
    conds = [_obs(s, 16, 16, "box")[1:] for s in (2, 3)]
    turn = [threading.Event() for _ in conds]
    out: dict = {}

    def lane(k: int) -> None:
        for step in range(4):
            turn[k].wait()
            turn[k].clear()
            with torch.no_grad():
                out.setdefault(k, []).append(net.anchor(*conds[k]))
            turn[(k + 1) % 2].set()

    workers = [threading.Thread(target=lane, args=(k,)) for k in range(2)]
    for w in workers:
        w.start()
    turn[0].set()
    for w in workers:
        w.join()
    assert len(calls) == 2 and len(set(calls)) == 2  # once per thread, interleaved calls included
    for k, (y, m) in enumerate(conds):
        with torch.no_grad():
            assert torch.equal(out[k][0], net.anchor(y, m)) and all(a is out[k][0] for a in out[k])
    assert set(net._anchor_cache) == {threading.get_ident()}  # the ended threads' entries are gone


def test_tiled_evaluation_with_a_restorer_is_whole_image_evaluation() -> None:
    net = anchored_unet(seed=6)
    _, y, m = _obs(4, 40, 36, "box")
    x = torch.randn(1, 3, 40, 36, generator=torch.Generator().manual_seed(1))
    tt = torch.full((1,), 0.4)
    tiled = TiledModel(net, tile=8)
    from injcert.tasks.tiling import shape_stable_convolutions

    with torch.no_grad(), shape_stable_convolutions():
        whole = net(x, tt, y, m)
    with torch.no_grad():
        assert torch.equal(tiled(x, tt, y, m), whole)


@pytest.mark.parametrize("kind", ["box", "random", "freeform", "gaps"])
def test_reconstruction_from_the_restorer_is_exact(kind: str) -> None:
    """The restorer is the start: known pixels exact, deterministic, the decode exactly invertible."""
    net = anchored_unet(seed=3)
    _, y, m = _obs(7, 16, 16, kind)
    with torch.no_grad():
        r1 = reconstruct_full(net, y, m, steps=4, seed=1, estimate=RESTORER)
        r2 = reconstruct_full(copy.deepcopy(net), y, m, steps=4, seed=1, estimate=RESTORER)
        back = guided_encode(net, r1.guided)
    assert r1.estimate_method == RESTORER
    assert torch.equal(r1.estimate, net.anchor(y * m[:, :1], m))
    assert torch.equal(r1.image, r2.image)
    known = (m[:, :1] == 1).expand_as(y)
    assert torch.equal(r1.image[known], y[known])
    assert torch.equal(back[0], r1.guided.start[0]) and torch.equal(back[1], r1.guided.start[1])


@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["box", "random", "freeform", "gaps"]))
@settings(max_examples=12, deadline=None)
def test_auto_start_is_the_estimate_that_validates(seed: int, kind: str) -> None:
    """``estimate="auto"`` starts from the restorer only where it restores observed pixels hidden in the
    shape of the hole nearly as well as the classical fill (within ``START_MARGIN``): an oracle restorer
    (the truth) is chosen, the classical fill pushed 0.02 away from the truth (a little worse) too, one pushed by 2 is
    not, and the choice is recorded."""
    from injcert.tasks.classical import classical_estimate
    from injcert.tasks.reconstruct import START_MARGIN

    x, y, m = _obs(seed, 16, 16, kind)

    def pushed(step):
        def fill(y2, m2):  # the classical fill moved ``step`` away from the truth: worse everywhere
            c = classical_estimate(y2, m2, "auto")[1]
            return c + step * torch.where(c >= x, 1.0, -1.0) * (m2[:, :1] != 1)
        return fill

    # pushed by 2 on pixels in [-1, 1]: rms**2 >= c_rms**2 + 4 > START_MARGIN**2 * c_rms**2 for any c_rms <= 2
    nudged = pushed(0.02)
    for fill, wins in ((lambda y2, m2: x, True), (nudged, True), (pushed(2.0), False)):
        net = anchored_unet(seed=1)
        net.anchor = fill  # type: ignore[method-assign]
        with torch.no_grad(), patch.object(rc, "START_BLEND", None):  # a wide hole would start from the mean
            r = reconstruct_full(net, y, m, steps=2, seed=seed)
        assert r.start_check is not None
        r_rms, c_rms = r.start_check
        assert (r_rms <= START_MARGIN * c_rms) == wins
        if fill is nudged:
            assert c_rms < r_rms  # worse on the check, chosen all the same
        assert (r.estimate_method == RESTORER) == wins
        known = (m[:, :1] == 1).expand_as(y)
        assert torch.equal(r.image[known], y[known])


def _big_hole(seed: int, n: int = 40, side: int = 22):
    """A random image with a square hole far wider than a tiny network's reach: a coarse-to-fine start."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, n, n, generator=g) * 2 - 1
    a = int(torch.randint(2, n - side - 1, (1,), generator=g))
    known = torch.ones(1, 1, n, n)
    known[..., a:a + side, a:a + side] = 0
    return x, x * known, expand_map(known)


@given(seed=st.integers(0, 10_000), side=st.integers(2, 20), top=st.integers(0, 12), left=st.integers(0, 12))
@settings(max_examples=12, deadline=None)
def test_a_wide_hole_starts_from_the_mean_of_the_restorer_and_the_classical_fill(seed, side, top, left) -> None:
    """``estimate="auto"``: a hole whose farthest pixel lies more than ``START_BLEND`` pixels from an
    observed one starts from the mean of R(c) and the classical fill, with no start check; a narrower
    one from the check's choice. Known pixels stay exact, the result is deterministic and exactly
    invertible; ``START_BLEND = None`` restores the check, and ``estimate=BLEND`` asks for the mean."""
    from injcert.tasks.classical import classical_estimate
    from injcert.tasks.start_levels import _distance_to_known

    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    m = torch.ones(1, 1, 32, 32)
    m[..., top:top + side, left:left + side] = 0
    m = expand_map(m)
    y = x * m[:, :1]
    net = anchored_unet(seed=4)
    far = _distance_to_known(m[:, :1] == 1) > rc.START_BLEND
    assert far == (side > 2 * rc.START_BLEND)  # the box's centre is (side - 1) // 2 + 1 pixels from its edge
    with torch.no_grad():
        r = reconstruct_full(net, y, m, steps=2, seed=seed, levels=0)
        again = reconstruct_full(copy.deepcopy(net), y, m, steps=2, seed=seed, levels=0)
        mean = 0.5 * (net.anchor(y, m) + classical_estimate(y, m, "auto")[1])
        asked = reconstruct_full(net, y, m, steps=2, seed=seed, levels=0, estimate=BLEND)
        with patch.object(rc, "START_BLEND", None):
            checked = reconstruct_full(net, y, m, steps=2, seed=seed, levels=0)
    assert (r.estimate_method == BLEND) == far and (r.start_check is None) == far
    if far:
        assert torch.equal(r.estimate, mean) and torch.equal(r.image, asked.image)
    assert asked.estimate_method == BLEND and torch.equal(asked.estimate, mean)
    assert checked.estimate_method != BLEND and checked.start_check is not None
    known = (m[:, :1] == 1).expand_as(y)
    assert torch.equal(r.image[known], y[known]) and torch.equal(r.image, again.image)
    back = guided_encode(net, r.guided)
    assert torch.equal(back[0], r.guided.start[0]) and torch.equal(back[1], r.guided.start[1])


@given(seed=st.integers(0, 10_000))
@settings(max_examples=6, deadline=None)
def test_a_pyramid_start_gives_way_to_the_restorer_only_where_it_wins_the_holdout(seed: int) -> None:
    """A coarse-to-fine start's gate also scores R(c) on the same hidden pixels: an oracle restorer (the
    truth, at every level's size) wins, and the image is then exactly the restoration from R(c) without
    a pyramid (bit for bit, exactly invertible, known pixels exact), the pyramid's hold-out kept; a
    restorer 2 away from the truth in the hole loses and the pyramid result stands; with the rule off,
    or levels given, R(c) is not scored."""
    import injcert.tasks.reconstruct as rec

    x, y, m = _big_hole(seed)

    def oracle(push: float):
        def fill(y2, m2):
            t = F.adaptive_avg_pool2d(x, y2.shape[-2:])
            return t - push * torch.where(t >= 0, 1.0, -1.0) * (m2[:, :1] != 1)
        return fill

    for push, wins in ((0.0, True), (2.0, False)):
        net = anchored_unet(seed=2)
        assert rec.pyramid_levels(net, m) > 0
        net.anchor = oracle(push)  # type: ignore[method-assign]
        with torch.no_grad(), patch.object(rec, "START_BLEND", None):  # the contender is R(c) itself
            r = reconstruct_full(net, y, m, steps=2, seed=seed)
        h = r.pyramid_holdout if wins else r.holdout
        assert h is not None and not math.isnan(h.restorer)
        chosen = (h.flow, h.flow_ssim) if rec._flow_kept(h) else (h.start, h.start_ssim)
        assert (h.restorer < chosen[0] and h.restorer_ssim >= chosen[1]) == wins
        known = (m[:, :1] == 1).expand_as(y)
        assert torch.equal(r.image[known], y[known])
        back = guided_encode(net, r.guided)
        assert torch.equal(back[0], r.guided.start[0]) and torch.equal(back[1], r.guided.start[1])
        args = SimpleNamespace(image="in.png", out="out.png", mask=None, corruption="box", steps=2)
        info = _reconstruct_info(args, r, y, m, None, y.dtype)
        json.dumps(info, allow_nan=False)  # the CLI's JSON: R(c)'s scores where it competed, never a NaN
        assert ("pyramid_holdout_rms" in info) == wins and ("restorer" in info["holdout_rms"]) != wins
        assert _start_name(r) == (f"{RESTORER} over pyramid" if wins else r.estimate_method)  # the tables' label
        if wins:
            assert h.restorer == 0.0 and r.estimate_method == RESTORER
            with torch.no_grad(), patch.object(rec, "START_BLEND", None):
                direct = reconstruct_full(net, y, m, steps=2, seed=seed, levels=0, estimate=RESTORER)
            assert torch.equal(r.image, direct.image) and r.holdout == direct.holdout
        else:
            assert r.estimate_method.startswith("pyramid") and r.pyramid_holdout is None
        # with START_BLEND (the default) the contender is what the hole starts from without the pyramid:
        # the mean of R(c) and the classical fill; where it wins, the image is that route's, bit for bit
        with torch.no_grad():
            b = reconstruct_full(net, y, m, steps=2, seed=seed)
            direct = reconstruct_full(net, y, m, steps=2, seed=seed, levels=0, estimate=BLEND)
        hb = b.pyramid_holdout if b.pyramid_holdout is not None else b.holdout
        assert hb is not None and math.isfinite(hb.restorer)
        if b.pyramid_holdout is not None:
            assert b.estimate_method == BLEND and torch.equal(b.image, direct.image) and b.holdout == direct.holdout
        else:
            assert b.estimate_method.startswith("pyramid")
    with torch.no_grad(), patch.object(rec, "START_BLEND", None):  # as ``r`` was made
        given_levels = reconstruct_full(net, y, m, steps=2, seed=seed, levels=1)
        rec.PYRAMID_VS_RESTORER = False
        try:
            off = reconstruct_full(net, y, m, steps=2, seed=seed)
        finally:
            rec.PYRAMID_VS_RESTORER = True
    for q in (given_levels, off):
        assert q.estimate_method == "pyramid1" and math.isnan(q.holdout.restorer)
        assert q.holdout[:4] == r.holdout[:4] and torch.equal(q.image, r.image)


# ------------------------------------------------------------------------- training the restorer


def test_corruption_kinds_restrict_the_draws() -> None:
    from injcert.data.corruptions import BoxMask, RandomPixelMask, corrupt_batch, random_corruption
    from injcert.errors import ConfigError

    kinds = {type(random_corruption(s, size=16, kinds=["box", "random"])) for s in range(40)}
    assert kinds == {BoxMask, RandomPixelMask}
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    _, m = corrupt_batch(x, 3, p_uncond=0.0, kinds=["box"])
    assert float(m[:, 1:].abs().max()) == 0.0 and bool((m[:, :1] == 0).flatten(1).any(1).all())
    for bad in (["boxes"], [], "box"):
        with pytest.raises(ConfigError):
            random_corruption(0, kinds=bad)


def test_the_restorer_objective_trains_the_restorer_alone(tmp_path) -> None:
    """Two steps of the 'restorer' objective from a checkpoint without a restorer (``init`` adds one):
    every other weight is the init's bit for bit, the restorer moved, the log is finite."""
    import json

    from helpers import tiny_config
    from injcert.io import load_checkpoint, save_checkpoint
    from injcert.tasks.train import TrainConfig, train

    base = dict(tiny_config())
    model_cfg = dict(base["model"], in_channels=3, **ANCHORED)
    init = tiny_unet(1, **model_cfg)
    save_checkpoint(init, tmp_path / "init.ckpt")
    cfg = dict(base, model=dict(model_cfg, restorer={"width": 4, "mults": [1, 2]}), objective="restorer",
               corruptions=["box", "random"], init=str(tmp_path / "init.ckpt"), steps=2, checkpoint_every=2,
               val_every=2, log=str(tmp_path / "log.jsonl"))
    out = train(TrainConfig.from_dict(cfg), tmp_path / "r.ckpt", progress=False)
    trained = load_checkpoint(out)
    before = init.state_dict()
    for k, v in trained.state_dict().items():
        if k.startswith("restorer."):
            continue
        assert torch.equal(v, before[k]), k
    assert any(float(p.abs().max()) > 0 for p in trained.restorer.out.parameters())
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    with pytest.raises(Exception, match="corruptions"):
        TrainConfig.from_dict(dict(cfg, corruptions=["nope"]))


def test_refinement_examples_start_from_the_models_restorer() -> None:
    """refine_start='restorer': the selected mask examples' missing pixels hold R(c) at their t, the
    target stays x0 (the same loss as feeding that state by hand)."""
    from injcert.model.objective import draw_training_batch, loss_on_batch

    net = anchored_unet(seed=8)
    x0 = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    b = draw_training_batch(x0, torch.Generator().manual_seed(1), net.schedule, p_uncond=0.0, refine_fraction=1.0,
                            corruptions=["box", "random"], refine_start="restorer")
    assert bool(b["refine"].any()) and float(b["delta"].abs().max()) == 0.0
    with torch.no_grad():
        got = loss_on_batch(net, b)
        m = b["m"]
        r = net.anchor(b["y"] * (m[:, :1] == 1).to(x0.dtype), m)
        miss = (m[:, :1] != 1).expand_as(x0) & b["refine"][:, None, None, None]
        delta = torch.where(miss, r - x0, torch.zeros_like(x0))
        by_hand = loss_on_batch(net, dict({k: v for k, v in b.items() if k != "refine"}, delta=delta))
    assert torch.equal(got, by_hand)


def test_graft_restorer_script_swaps_only_the_restorer(tmp_path) -> None:
    """``scripts/graft_restorer.py``: the output is the model with the donor's restorer and nothing else
    changed (so the same certified bounds), both sources recorded; a model without a restorer or a
    file that is not a checkpoint: one line, exit 2."""
    import subprocess
    import sys

    from helpers import subprocess_env
    from injcert.io import load_checkpoint, save_checkpoint

    base, donor, plain = anchored_unet(seed=1), anchored_unet(seed=2), tiny_unet(0, **ANCHORED)
    for name, net in (("base", base), ("donor", donor), ("plain", plain)):
        save_checkpoint(net, tmp_path / f"{name}.ckpt")
    out = tmp_path / "out.ckpt"

    def run(a: str, b: str, *extra: str):
        return subprocess.run([sys.executable, "scripts/graft_restorer.py", a, b, str(out), *extra],
                              capture_output=True, text=True, timeout=300, env=subprocess_env())

    ok = run(str(tmp_path / "base.ckpt"), str(tmp_path / "donor.ckpt"))
    assert ok.returncode == 0, ok.stderr
    new = load_checkpoint(out)
    for k, v in new.state_dict().items():
        assert torch.equal(v, (donor if k.startswith("restorer.") else base).state_dict()[k]), k
    assert new.checkpoint_metadata["restorer_from"]["path"] == str(tmp_path / "donor.ckpt")
    for a, b in ((tmp_path / "base.ckpt", tmp_path / "plain.ckpt"), (tmp_path / "base.ckpt", "/etc/passwd")):
        bad = run(str(a), str(b))
        assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    # --average: the weights' convex combination in the restorer, the rest of the model untouched
    third = anchored_unet(seed=3)
    save_checkpoint(third, tmp_path / "third.ckpt")
    avg = run(str(tmp_path / "base.ckpt"), str(tmp_path / "donor.ckpt"), "--average", str(tmp_path / "third.ckpt"),
              "--weight", "0.25")
    assert avg.returncode == 0, avg.stderr
    new = load_checkpoint(out)
    d, t, b = donor.state_dict(), third.state_dict(), base.state_dict()
    for k, v in new.state_dict().items():
        want = 0.75 * d[k] + 0.25 * t[k] if k.startswith("restorer.") and v.is_floating_point() else b[k]
        assert torch.allclose(v, want, rtol=0, atol=1e-6), k
    assert new.checkpoint_metadata["restorer_from"]["averaged_with"]["weight"] == 0.25
    for extra in (("--average", str(tmp_path / "plain.ckpt")), ("--average", str(tmp_path / "third.ckpt"),
                                                                 "--weight", "1.5")):
        bad = run(str(tmp_path / "base.ckpt"), str(tmp_path / "donor.ckpt"), *extra)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    # --symmetries 8: the same weights, the restorer evaluated as its symmetry average; grafting from
    # it again keeps the setting unless told otherwise
    sym = run(str(tmp_path / "base.ckpt"), str(tmp_path / "donor.ckpt"), "--symmetries", "8")
    assert sym.returncode == 0, sym.stderr
    new = load_checkpoint(out)
    assert new.restorer.symmetries == 8
    for k, v in new.state_dict().items():
        assert torch.equal(v, (donor if k.startswith("restorer.") else base).state_dict()[k]), k
    assert new.certified_lipschitz() == base.certified_lipschitz()
    save_checkpoint(new, tmp_path / "sym.ckpt")
    again = run(str(tmp_path / "sym.ckpt"), str(tmp_path / "base.ckpt"))
    assert again.returncode == 0, again.stderr
    assert load_checkpoint(out).restorer.symmetries == 8
    back = run(str(tmp_path / "sym.ckpt"), str(tmp_path / "base.ckpt"), "--symmetries", "1")
    assert back.returncode == 0 and "symmetries" not in load_checkpoint(out).config["restorer"]
    bad = run(str(tmp_path / "base.ckpt"), str(tmp_path / "donor.ckpt"), "--symmetries", "3")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    # a restorer of another architecture comes with its options; the rest of the model is the base's
    wide = tiny_unet(4, restorer={"width": 6, "mults": [1, 2, 2]}, **ANCHORED)
    _randomize(wide.restorer, 5)
    save_checkpoint(wide, tmp_path / "wide.ckpt")
    other = run(str(tmp_path / "sym.ckpt"), str(tmp_path / "wide.ckpt"))
    assert other.returncode == 0, other.stderr
    new = load_checkpoint(out)
    assert new.config["restorer"] == {"width": 6, "mults": [1, 2, 2], "symmetries": 8}
    for k, v in new.state_dict().items():
        assert torch.equal(v, (wide if k.startswith("restorer.") else base).state_dict()[k]), k
    assert new.certified_lipschitz() == base.certified_lipschitz()


def test_residual_bands_script_adds_only_the_residual_variances(tmp_path) -> None:
    """``scripts/residual_bands.py``: the output has the input's weights and band variances, plus the
    residual variances that :func:`fit_residual_band_variances` gives for its restorer; ``--config-out`` writes a training config
    whose model options are the output's (so ``train --init`` accepts it); a model without bands or a
    restorer, a file that is not a checkpoint, or ``--config`` alone: one line, exit 2."""
    import json
    import subprocess
    import sys

    from helpers import subprocess_env
    from injcert.io import load_checkpoint, save_checkpoint
    from injcert.model.bands import fit_residual_band_variances

    bands = {"orders": [1, 3], "variances": [0.01, 0.3, 5.0]}
    kw = dict(ANCHORED, data_variance=None, spectral_bands=bands)
    src, plain = tiny_unet(0, restorer={"width": 4, "mults": [1, 2]}, **kw), anchored_unet(seed=1)
    _randomize(src.restorer, 3)
    save_checkpoint(src, tmp_path / "src.ckpt")
    save_checkpoint(plain, tmp_path / "plain.ckpt")
    (tmp_path / "train.json").write_text(json.dumps({"steps": 3, "model": {}}))
    out, cfg_out = tmp_path / "out.ckpt", tmp_path / "train2.json"

    def run(a, *extra):
        return subprocess.run([sys.executable, "scripts/residual_bands.py", str(a), str(out), "--size", "32", *extra],
                              capture_output=True, text=True, timeout=300, env=subprocess_env())

    ok = run(tmp_path / "src.ckpt", "--config", str(tmp_path / "train.json"), "--config-out", str(cfg_out))
    assert ok.returncode == 0, ok.stderr
    new = load_checkpoint(out)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), new.state_dict().values()))
    want = fit_residual_band_variances(src.eval().anchor, [1, 3], size=32)
    assert new.bands["residual_variances"] == pytest.approx(want, rel=1e-12)
    assert new.bands["variances"] == bands["variances"] and new.band_mix
    assert new.checkpoint_metadata["residual_bands_from"]["path"] == str(tmp_path / "src.ckpt")
    written = json.loads(cfg_out.read_text())
    assert written["steps"] == 3 and written["model"] == new.config
    (tmp_path / "list.json").write_text("[1, 2]")
    for a, extra in ((tmp_path / "plain.ckpt", ()), ("/etc/passwd", ()),
                     (tmp_path / "src.ckpt", ("--config", str(tmp_path / "train.json"))),
                     (tmp_path / "src.ckpt", ("--size", "0")),
                     (tmp_path / "src.ckpt", ("--config", str(tmp_path / "list.json"), "--config-out", str(cfg_out)))):
        bad = run(a, *extra)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_unconditional_anchor_runs_the_restorer_once_per_shape_and_weights() -> None:
    """An unconditional solver calls the network without ``y`` and ``m`` at every step: R of the empty
    observation is computed once per shape and weights, and is what a fresh computation gives."""
    net = anchored_unet(seed=4)
    calls = []
    net.restorer.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        outs = [net(x, 0.3) for _ in range(3)]
        assert len(calls) == 1 and all(torch.equal(o, outs[0]) for o in outs)
        fresh = net(x, 0.3, anchor=net.restorer(torch.zeros_like(x), torch.zeros(2, 3, 8, 8)))
        assert torch.equal(fresh, outs[0])
        net(torch.randn(1, 3, 12, 8), 0.3)
        assert len(calls) == 3  # the fresh anchor above, and a new shape
        net.restorer.out.bias.add_(0.5)
        changed = net(x, 0.3)
    assert len(calls) == 4 and not torch.equal(changed, outs[0])


def test_restorer_validation_draws_the_corruptions_it_trains_on() -> None:
    """The restorer returns every seen pixel as observed, so blurred or noisy validation examples add a
    loss it cannot change: its validation batches hold only the config's corruptions (masks here), the
    denoising objective's hold all of them."""
    from helpers import tiny_config
    from injcert.tasks.train import TrainConfig, validation_batches

    base = dict(tiny_config())
    model_cfg = dict(base["model"], in_channels=3, **ANCHORED, restorer={"width": 4, "mults": [1, 2]})
    cfg = TrainConfig.from_dict(dict(base, model=model_cfg, objective="restorer", corruptions=["box", "random"],
                                     val_batches=3, batch_size=8))
    net = tiny_unet(0, **model_cfg)
    ms = torch.cat([b["m"] for b in validation_batches(cfg, net.schedule, torch.device("cpu"))])
    assert float(ms[:, 1:].abs().max()) == 0.0  # no blurred, no noisy pixel
    assert bool((ms[:, :1] == 0).flatten(1).any(1).all())  # every example misses pixels
    den = TrainConfig.from_dict(dict(base, model=model_cfg, corruptions=["box", "random"], val_batches=3, batch_size=8))
    ms = torch.cat([b["m"] for b in validation_batches(den, net.schedule, torch.device("cpu"))])
    assert float(ms[:, 1:].abs().max()) > 0.0  # the denoising validation keeps blur and noise


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 0.95))
def test_restorer_loss_is_the_mean_squared_error_over_the_missing_pixels(seed: int, ratio: float) -> None:
    """Each example's squared error is averaged over its missing pixels (not the image), then over the
    examples; an example with nothing missing adds 0."""
    from injcert.model.objective import restorer_loss

    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    y, m = make_corruption("random", ratio=ratio)(x0, seed)
    m[2] = 0.0
    m[2, 0] = 1.0  # the third example is fully observed
    m = expand_map(m)
    err = torch.rand(3, 3, 8, 8, generator=g)
    restorer = lambda yy, mm: torch.where(mm[:, :1] == 1, x0, x0 + err)  # noqa: E731
    miss = (m[:, :1] != 1).expand_as(x0)
    want = [float(err[i][miss[i]].pow(2).mean()) if bool(miss[i].any()) else 0.0 for i in range(3)]
    got = restorer_loss(restorer, {"y": y * m[:, :1], "m": m, "x0": x0})
    assert abs(float(got) - sum(want) / 3) <= 1e-6 * max(1.0, sum(want))


def test_anchor_is_kept_while_no_gradient_can_reach_the_restorer() -> None:
    """The certificate's Jacobians in x run with gradients on: R(c) is then computed once per condition
    (it is a constant in x), also inside torch.func transforms, and equals a fresh computation; while
    the restorer's weights take gradients (training it), every call computes R anew."""
    net = anchored_unet(seed=5)
    for p in net.parameters():
        p.requires_grad_(False)
    calls = []
    net.restorer.register_forward_hook(lambda *a: calls.append(1))
    x, y, m = _obs(3, 8, 8)
    t = torch.tensor([0.4])
    outs = [net(x, t, y, m) for _ in range(2)]
    jac = torch.func.jacrev(lambda z: net(z, t, y, m))(x)
    assert len(calls) == 1 and torch.equal(outs[0], outs[1]) and jac.shape == (*x.shape, *x.shape)
    with torch.no_grad():
        fresh = net(x, t, y, m, anchor=net.restorer(y, m))
    assert torch.equal(fresh, outs[0])
    net2 = anchored_unet(seed=5)
    calls2 = []
    net2.restorer.register_forward_hook(lambda *a: calls2.append(1))
    loss = sum(net2(x, t, y, m).sum() for _ in range(2))
    loss.backward()
    assert len(calls2) == 2 and net2.restorer.out.weight.grad is not None


def test_anchor_made_inside_a_transform_is_not_kept() -> None:
    """R(c) computed inside a torch.func transform belongs to it: the next plain call recomputes it
    rather than reuse a tensor of a finished transform."""
    net = anchored_unet(seed=6)
    for p in net.parameters():
        p.requires_grad_(False)
    x, y, m = _obs(4, 8, 8)
    t = torch.tensor([0.4])
    torch.func.jacrev(lambda z: net(z, t, y, m))(x)  # the first R(c) is made inside the transform
    calls = []
    net.restorer.register_forward_hook(lambda *a: calls.append(1))
    out = net(x, t, y, m)
    assert len(calls) == 1 and torch.isfinite(out).all()


def test_the_certificate_computes_the_condition_term_once_outside_its_jacobians() -> None:
    """``keep_condition_term`` runs R(c) once; the dense Jacobian in x taken next (a torch.func
    transform, inside which R's result would not be kept) then never runs the restorer, and gives the
    Jacobian it gives without it."""
    from injcert.certify.numerics import dense_jacobian, keep_condition_term

    net = anchored_unet(seed=6).double().requires_grad_(False)  # as the certificate's float64 copy
    net.restorer.symmetries = 8
    _, y, m = _obs(2, 8, 8, "box", dtype=torch.float64)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.full((1,), 0.4, dtype=torch.float64)
    want = dense_jacobian(lambda z: net(z, t, y, m), x)
    calls = []
    original = net.restorer.network
    net.restorer.network = lambda *a: calls.append(1) or original(*a)
    keep_condition_term(net, (y, m))
    assert len(calls) == 8
    got = dense_jacobian(lambda z: net(z, t, y, m), x)
    assert len(calls) == 8 and torch.equal(got, want)
    keep_condition_term(tiny_unet(0), (y, m))  # no restorer: nothing to do
