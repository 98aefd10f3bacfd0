"""The certificate: CLI exit codes, hostile inputs, soundness of every certified entry, schema.

Small models only: a tiny ``CondUNet`` and ``OrthoScore``, a network whose Lipschitz constant is
known exactly (orthogonal 1x1 convolutions around a ReLU, times a scale).
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from injcert.certify import FAIL, PASS, Certificate, CertifyConfig, certify, validate
from injcert.theory.flow import gronwall_exponent, step_margins
from injcert.theory.rounding import round_down, round_up
from injcert.cli import main
from injcert.errors import CheckpointError, ConfigError
from injcert.io import MODEL_REGISTRY, register_model, save_checkpoint
from injcert.model.schedule import get_schedule
from injcert.solvers import make_grid
from injcert.theory.lipschitz import register_lipschitz_rule

from helpers import tiny_unet

FAST = ["--steps", "8", "--samples", "2"]


def _orthogonal(c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=torch.float64))
    return q


class OrthoScore(nn.Module):
    r"""$\varepsilon(x, t, y, m) = s\,Q_2\,\mathrm{relu}(Q_1 x + b(t)) + 0.1\,y$: Lipschitz constant exactly $s$."""

    def __init__(self, in_channels: int = 3, scale: float = 0.3, budget: float | None = None, t_max: float = 0.995) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.scale = float(scale)
        self.schedule = get_schedule({"name": "cosine", "t_max": t_max})
        self.lipschitz_budget = float(budget) if budget is not None else 1.01 * self.scale
        self.body = nn.Sequential(nn.Conv2d(in_channels, in_channels, 1, bias=False), nn.ReLU(),
                                  nn.Conv2d(in_channels, in_channels, 1, bias=False))
        self.time = nn.Linear(1, in_channels)
        with torch.no_grad():
            self.body[0].weight.copy_(_orthogonal(in_channels, 1).float()[:, :, None, None])
            self.body[2].weight.copy_(_orthogonal(in_channels, 2).float()[:, :, None, None])

    @property
    def config(self) -> dict:
        return {"in_channels": self.in_channels, "scale": self.scale, "budget": self.lipschitz_budget,
                "t_max": self.schedule.t_max}

    @classmethod
    def from_config(cls, cfg: dict) -> "OrthoScore":
        return cls(**cfg)

    def forward(self, x, t, y=None, m=None):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        b = self.time(t.to(self.time.weight.dtype)).to(x.dtype)[:, :, None, None]
        h = self.body[0](x) + b
        out = self.scale * self.body[2](self.body[1](h))
        return out if y is None else out + 0.1 * y


if "test_ortho_score" not in MODEL_REGISTRY:
    register_model("test_ortho_score")(OrthoScore)


@register_lipschitz_rule(OrthoScore)
def _ortho_rule(module: OrthoScore, shape: tuple, ctx) -> tuple[float, tuple]:
    # the time bias and the observation y do not depend on x
    lip, out = ctx.bound(module.body, shape, "body")
    return lip * module.scale, out


@pytest.fixture(scope="module")
def ortho_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "ortho.ckpt"
    save_checkpoint(OrthoScore(), path)
    return path


@pytest.fixture(scope="module")
def unet_ckpt(tmp_path_factory) -> Path:
    model = tiny_unet(lipschitz_budget=2.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_unet.ckpt"
    save_checkpoint(model, path, metadata={"note": "untrained test model"})
    return path


def _run(argv, capsys) -> tuple[int, str, str]:
    rc = main(["certify", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _assert_unusable(rc: int, err: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("injcert certify: error:")


# ----------------------------------------------------------------------------- happy paths


def test_tiny_unet_certifies_via_cli(unet_ckpt, tmp_path, capsys):
    out = tmp_path / "cert.json"
    md = tmp_path / "cert.md"
    rc, stdout, err = _run([unet_ckpt, "--json", out, "--markdown", md, *FAST], capsys)
    assert rc == 0, stdout + err
    assert "VERDICT: PASS" in stdout
    report = json.loads(out.read_text())
    validate(report)
    assert report["verdict"] == "PASS" and not report["soundness_failure"]
    names = [p["name"] for p in report["properties"]]
    for name in ("finite_weights", "lipschitz_bound", "flow_bilipschitz", "integrator", "logdet_interval",
                 "lipschitz_empirical", "round_trip_reversible", "injectivity_empirical", "growth_empirical"):
        assert name in names
    assert all(p["theorem"].startswith("proofs/") for p in report["properties"])
    text = md.read_text()
    assert "proofs/05-compositional-lipschitz.md" in text and "# injcert certificate: PASS" in text


def test_known_lipschitz_constant_within_one_percent(ortho_ckpt):
    cert = certify(ortho_ckpt, steps=12, samples=4)
    assert isinstance(cert, Certificate)
    L = cert["lipschitz_bound"].value
    assert 0.3 <= L <= 0.3 * 1.01
    # the empirical lower bound is sound and (orthogonal weights, ReLU) nearly tight
    lower = cert["lipschitz_empirical"].value
    assert lower <= L * (1 + 1e-9)
    assert cert.verdict == PASS, cert.table()
    # Grönwall closed form
    s_max = math.tan(math.pi * 0.995 / 2)
    assert cert["flow_bilipschitz"].value == pytest.approx(L * math.asinh(s_max), rel=1e-9)
    assert cert["flow_bilipschitz"].value >= L * math.asinh(s_max)


@pytest.mark.parametrize("method", ["fixed_point", "ddim"])
def test_euler_methods_certified_when_margins_hold(ortho_ckpt, method):
    cert = certify(ortho_ckpt, steps=12, samples=2, method=method)
    assert cert.verdict == PASS, cert.table()
    assert cert["integrator"].value < 1
    fp = cert["round_trip_fixed_point"]
    assert fp.status == PASS and fp.value <= fp.bound


def test_too_few_steps_fail_with_margin_and_steps_needed(ortho_ckpt):
    cert = certify(ortho_ckpt, steps=3, samples=0, method="ddim")
    integ = cert["integrator"]
    assert integ.status == FAIL and integ.value >= 1
    assert "needs >=" in integ.summary and cert.exit_code == 1
    needed = integ.details["margins"]["steps_needed"]
    assert certify(ortho_ckpt, steps=needed, samples=0, method="ddim")["integrator"].status == PASS


def test_figures_and_markdown(ortho_ckpt, tmp_path, capsys):
    figs = tmp_path / "figs"
    rc, stdout, _ = _run([ortho_ckpt, "--figures", figs, "--steps", "12", "--samples", "2"], capsys)
    assert rc == 0, stdout
    names = sorted(p.name for p in figs.iterdir())
    assert names == ["lipschitz_layers.png", "logdet.png", "round_trip.png", "step_margins.png"]


def test_model_object_and_config(tmp_path):
    model = OrthoScore(scale=0.2)
    cert = certify(model, CertifyConfig(steps=10, samples=0))
    assert cert.verdict == PASS and cert.model["path"] is None
    with pytest.raises(ConfigError, match="unknown certify option"):
        certify(model, stepz=3)
    with pytest.raises(ConfigError, match="method"):
        certify(model, method="euler")


# ----------------------------------------------------------------------------- hostile inputs


def test_missing_file(tmp_path, capsys):
    rc, _, err = _run([tmp_path / "nope.ckpt"], capsys)
    _assert_unusable(rc, err)
    assert "not found" in err


def test_truncated_file(ortho_ckpt, tmp_path, capsys):
    data = ortho_ckpt.read_bytes()
    for cut in (4, len(data) // 2, len(data) - 3):
        bad = tmp_path / f"trunc{cut}.ckpt"
        bad.write_bytes(data[:cut])
        rc, _, err = _run([bad], capsys)
        _assert_unusable(rc, err)


def test_garbage_bytes(tmp_path, capsys):
    bad = tmp_path / "garbage.ckpt"
    bad.write_bytes(bytes(range(256)) * 7)
    rc, _, err = _run([bad], capsys)
    _assert_unusable(rc, err)


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_malicious_pickle_is_never_unpickled(tmp_path, capsys):
    marker = tmp_path / "pwned"
    for name, writer in (("zip.ckpt", lambda p: torch.save({"w": _Payload(str(marker))}, p)),
                         ("raw.ckpt", lambda p: p.write_bytes(pickle.dumps(_Payload(str(marker)), protocol=2)))):
        path = tmp_path / name
        writer(path)
        assert not marker.exists()
        rc, _, err = _run([path], capsys)
        _assert_unusable(rc, err)
        assert "pickle" in err
        assert not marker.exists()


def test_unknown_architecture(tmp_path, capsys):
    from safetensors.torch import save_file

    path = tmp_path / "alien.ckpt"
    cfg = json.dumps({"model": "alien_net", "model_config": {}, "metadata": {}})
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "injcert-checkpoint", "version": "1", "config": cfg})
    rc, _, err = _run([path], capsys)
    _assert_unusable(rc, err)
    assert "alien_net" in err


def test_bad_option_is_one_line_error(ortho_ckpt, capsys):
    rc, _, err = _run([ortho_ckpt, "--steps", "0"], capsys)
    _assert_unusable(rc, err)


def test_nan_weights_fail_with_parameter_names(tmp_path, capsys):
    model = OrthoScore()
    with torch.no_grad():
        model.body[0].weight[0, 0, 0, 0] = float("nan")
        model.time.bias[0] = float("inf")
    path = tmp_path / "nan.ckpt"
    save_checkpoint(model, path)
    out = tmp_path / "nan.json"
    rc, stdout, err = _run([path, "--json", out], capsys)
    assert rc == 1 and err == ""
    assert "body.0.weight" in stdout and "time.bias" in stdout and "VERDICT: FAIL" in stdout
    report = json.loads(out.read_text())
    validate(report)
    assert [p["name"] for p in report["properties"]] == ["finite_weights"]
    assert report["failed"] == ["finite_weights"]


def test_unsupported_module_fails_not_crashes():
    from injcert.testing import AnalyticMixtureScore

    class NoRule(AnalyticMixtureScore):
        pass

    cert = certify(NoRule(), steps=5, samples=0)
    p = cert["lipschitz_bound"]
    assert p.status == FAIL and "NoRule" in p.summary
    assert cert.verdict == FAIL and cert["integrator"].status == "SKIPPED"


# ----------------------------------------------------------------------------- soundness


def test_planted_soundness_violation_is_caught(ortho_ckpt, tmp_path, capsys, monkeypatch):
    import injcert.theory.lipschitz as lipmod

    real = lipmod.lipschitz_bound

    def too_small(module, shape, *, size_independent=False):
        lb = real(module, shape, size_independent=size_independent)
        return lipmod.LipschitzBound(lb.value * 0.5, lb.layers, lb.input_shape, lb.size_independent)

    from injcert.certify import bounds as certify_bounds

    monkeypatch.setattr(lipmod, "lipschitz_bound", too_small)
    monkeypatch.setattr(certify_bounds, "lipschitz_bound", too_small)  # the name the certificate calls
    out = tmp_path / "unsound.json"
    rc, stdout, _ = _run([ortho_ckpt, "--json", out, "--steps", "12", "--samples", "4"], capsys)
    assert rc == 1
    assert stdout.count("SOUNDNESS FAILURE") >= 2  # banner and the entry
    report = json.loads(out.read_text())
    validate(report)
    assert report["soundness_failure"] is True and report["verdict"] == "FAIL"
    bad = {p["name"] for p in report["properties"] if p["soundness_failure"]}
    assert "lipschitz_empirical" in bad
    assert all(p["status"] == "FAIL" for p in report["properties"] if p["soundness_failure"])


def test_schema_rejects_malformed_reports(ortho_ckpt):
    import jsonschema

    report = json.loads(certify(ortho_ckpt, steps=6, samples=0).to_json())
    validate(report)
    for mutate in (lambda r: r.update(verdict="MAYBE"), lambda r: r["properties"][0].pop("theorem"),
                   lambda r: r["properties"][0].update(status="OK"), lambda r: r.pop("model")):
        bad = json.loads(json.dumps(report))
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate(bad)


def test_gronwall_closed_form_and_rounding():
    from scipy.integrate import quad

    for L, s in ((1.0, 1.0), (30.0, 127.3), (1e-3, 5.0)):
        lam = gronwall_exponent(L, 0.0, s)
        exact, _ = quad(lambda v: L / math.sqrt(1 + v * v), 0.0, s, epsabs=0, epsrel=1e-13)
        assert exact <= lam <= exact * (1 + 1e-10)
    # per-step exponents add up to (at least) the whole one
    g = [0.0, 0.1, 1.0, 10.0]
    assert sum(gronwall_exponent(2.0, a, b) for a, b in zip(g, g[1:])) >= gronwall_exponent(2.0, 0.0, 10.0) * (1 - 1e-12)
    assert round_down(1.0) < 1.0 < round_up(1.0) and round_up(-1.0) > -1.0 and round_up(0.0) == 0.0
    # margins use the left end of each step (alpha decreasing)
    sched = get_schedule("cosine")
    hs, ls, qs = step_margins([0.0, 1.0, 3.0], 2.0, sched)
    assert ls[0] >= 2.0 and ls[1] >= 2.0 / math.sqrt(2.0) and qs[1] >= 2 * ls[1] * (1 - 1e-15)


@pytest.mark.cuda
def test_cuda_device(ortho_ckpt, capsys):
    rc, stdout, _ = _run([ortho_ckpt, "--device", "cuda", "--steps", "8", "--samples", "2"], capsys)
    assert rc == 0, stdout


def test_cuda_unavailable_is_one_line_error(ortho_ckpt, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    rc, _, err = _run([ortho_ckpt, "--device", "cuda"], capsys)
    _assert_unusable(rc, err)


# ----------------------------------------------------------------------------- noise-adaptive budget


def test_adaptive_budget_certifies_fixed_point_at_50_steps_with_finite_logdet_lower_end():
    """A kappa/sigma_t budget keeps h_k alpha_k L(t_k) = kappa (s_{k+1}/s_k - 1) < 1 on the default
    50-step geometric grid: the Euler steps are certified injective, the fixed-point inverse runs,
    and the log-det interval has a finite lower end (docs/design.md, the noise-adaptive budget)."""
    from injcert.theory.flow import LipschitzProfile
    model = tiny_unet(lipschitz_budget=400.0, lipschitz_kappa=3.0, skip_max=0.5, data_variance=0.25)
    cert = certify(model, steps=50, samples=2, patch_size=16, logdet_size=4, hutchpp_steps=3,
                   hutchpp_queries=4, lipschitz_iters=3, round_trip_study=False, method="fixed_point")
    props = {p.name: p for p in cert.properties}
    assert cert.verdict == "PASS", cert.to_markdown()
    lip = props["lipschitz_bound"]
    rows = lip.details["per_t"]
    assert len(rows) == 50 and all(r["certified"] <= r["budget"] for r in rows)
    assert [r["certified"] for r in rows] == sorted((r["certified"] for r in rows), reverse=True)
    integ = props["integrator"]
    assert integ.status == "PASS" and integ.value < 1.0
    # every margin is h_k * alpha_k * L(t_k) with the per-t bound, not the sup
    assert max(integ.details["margins"]["per_step"]) < 1.0
    assert math.isfinite(props["logdet_interval"].details["certified_lower"])
    assert props["round_trip_fixed_point"].status == "PASS"
    # the uniform sup would not certify this grid: the per-t profile is what makes it work
    sup = model.certified_lipschitz()
    g = [float(v) for v in make_grid(model.schedule, 50)]
    assert max(step_margins(g, sup, model.schedule)[2]) > max(integ.details["margins"]["per_step"])
    prof = LipschitzProfile(model.certified_lipschitz_at, sup)
    # the model runs in float32: the field multiplies by fl32(alpha), charged alpha (1 + 2^-24)
    assert step_margins(g, prof, model.schedule, alpha_rel=2.0**-24)[2] == integ.details["margins"]["per_step"]
    assert step_margins(g, prof, model.schedule)[2] < integ.details["margins"]["per_step"]


# ----------------------------------------------------------------------------- checks side by side


def test_checks_side_by_side_give_the_sequential_certificate(unet_ckpt):
    """With two CPU threads the checks after the flow constants run as two lanes in threads; the
    report (every property, value, detail and the data behind the figures) is the one the same
    checks give run in order with one thread, and the thread count is restored afterwards."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        seq = certify(unet_ckpt, steps=8, samples=4, patch_size=16, logdet_size=4, hutchpp_steps=3)
        torch.set_num_threads(2)
        par = certify(unet_ckpt, steps=8, samples=4, patch_size=16, logdet_size=4, hutchpp_steps=3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    strip = lambda r: {k: v for k, v in json.loads(r.to_json()).items() if k != "timings"}  # noqa: E731
    assert strip(par) == strip(seq)
    assert [p.name for p in par.properties][-6:] == ["lipschitz_empirical", "round_trip_reversible",
                                                      "round_trip_fixed_point", "round_trip_ddim",
                                                      "injectivity_empirical", "growth_empirical"]
    assert set(par.timings) == {"load", "lipschitz", "flow", "integrator", "logdet", "empirical", "total"}


def test_an_error_in_a_lane_reaches_the_caller(unet_ckpt, monkeypatch):
    """A check that raises inside a lane's thread raises in the caller, not in the thread's log."""
    import importlib

    certificate = importlib.import_module("injcert.certify.certificate")

    def broken(ctx):
        raise RuntimeError("planted failure in a lane")

    checks = tuple((p, broken if c.__name__ == "pairs_check" else c, lane) for p, c, lane in certificate.CHECKS)
    monkeypatch.setattr(certificate, "CHECKS", checks)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="planted failure in a lane"):
            certify(unet_ckpt, steps=6, samples=2, patch_size=16, logdet_size=4, hutchpp_steps=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_shared_context_attributes_are_computed_once_across_threads():
    """The context's attributes (the held-out flows, the round trip) are computed once even when two
    lanes ask for them at the same moment."""
    import threading
    import time

    from injcert.certify.context import cached_property

    class Ctx:
        calls = 0

        @cached_property
        def slow(self):
            Ctx.calls += 1
            time.sleep(0.05)
            return object()

    ctx = Ctx()
    got = []
    workers = [threading.Thread(target=lambda: got.append(ctx.slow)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert Ctx.calls == 1 and all(g is got[0] for g in got)
    assert Ctx().slow is not got[0] and Ctx.calls == 2
