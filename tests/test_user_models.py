"""User networks through injcert.ScoreModel: conversions, round trips, pointwise bounds, the CLI's
foreign inputs (.pt2, --factory, pickles, hostile archives) and one-line errors."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import injcert
from injcert.model.protocol import ScoreModelError, to_eps

from helpers import subprocess_env


class Res(nn.Module):
    def __init__(self, c: int = 3, w: int = 6) -> None:
        super().__init__()
        self.a, self.b, self.t = nn.Conv2d(c, w, 3, padding=1), nn.Conv2d(w, c, 3, padding=1), nn.Linear(1, w)

    def forward(self, x, t):
        return 0.5 * x + self.b(F.silu(self.a(x) + self.t(t[:, None])[:, :, None, None]))


class Cond(nn.Module):
    def __init__(self, c: int = 3) -> None:
        super().__init__()
        self.a = nn.Conv2d(2 * c + 3, c, 3, padding=1)

    def forward(self, x, t, y, m):
        return self.a(torch.cat([x, y, m], 1))


def _net(c: int, seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return Res(c).to(dtype).eval()


@pytest.mark.parametrize("par", ["eps", "denoiser", "v"])
@pytest.mark.parametrize("c", [1, 3, 4])
def test_reversible_round_trip_is_bit_exact(par, c) -> None:
    sm = injcert.ScoreModel(_net(c), "cosine", par)
    x = torch.rand(2, c, 8, 8) * 2 - 1
    with torch.no_grad():
        lat = injcert.encode(sm, x, steps=4, method="reversible")
        back = injcert.decode(sm, lat)
    assert torch.equal(back, x)


@pytest.mark.parametrize("par", ["eps", "denoiser", "v"])
def test_conversions_match_the_formulas(par) -> None:
    net = _net(3, dtype=torch.float64)
    sm = injcert.ScoreModel(net, "linear", par)
    x, t = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0.0, 0.4], dtype=torch.float64)
    a = sm.schedule.alpha(t).view(-1, 1, 1, 1)
    s = sm.schedule.sigma(t).view(-1, 1, 1, 1)
    out = net(x, t)
    want = {"eps": out, "denoiser": (x - a * out) / s.clamp(min=1e-3), "v": s * x + a * out}[par]
    assert torch.allclose(sm(x, t), want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(to_eps(out, x, par, a, s), want, rtol=1e-12, atol=1e-12)
    if par == "v":  # v = alpha eps - sigma x0 with x = alpha x0 + sigma eps: eps comes back
        x0, eps = torch.randn_like(x), torch.randn_like(x)
        xt, v = a * x0 + s * eps, a * eps - s * x0
        assert torch.allclose(s * xt + a * v, eps, atol=1e-12)


@pytest.mark.parametrize("par", ["eps", "denoiser", "v"])
@pytest.mark.parametrize("t", [0.0, 0.2, 0.9])
def test_pointwise_bound_dominates_the_dense_jacobian(par, t) -> None:
    sm = injcert.ScoreModel(_net(2, seed=1, dtype=torch.float64), "cosine", par, probe_size=4)
    L = sm.certified_lipschitz_at(t)
    tt = torch.full((1,), t, dtype=torch.float64)
    for seed in range(3):
        x = torch.randn(1, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        jac = torch.func.jacrev(lambda v: sm(v.view(1, 2, 4, 4), tt).reshape(-1))(x.reshape(-1))
        assert float(torch.linalg.matrix_norm(jac, 2)) <= L * (1 + 1e-9)


def test_conditioned_bound_is_uniform_over_conditions() -> None:
    torch.manual_seed(0)
    sm = injcert.ScoreModel(Cond(3).double(), "cosine", "eps", ("y", "m"), in_channels=3, probe_size=4)
    L = sm.certified_lipschitz_at(0.5)
    assert L >= float(torch.linalg.matrix_norm(sm.net.a.weight.reshape(3, -1), 2)) * 0.99  # a real bound
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    assert sm(x, 0.5).shape == x.shape  # y, m missing: zeros


def test_certificate_reports_the_flow_as_not_certified() -> None:
    sm = injcert.ScoreModel(_net(4), "cosine", "eps")
    cert = injcert.certify(sm, steps=4, samples=2, patch_size=8, logdet_size=4)
    assert cert["flow_bilipschitz"].status == "INFO"
    assert cert["flow_bilipschitz"].summary.startswith("NOT CERTIFIED")
    rows = cert["lipschitz_bound"].details["per_t"]
    assert len(rows) == 5 and rows[0]["t"] == 0.0  # every grid point, both ends of every step
    assert cert["integrator"].status == "PASS" and cert.verdict == "PASS"


def test_wrong_signatures_are_one_line() -> None:
    class Three(nn.Module):
        def forward(self, x, t, z):
            return x

    with pytest.raises(ScoreModelError, match=r"forward\(x, t\).*found forward\(x, t, z\)"):
        injcert.ScoreModel(Three())
    with pytest.raises(ScoreModelError, match="unknown parameterization"):
        injcert.ScoreModel(_net(3), parameterization="x0")
    with pytest.raises(ScoreModelError, match="lacks"):
        injcert.ScoreModel(_net(3), schedule=object())

    class Tup(nn.Module):
        def forward(self, x, t):
            return (x,)

    with pytest.raises(ScoreModelError, match="must return one tensor") as e:
        injcert.ScoreModel(Tup(), in_channels=3)(torch.zeros(1, 3, 4, 4), 0.1)
    assert "\n" not in str(e.value)

    class Shape(nn.Module):
        def forward(self, x, t):
            return x[:, :1]

    with pytest.raises(ScoreModelError, match="shaped like x"):
        injcert.ScoreModel(Shape(), in_channels=3)(torch.zeros(1, 3, 4, 4), 0.1)


def _cli(args, cwd, extra_path=None):
    env = subprocess_env()
    if extra_path:
        env["PYTHONPATH"] = str(extra_path) + ":" + env["PYTHONPATH"]
    return subprocess.run([sys.executable, "-m", "injcert", "certify", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


TINY = ["--steps", "3", "--samples", "0", "--quiet"]


def test_cli_factory(tmp_path: Path) -> None:
    (tmp_path / "tests_module.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__(); self.c = nn.Conv2d(4, 4, 3, padding=1)\n"
        "    def forward(self, x, t):\n        return 0.5 * x + self.c(x)\n"
        "def build():\n    torch.manual_seed(0)\n    return Net()\n")
    r = _cli(["--factory", "tests_module:build", *TINY], tmp_path, tmp_path)
    assert r.returncode in (0, 1), r.stderr
    assert "VERDICT:" in r.stdout and "certified L =" in r.stdout
    assert "NOT CERTIFIED: flow_bilipschitz" in r.stdout
    r = _cli(["--factory", "tests_module:nothing", *TINY], tmp_path, tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cli_refuses_a_pickle_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    (tmp_path / "model.pt").write_bytes(pickle.dumps(_Evil(str(marker)), protocol=2))
    r = _cli(["model.pt", *TINY], tmp_path)
    assert r.returncode == 2 and not marker.exists()
    assert len(r.stderr.strip().splitlines()) == 1 and "--factory" in r.stderr


def _pt2(tmp_path: Path) -> Path:
    net = _net(3)
    auto = torch.export.Dim.AUTO
    ep = torch.export.export(net, (torch.randn(2, 3, 8, 8), torch.rand(2)),
                             dynamic_shapes=({0: auto, 2: auto, 3: auto}, {0: auto}))
    path = tmp_path / "net.pt2"
    torch.export.save(ep, str(path))
    return path


def test_cli_pt2_gives_a_verdict(tmp_path: Path) -> None:
    path = _pt2(tmp_path)
    r = _cli([path.name, "--schedule", "cosine", "--parameterization", "eps", *TINY], tmp_path)
    assert r.returncode in (0, 1), r.stderr
    assert "VERDICT:" in r.stdout
    r = _cli([path.name, *TINY], tmp_path)
    assert r.returncode == 2 and "--schedule" in r.stderr


def test_cli_says_a_missing_program_is_not_found(tmp_path: Path) -> None:
    r = _cli(["missing.pt2", "--schedule", "cosine", "--parameterization", "eps", *TINY], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "not found" in r.stderr and "missing.pt2" in r.stderr


def test_cli_refuses_a_hostile_pt2(tmp_path: Path) -> None:
    good = _pt2(tmp_path)
    marker = tmp_path / "PWNED"
    evil = pickle.dumps(_Evil(str(marker)), protocol=2)
    bad = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if "/data/weights/" in info.filename or "/data/constants/" in info.filename:
                data = evil
            if info.filename.endswith(".json") and ("weights_config" in info.filename or
                                                    "constants_config" in info.filename):
                data = data.replace(b'"use_pickle": false', b'"use_pickle": true')
            zout.writestr(info, data)
    r = _cli([bad.name, "--schedule", "cosine", "--parameterization", "eps", *TINY], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert not marker.exists()
    assert len(r.stderr.strip().splitlines()) == 1
