"""Training: config validation, bit-exact resume (also after SIGKILL), 2-process DDP replicas."""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from injcert.errors import ConfigError
from injcert.io import load_checkpoint, load_state
from injcert.model import CondUNet
from injcert.tasks.train import TrainConfig, learning_rate, train
from injcert.theory.lipschitz import lipschitz_bound

from helpers import subprocess_env, tiny_config, tiny_unet

TINY = tiny_config()


def _cfg(tmp_path: Path, name: str, **kw) -> TrainConfig:
    d = dict(TINY, log=str(tmp_path / f"{name}.jsonl"), val_every=1000, **kw)
    return TrainConfig.from_dict(d)


def _losses(path: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, path.read_text().splitlines())]


def _config_file(tmp_path: Path, cfg: dict) -> Path:
    """``cfg`` written to ``tmp_path / "cfg.json"``."""
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


def _train_process(config: Path, out: Path) -> subprocess.Popen:
    """``python -m injcert.tasks.train`` on ``config`` in a child process, in the config's folder (stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "injcert.tasks.train", "--config", str(config), "--out", str(out), "--no-progress"],
        env=subprocess_env(), cwd=config.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize(
    "bad",
    [{"nonsense": 1}, {"batch_size": -4}, {"steps": -1}, {"patch_size": 0}, {"lr": 0.0},
     {"model": {"lipschitz_budget": 0}}, {"model": {"lipschitz_budget": -2.0}}, {"model": {"foo": 1}},
     {"ema_decay": 1.5}, {"channels": 2}, {"lr_schedule": "linear"}, {"lr_final": -1e-6},
     {"lr": 1e-3, "lr_final": 2e-3}, {"init": ""}, {"init": 3}, {"low_noise_fraction": 1.5},
     {"low_noise_fraction": -0.1}, {"low_noise_varsigma": 0.0}, {"loss_sigma_data": 0.0},
     {"loss_sigma_data": float("nan")}, {"loss_sigma_data": True}, {"refine_fraction": 1.5},
     {"refine_fraction": -0.1}, {"refine_varsigma": [0.0, 0.1]}, {"refine_varsigma": [0.2, 0.1]},
     {"refine_varsigma": 0.1}, {"refine_varsigma": [0.01, float("inf")]}, {"refine_varsigma": [True, 0.1]}],
)
def test_config_errors_are_one_line(bad):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(dict(TINY, **bad))
    assert "\n" not in str(err.value) and str(err.value)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 999), st.floats(0.1, 2.0))
def test_weighted_loss_is_the_denoisers_error_with_karras_weights(seed, sigma_data):
    """loss_sigma_data: the weighted loss is the mean over examples of lambda(sigma) |D - x0|^2 per pixel,
    lambda = (varsigma^2 + sigma_d^2)/(varsigma sigma_d)^2 (Karras et al. 2022, in VP coordinates), computed
    here from the denoiser the model implies; None is the plain mean squared eps error."""
    from injcert.model.objective import draw_training_batch, loss_on_batch

    model = tiny_unet(seed % 3, lipschitz_budget=60.0, lipschitz_kappa=3.0, skip_max=0.0,
                      parameterization="denoiser").double()
    sched = model.schedule
    x0 = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    batch = draw_training_batch(x0, torch.Generator().manual_seed(seed), sched)
    batch["eps"] = batch["eps"].double()
    batch["y"], batch["m"] = batch["y"].double(), batch["m"].double()
    t = batch["t"]
    a, s = sched.alpha(t)[:, None, None, None], sched.sigma(t)[:, None, None, None]
    xt = a * x0 + s * batch["eps"]
    with torch.no_grad():
        d = (xt - s * model(xt, t, batch["y"], batch["m"])) / a  # the implied denoiser
        vs2 = sched.varsigma(t) ** 2
        lam = (vs2 + sigma_data**2) / (vs2 * sigma_data**2)
        expect = ((d - x0).pow(2).flatten(1).mean(1) * lam).mean()
        got = loss_on_batch(model, batch, sigma_data)
        plain = loss_on_batch(model, batch)
        eps_err = (batch["eps"] - model(xt, t, batch["y"], batch["m"])).pow(2).mean()
    assert float(got) == pytest.approx(float(expect), rel=1e-8)
    assert float(plain) == pytest.approx(float(eps_err), rel=1e-12)
    assert float(got) >= float(plain)


@settings(max_examples=10, deadline=None)
@given(st.floats(0.0, 1.0), st.sampled_from([0.05, 0.2, 1.0]), st.integers(0, 999))
def test_low_noise_draws(fraction, low, seed):
    """The low-noise mixture changes only t: the noise and corruption are those of the uniform draw,
    a redrawn t lies in [t_min, t(low)], about the asked fraction is redrawn, and log varsigma of the
    redrawn ones is uniform (its mean is the interval's midpoint)."""
    from injcert.model.objective import draw_training_batch
    from injcert.model.schedule import CosineSchedule

    sched = CosineSchedule(t_max=0.995)
    x0 = torch.rand(1000, 1, 2, 2, generator=torch.Generator().manual_seed(seed))
    base = draw_training_batch(x0, torch.Generator().manual_seed(seed), sched, t_min=1e-3)
    mix = draw_training_batch(x0, torch.Generator().manual_seed(seed), sched, t_min=1e-3,
                              low_noise_fraction=fraction, low_noise_varsigma=low)
    for k in ("x0", "eps", "y", "m"):
        assert torch.equal(base[k], mix[k])
    assert mix["t"].dtype == torch.float64 and bool(((mix["t"] >= 1e-3) & (mix["t"] <= 0.995)).all())
    changed = mix["t"] != base["t"]
    n, p = changed.numel(), float(changed.double().mean())
    assert abs(p - fraction) <= 5 * math.sqrt(fraction * (1 - fraction) / n) + 1e-9
    if fraction == 0.0:
        assert torch.equal(base["t"], mix["t"])
    if int(changed.sum()) > 50:
        lv = torch.log(sched.varsigma(mix["t"][changed]))
        lo, hi = math.log(float(sched.varsigma(1e-3))), math.log(low)
        assert float(lv.max()) <= hi + 1e-9 and float(lv.min()) >= lo - 1e-9
        sd = (hi - lo) / math.sqrt(12 * int(changed.sum()))
        assert abs(float(lv.mean()) - (lo + hi) / 2) <= 5 * sd


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([0.0, 0.3, 1.0]), st.integers(0, 999))
def test_refinement_draws_start_missing_pixels_from_the_estimate(fraction, seed):
    """refine_fraction: only mask examples (some pixels observed, some missing, none blurred or noisy)
    are refined; their delta is inpaint_biharmonic's estimate minus x0 at the missing pixels and 0
    elsewhere, their varsigma lies in refine_varsigma, the other draws are those of the plain batch;
    and the loss is the plain loss on x_t = alpha (x0 + delta) + sigma eps with the denoiser's target x0."""
    from injcert.model.objective import draw_training_batch, loss_on_batch
    from injcert.tasks.classical import classical_estimate

    model = tiny_unet(seed % 3, lipschitz_budget=60.0, lipschitz_kappa=3.0, skip_max=0.0,
                      parameterization="denoiser").double()
    sched = model.schedule
    x0 = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    base = draw_training_batch(x0, torch.Generator().manual_seed(seed), sched, low_noise_fraction=0.5)
    ref = draw_training_batch(x0, torch.Generator().manual_seed(seed), sched, low_noise_fraction=0.5,
                              refine_fraction=fraction, refine_varsigma=(0.02, 0.1))
    for k in ("x0", "eps", "y", "m"):
        assert torch.equal(base[k], ref[k])
    assert torch.equal(base["delta"], torch.zeros_like(x0))
    m = ref["m"]
    known = m[:, 0] == 1
    masks = known.flatten(1).any(1) & (~known).flatten(1).any(1) & (m[:, 1:] == 0).flatten(1).all(1)
    refined = ref["delta"].flatten(1).abs().amax(1) > 0
    assert not bool((refined & ~masks).any())
    if fraction == 0.0:
        assert not bool(refined.any()) and torch.equal(base["t"], ref["t"])
    if fraction == 1.0:
        assert bool(masks.any()) and bool(refined[masks].all())  # a smooth fill is never exact on noise
    vs = sched.varsigma(ref["t"][refined])
    assert bool(((vs >= 0.02 - 1e-9) & (vs <= 0.1 + 1e-9)).all())
    assert torch.equal(ref["t"][~refined], base["t"][~refined])
    for i in refined.nonzero().flatten().tolist():
        _, est = classical_estimate(ref["y"][i:i + 1] * m[i:i + 1, :1], m[i:i + 1], "inpaint_biharmonic")
        miss = (m[i:i + 1, :1] != 1).expand_as(est)
        assert torch.allclose(ref["delta"][i:i + 1], torch.where(miss, est - x0[i:i + 1], 0.0), atol=1e-6)
    t = ref["t"]
    a, s = sched.alpha(t)[:, None, None, None], sched.sigma(t)[:, None, None, None]
    xt = a * (x0 + ref["delta"]) + s * ref["eps"].double()
    with torch.no_grad():
        d = (xt - s * model(xt, t, ref["y"].double(), m.double())) / a  # the implied denoiser
        expect = ((d - x0).pow(2) * (a / s).pow(2)).mean()  # plain loss = denoiser error * (alpha/sigma)^2
        got = loss_on_batch(model, {**ref, "eps": ref["eps"].double(), "y": ref["y"].double(), "m": m.double()})
    assert float(got) == pytest.approx(float(expect), rel=1e-8)


def test_resume_is_bit_exact(tmp_path):
    full = train(_cfg(tmp_path, "full", steps=6, checkpoint_every=3), tmp_path / "full.ckpt", progress=False)
    part = train(_cfg(tmp_path, "part", steps=3, checkpoint_every=3), tmp_path / "part.ckpt", progress=False)
    train(_cfg(tmp_path, "part", steps=6, checkpoint_every=3), part, resume=str(part) + ".state", progress=False)
    assert _losses(tmp_path / "full.jsonl") == _losses(tmp_path / "part.jsonl")
    assert [s for s, _ in _losses(tmp_path / "part.jsonl")] == list(range(1, 7))
    ta, ma = load_state(str(full) + ".state")
    tb, mb = load_state(str(part) + ".state")
    assert ma["step"] == mb["step"] == 6 and ta.keys() == tb.keys()
    for k in ta:
        if k != "rng/torch":
            assert torch.equal(ta[k], tb[k]), k
    a, b = load_checkpoint(full), load_checkpoint(part)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    # the saved (EMA) model is certified within its budget
    assert lipschitz_bound(a, (3, 16, 16), size_independent=True).value <= a.lipschitz_budget
    assert a.checkpoint_metadata["step"] == 6 and a.checkpoint_metadata["seed"] == 0


def test_resume_after_sigkill(tmp_path):
    cfg = dict(TINY, steps=400, checkpoint_every=2, val_every=1000, log=str(tmp_path / "killed.jsonl"))
    config = _config_file(tmp_path, cfg)
    out = tmp_path / "killed.ckpt"
    state = Path(str(out) + ".state")
    proc = _train_process(config, out)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if state.exists():
                try:
                    if load_state(state)[1]["step"] >= 4:
                        break
                except Exception:  # noqa: BLE001 - the file is replaced atomically; retry
                    pass
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.13)  # land somewhere in the middle of a step / a save
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    k = load_state(state)[1]["step"]
    stop = k + 3
    # resume (in this process) up to `stop`; compare with an uninterrupted run to `stop`
    train(TrainConfig.from_dict(dict(cfg, steps=stop)), out, resume=state, progress=False)
    ref = train(_cfg(tmp_path, "ref", steps=stop, checkpoint_every=2), tmp_path / "ref.ckpt", progress=False)
    assert _losses(tmp_path / "killed.jsonl") == _losses(tmp_path / "ref.jsonl")
    ta, _ = load_state(state)
    tb, _ = load_state(str(ref) + ".state")
    for key in ta:
        if key.startswith(("model/", "ema/", "optim/")):
            assert torch.equal(ta[key], tb[key]), key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_identical_replicas(tmp_path):
    config = _config_file(tmp_path, dict(TINY, steps=3, checkpoint_every=3, val_batches=0, log=str(tmp_path / "ddp.jsonl")))
    out = tmp_path / "ddp.ckpt"
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={_free_port()}", "-m", "injcert.tasks.train", "--config", str(config),
         "--out", str(out), "--no-progress"],
        env=subprocess_env(), cwd=tmp_path, capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    model = load_checkpoint(out)
    md = model.checkpoint_metadata
    assert md["world_size"] == 2 and md["step"] == 3
    hashes = md["replica_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    # the hash is that of the raw weights rank 0 saved in the state file
    import hashlib

    tensors, _ = load_state(str(out) + ".state")
    h = hashlib.sha256()
    for name, t in sorted((k[len("model/"):], v) for k, v in tensors.items() if k.startswith("model/")):
        h.update(name.encode())
        h.update(t.contiguous().numpy().tobytes())
    assert h.hexdigest() == hashes[0]
    assert len(_losses(tmp_path / "ddp.jsonl")) == 3  # rank 0 alone logs


def _state_tensors(path: Path) -> dict[str, torch.Tensor]:
    t, _ = load_state(str(path) + ".state")
    return {k: v for k, v in t.items() if k.startswith(("model/", "ema/", "optim/"))}


def test_dataloader_workers_give_the_same_run(tmp_path):
    """Batches drawn ahead in worker processes are those the training process would draw."""
    a = train(_cfg(tmp_path, "w0", steps=3, checkpoint_every=3), tmp_path / "w0.ckpt", progress=False, workers=0)
    b = train(_cfg(tmp_path, "w2", steps=3, checkpoint_every=3), tmp_path / "w2.ckpt", progress=False, workers=2)
    assert _losses(tmp_path / "w0.jsonl") == _losses(tmp_path / "w2.jsonl")
    ta, tb = _state_tensors(a), _state_tensors(b)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_time_limit_stops_saves_and_resumes_exactly(tmp_path):
    out = tmp_path / "limited.ckpt"
    train(_cfg(tmp_path, "limited", steps=1000, checkpoint_every=1000), out, progress=False, time_limit=1e-9)
    _, meta = load_state(str(out) + ".state")
    assert meta["step"] == 1  # stopped (and saved) at the first step boundary past the limit
    train(_cfg(tmp_path, "limited", steps=4, checkpoint_every=1000), out, resume=str(out) + ".state", progress=False)
    ref = train(_cfg(tmp_path, "ref", steps=4, checkpoint_every=1000), tmp_path / "ref.ckpt", progress=False)
    assert _losses(tmp_path / "limited.jsonl") == _losses(tmp_path / "ref.jsonl")
    ta, tb = _state_tensors(out), _state_tensors(ref)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_sigterm_saves_before_exit(tmp_path):
    cfg = dict(TINY, steps=100000, checkpoint_every=100000, val_every=100000, log=str(tmp_path / "term.jsonl"))
    config = _config_file(tmp_path, cfg)
    out = tmp_path / "term.ckpt"
    proc = _train_process(config, out)
    log = tmp_path / "term.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
    _, meta = load_state(str(out) + ".state")
    steps = [s for s, _ in _losses(log)]
    assert meta["step"] == steps[-1] >= 2 and steps == list(range(1, steps[-1] + 1))
    assert load_checkpoint(out).checkpoint_metadata["step"] == meta["step"]


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 400), warmup=st.integers(0, 50), lr=st.floats(1e-6, 1e-1),
       frac=st.floats(0.0, 1.0), schedule=st.sampled_from(["constant", "cosine"]))
def test_learning_rate_schedule(steps, warmup, lr, frac, schedule):
    cfg = TrainConfig.from_dict(dict(TINY, steps=steps, warmup_steps=warmup, lr=lr, lr_final=lr * frac,
                                     lr_schedule=schedule))
    rates = [learning_rate(cfg, k) for k in range(steps)]
    assert all(0.0 < r <= lr * (1 + 1e-12) for r in rates)
    for k in range(min(warmup - 1, steps)):  # the linear warm-up, as before
        assert rates[k] == pytest.approx(lr * (k + 1) / warmup)
    after = rates[max(warmup - 1, 0):]
    if schedule == "constant":
        assert all(r == lr for r in after)
    elif steps > warmup:  # non-increasing after the warm-up, from lr down to lr_final at the last step
        assert all(a >= b - 1e-15 for a, b in zip(after, after[1:]))
        # the last step is within (pi eps)^2 / 4 of lr_final, eps = 1/(steps - warmup + 1)
        eps = 1.0 / (steps - warmup + 1)
        assert lr * frac * (1 - 1e-12) <= rates[-1] <= lr * frac + lr * (1 - frac) * (math.pi * eps) ** 2 / 4 + 1e-15
        assert after[0] == pytest.approx(lr, rel=1e-9) or warmup == 0


def test_init_starts_from_a_checkpoint_and_records_it(tmp_path):
    base = train(_cfg(tmp_path, "base", steps=3, checkpoint_every=3), tmp_path / "base.ckpt", progress=False)
    src = load_checkpoint(base)
    # zero steps from init: the written model is the init checkpoint's weights, bit for bit
    same = train(_cfg(tmp_path, "same", steps=0, init=str(base)), tmp_path / "same.ckpt", progress=False)
    for (ka, va), (kb, vb) in zip(src.state_dict().items(), load_checkpoint(same).state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    # a fine-tuning run starts from those weights, not from random ones: its first loss is the
    # base run's model on the first batch, and it differs from a fresh run's
    tuned = train(_cfg(tmp_path, "tuned", steps=2, init=str(base), lr_schedule="cosine"), tmp_path / "t.ckpt",
                  progress=False)
    fresh = train(_cfg(tmp_path, "fresh", steps=2), tmp_path / "f.ckpt", progress=False)
    assert _losses(tmp_path / "tuned.jsonl")[0] != _losses(tmp_path / "fresh.jsonl")[0]
    md = load_checkpoint(tuned).checkpoint_metadata
    rec = md["resumed"][0]["init"]
    assert rec["path"] == str(base) and rec["step"] == 3 and len(rec["weights_sha256"]) == 64
    assert md["training_config"]["init"] == str(base)
    assert fresh.exists()


def test_init_refuses_other_model_options_and_its_own_path(tmp_path):
    base = train(_cfg(tmp_path, "base", steps=1), tmp_path / "base.ckpt", progress=False)
    other = dict(TINY["model"], base_channels=TINY["model"].get("base_channels", 8) * 2)
    with pytest.raises(ConfigError, match="other model options.*base_channels"):
        train(_cfg(tmp_path, "x", steps=1, init=str(base), model=other), tmp_path / "x.ckpt", progress=False)
    with pytest.raises(Exception, match="--out"):
        train(_cfg(tmp_path, "y", steps=1, init=str(base)), base, progress=False)
    assert load_checkpoint(base).checkpoint_metadata["step"] == 1  # untouched


def test_model_from_init_takes_the_checkpoints_model_options(tmp_path, capsys):
    """``train --model-from-init``: a recipe whose model options differ from the init checkpoint's
    fine-tunes that checkpoint with the checkpoint's options (without the flag: refused, one line);
    the flag without ``--init``: one error line, exit 2."""
    from injcert.cli import main

    base = train(_cfg(tmp_path, "base", steps=1), tmp_path / "base.ckpt", progress=False)
    other = dict(TINY["model"], base_channels=TINY["model"].get("base_channels", 8) * 2)
    config = _config_file(tmp_path, dict(TINY, steps=1, model=other, val_every=1000))
    common = ["train", "--config", str(config), "--init", str(base), "--quiet"]
    assert main(common + ["--out", str(tmp_path / "refused.ckpt")]) == 2
    assert "other model options" in capsys.readouterr().err
    assert main(common + ["--model-from-init", "--out", str(tmp_path / "tuned.ckpt")]) == 0
    assert load_checkpoint(tmp_path / "tuned.ckpt").config == load_checkpoint(base).config
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--model-from-init", "--out", str(tmp_path / "x.ckpt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model-from-init needs --init" in err[0]


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json")),
                         ids=lambda p: p.name)
def test_every_shipped_config_parses_and_builds(path):
    cfg = TrainConfig.from_dict(json.loads(path.read_text()))
    model = CondUNet.from_config(cfg.model)
    assert model.config["cond_head"] == cfg.model.get("cond_head", False)


def test_a_weighted_run_with_a_cond_head_trains_and_records_both_options(tmp_path):
    """loss_sigma_data and cond_head through the whole trainer: the run logs finite (weighted) losses, the
    checkpoint records both options, and the head has moved off its zero initialisation."""
    model = dict(TINY["model"], lipschitz_budget=60.0, lipschitz_kappa=3.0, skip_max=0.0,
                 parameterization="denoiser", cond_head=True)
    out = train(_cfg(tmp_path, "w", steps=3, checkpoint_every=3, loss_sigma_data=0.5, model=model, lr=1e-2),
                tmp_path / "w.ckpt", progress=False)
    losses = _losses(tmp_path / "w.jsonl")
    assert len(losses) == 3 and all(math.isfinite(v) for _, v in losses)
    ck = load_checkpoint(out)
    assert ck.checkpoint_metadata["training_config"]["loss_sigma_data"] == 0.5 and ck.config["cond_head"] is True
    assert any(float(p.abs().max()) > 0 for p in ck.cond_head.parameters())


@pytest.mark.slow
def test_gpu_train_script_runs_both_stages_on_the_cpu(tmp_path):
    """``scripts/gpu_train.sh`` is meant for minutes of a GPU that nobody can debug on: its whole path
    (a restorer trained from scratch, grafted into the shipped refiner, the refiner fine-tuned with
    ``--model-from-init``) runs here on the CPU with a tiny restorer and a few seconds' budget."""
    import os
    import subprocess
    import sys

    from helpers import subprocess_env

    root = Path(__file__).resolve().parents[1]
    cfg = json.loads((root / "configs" / "restorer_large.json").read_text())
    cfg["model"]["restorer"] = {"width": 4, "mults": [1, 2]}
    cfg.update(patch_size=16, checkpoint_every=1, val_batches=1)
    small = tmp_path / "restorer_small.json"
    small.write_text(json.dumps(cfg))
    env = dict(subprocess_env(), DEVICE="cpu", R_BATCH="2", F_BATCH="2", VPY=sys.executable,
               RESTORER_CONFIG=str(small))
    out = tmp_path / "run"
    proc = subprocess.run(["bash", str(root / "scripts" / "gpu_train.sh"), str(out), "6"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = load_checkpoint(out / "model.ckpt")
    shipped = load_checkpoint(root / "injcert" / "assets" / "default.ckpt")
    assert model.config["restorer"]["width"] == 4 and model.restorer.symmetries == shipped.restorer.symmetries
    assert {k: v for k, v in model.config.items() if k != "restorer"} == \
        {k: v for k, v in shipped.config.items() if k != "restorer"}
    assert os.path.exists(str(out / "model.ckpt") + ".state") and (out / "model.log.jsonl").exists()
