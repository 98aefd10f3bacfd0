"""The one integration loop (``injcert.solvers.integrate``) and the ``Grid`` value.

Every solver only defines ``step``/``unstep``; these tests check the driver's contract for each of
them: the recorded trajectory, the exact inverse at *every* grid point for the lattice schemes,
resets that stay invertible, the fixed-point solver's propagated bound, and refusals.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, strategies as st

from injcert.errors import ArgumentError, ArgumentTypeError, InjcertError
from injcert.model.schedule import CosineSchedule
from injcert.solvers import (SOLVERS, Grid, SolverState, euler_step, get_solver, integrate, make_grid,
                             probability_flow_field)
from injcert.testing import AnalyticMixtureScore
from injcert.theory.flow import fixed_point_error_bound, margin_products

EXACT = sorted(name for name, cls in SOLVERS.items() if cls.exact)


def _field():
    return probability_flow_field(AnalyticMixtureScore())


def _x(seed: int, shape=(2, 1, 4, 4), dtype=torch.float64) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).mul(2).sub(1)


@given(st.sampled_from(EXACT), st.integers(1, 12), st.integers(0, 10_000), st.sampled_from(["geometric", "uniform"]))
def test_exact_schemes_invert_at_every_grid_point(name, steps, seed, kind):
    """Encode with ``keep``, then decode: the decode passes through the encoded states bit for bit."""
    field = _field()
    grid = Grid.make(field.schedule, steps, kind)
    solver = get_solver(name)
    kept: list = []
    enc = integrate(solver, field, grid, _x(seed), direction="encode", keep=kept)
    assert len(kept) == steps + 1 and enc.nfe == steps + 1 - (name == "leapfrog")
    back: list = []
    dec = integrate(solver, field, grid, enc, direction="decode", keep=back)
    for a, b in zip(kept, reversed(back)):
        assert torch.equal(a.x, b.x) and torch.equal(a.aux, b.aux)
    assert torch.equal(dec.value(), _x(seed))


@given(st.sampled_from(EXACT), st.integers(1, 8), st.integers(0, 10_000))
def test_resets_keep_the_map_invertible(name, steps, seed):
    """Decode with a reset hook (the editing mechanism), then encode with the same hook: back to the start."""
    field = _field()
    grid = Grid.make(field.schedule, steps)
    solver = get_solver(name)
    kept: list = []
    integrate(solver, field, grid, _x(seed), direction="encode", keep=kept)
    region = _x(seed + 1) > 0
    traj = [(s.x, s.aux) for s in kept]

    def reset(n: int, which: str, q: torch.Tensor) -> torch.Tensor:
        return torch.where(region, q, traj[n][0 if which == "main" else 1])

    start_main = torch.where(region, kept[-1].x + 12345, kept[-1].x)
    start = SolverState(x=start_main, aux=kept[-1].aux.clone(), dtype=torch.float64, frac_bits=solver.frac_bits,
                        scale=kept[-1].scale)
    dec = integrate(solver, field, grid, start, direction="decode", reset=reset)
    # outside the region the decode is the stored trajectory: at t = 0 the encoded input
    assert torch.equal(dec.x[~region], kept[0].x[~region])
    again = integrate(solver, field, grid, SolverState(x=dec.x, aux=dec.aux, dtype=torch.float64,
                                                       frac_bits=solver.frac_bits), direction="encode", reset=reset)
    assert torch.equal(again.x, start.x) and torch.equal(again.aux, start.aux)


@given(st.integers(2, 10), st.integers(0, 10_000))
def test_ddim_is_the_euler_step_iterated(steps, seed):
    """The ddim solver is exactly ``euler_step`` along the grid (the one Euler step of the package)."""
    field = _field()
    g = make_grid(field.schedule, steps).tolist()
    x = _x(seed)
    ref = x
    for a, b in zip(g, g[1:]):
        ref = euler_step(field, a, ref, b - a, None)
    assert torch.equal(integrate("ddim", field, g, x).x, ref)
    back = ref
    for n in range(len(g) - 2, -1, -1):
        back = euler_step(field, g[n + 1], back, -(g[n + 1] - g[n]), None)
    assert torch.equal(integrate("ddim", field, g, ref, direction="decode").x, back)


@given(st.integers(0, 10_000))
def test_fixed_point_bound_is_the_theory_formula_and_holds(seed):
    """The solver's whole-decode bound is ``fixed_point_error_bound`` of its own step bounds and
    margins, and the measured error of the round trip (exact encoded state) is below it."""
    model = AnalyticMixtureScore(means=(-0.5, 0.5), std=0.3)  # h_k L_k < 1 on 50 geometric steps
    field = probability_flow_field(model)
    grid = Grid.make(field.schedule, 50)
    g = grid.points()
    x = model.sample_data(2, (1, 4, 4), torch.Generator().manual_seed(seed))
    enc = integrate("fixed_point", field, grid, x)
    dec = integrate(get_solver("fixed_point", tol=1e-11), field, grid, enc, direction="decode")
    qs = [float(margin_products(b - a, field.lipschitz(a))) for a, b in zip(g, g[1:])]
    assert len(dec.error_bounds) == 50 and max(qs) < 1
    assert dec.error_bound == fixed_point_error_bound(dec.error_bounds, qs)
    err = float((dec.x - x).flatten(1).norm(dim=1).max())
    assert err <= dec.error_bound * (1 + 1e-9) + 1e-12


def test_keep_and_nfe_for_every_solver():
    field = _field()
    grid = Grid.make(field.schedule, 5)
    for name in sorted(SOLVERS):
        kept: list = []
        out = integrate(name, field, grid, _x(0), keep=kept)
        n_points = 2 if name == "dopri5" else 6
        assert len(kept) == n_points, name
        assert out.nfe >= 1 and all(k.carry is None for k in kept) and out.carry is None


def test_refusals():
    field = _field()
    grid = Grid.make(field.schedule, 4)
    with pytest.raises(ArgumentError, match="direction"):
        integrate("ddim", field, grid, _x(0), direction="sideways")
    with pytest.raises(ArgumentError, match="reset"):
        integrate("ddim", field, grid, _x(0), reset=lambda n, w, q: q)
    with pytest.raises(ArgumentError, match="unknown method"):
        integrate("rk4", field, grid, _x(0))
    with pytest.raises(ArgumentError, match="increasing"):
        integrate("ddim", field, [0.0, 1.0, 0.5], _x(0))
    with pytest.raises(ArgumentTypeError):
        Grid.coerce("geometric")
    with pytest.raises(ArgumentError, match="steps"):
        Grid.resolve(field.schedule, 5, grid)
    # a lattice state from one end of the grid is refused at the other
    enc = integrate("reversible", field, grid, _x(0))
    with pytest.raises(ArgumentError, match="wrong grid"):
        integrate("reversible", field, grid, enc, direction="encode")
    assert issubclass(ArgumentError, InjcertError) and issubclass(ArgumentError, ValueError)


@given(st.integers(1, 40), st.sampled_from(["geometric", "uniform"]), st.floats(0.05, 0.99))
def test_grid_records_its_recipe(steps, kind, frac):
    sched = CosineSchedule()
    t_end = frac * float(sched.t_max)
    g = Grid.make(sched, steps, kind, t_end=t_end)
    assert g.steps == steps and len(g) == steps + 1 and g.kind == kind and g.t_end == t_end
    assert torch.equal(g.values, make_grid(sched, steps, kind, t_end=t_end))
    assert math.isclose(g.points()[-1], float(sched.varsigma(t_end)), rel_tol=1e-12)
    assert Grid.coerce(g) is g and Grid.resolve(sched, steps, g) is g
    assume(steps >= 2)
    assert Grid.coerce(g.values).kind == "custom"
