"""Fault injection: a training run killed again and again (SIGKILL and SIGINT, at seeded random
moments, a reader loading its files all the while) and resumed each time ends with the weights and
the log of an uninterrupted run, and leaves no temporary file behind.

What must hold after any kill: the checkpoint and the state on disk are complete files (the
reader never sees a half-written one: writes are temp file + fsync + rename); the log never loses
or repeats a step (a resume reconciles it with the state); SIGINT saves a checkpoint at the next
step boundary and exits 0.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from injcert.errors import CheckpointError
from injcert.io import load_checkpoint, load_state
from injcert.tasks.train import TrainConfig, train

from helpers import subprocess_env, tiny_config

STEPS = 48
KILLS = ("KILL", "INT", "KILL", "INT", "KILL")


def _losses(path: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, path.read_text().splitlines())]


def _start(config: Path, out: Path, resume: bool) -> subprocess.Popen:
    argv = [sys.executable, "-m", "injcert.tasks.train", "--config", str(config), "--out", str(out), "--no-progress"]
    if resume:
        argv += ["--resume", str(out) + ".state"]
    return subprocess.Popen(argv, env=subprocess_env(), cwd=config.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _step_on_disk(state: Path) -> int:
    return int(load_state(state)[1]["step"]) if state.exists() else 0


class _Reader(threading.Thread):
    """Loads the checkpoint and the state in a loop; every load must succeed once the file exists."""

    def __init__(self, out: Path) -> None:
        super().__init__(daemon=True)
        self.paths = (out, Path(str(out) + ".state"))
        self.loads = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for path in self.paths:
                if not path.exists():
                    continue
                try:
                    load_checkpoint(path) if path.suffix == ".ckpt" else load_state(path)
                    self.loads += 1
                except CheckpointError as exc:
                    if "not found" not in str(exc):  # gone between exists() and open() is fine
                        self.errors.append(f"{path.name}: {exc}")
                except Exception as exc:  # noqa: BLE001 - any other failure is a half-written file
                    self.errors.append(f"{path.name}: {type(exc).__name__}: {exc}")
            time.sleep(0.01)


def test_repeated_kills_and_interrupts_then_resume_equal_an_uninterrupted_run(tmp_path):
    cfg = dict(tiny_config(), steps=STEPS, checkpoint_every=2, val_every=1000, log=str(tmp_path / "run.jsonl"))
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(cfg))
    out = tmp_path / "run.ckpt"
    state = Path(str(out) + ".state")
    rng = random.Random(12345)
    reader = _Reader(out)
    reader.start()
    exits: list[tuple[str, int]] = []
    on_disk: list[int] = []
    try:
        for k, sig in enumerate(KILLS):
            before = _step_on_disk(state)
            proc = _start(config, out, resume=k > 0)
            try:
                # Wait for two checkpoints and time the interval between them, then strike somewhere
                # in the next one (a step, a save or a log write): the moment scales with the machine,
                # so a fast one does not run to the end before the signal lands.
                deadline = time.time() + 120
                marks: dict[int, float] = {}
                while time.time() < deadline and proc.poll() is None and len(marks) < 2:
                    step = _step_on_disk(state)
                    if step > before and step not in marks:
                        marks[step] = time.perf_counter()
                    time.sleep(0.005)
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                t0, t1 = sorted(marks.values())
                time.sleep(rng.uniform(0.0, 1.0) * (t1 - t0))
                proc.send_signal(signal.SIGKILL if sig == "KILL" else signal.SIGINT)
                rc = proc.wait(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
            exits.append((sig, rc))
            on_disk.append(_step_on_disk(state))
        final = _start(config, out, resume=True)
        assert final.wait(timeout=300) == 0, final.stderr.read().decode()[-2000:]
    finally:
        reader.stop.set()
        reader.join(timeout=10)
    assert all(rc == (0 if sig == "INT" else -signal.SIGKILL) for sig, rc in exits), exits
    # every interruption landed mid-run: each left more steps on disk, and work for the final resume
    assert all(a < b for a, b in zip([0] + on_disk, on_disk)) and on_disk[-1] < STEPS, on_disk
    assert reader.loads > 0 and not reader.errors, reader.errors[:5]

    ref_cfg = dict(cfg, log=str(tmp_path / "ref.jsonl"))
    ref = train(TrainConfig.from_dict(ref_cfg), tmp_path / "ref.ckpt", progress=False)
    assert _losses(tmp_path / "run.jsonl") == _losses(tmp_path / "ref.jsonl")
    assert [s for s, _ in _losses(tmp_path / "run.jsonl")] == list(range(1, STEPS + 1))
    ta, ma = load_state(state)
    tb, mb = load_state(str(ref) + ".state")
    assert ma["step"] == mb["step"] == STEPS and ta.keys() == tb.keys()
    for key in ta:
        if key.startswith(("model/", "ema/", "optim/")):
            assert torch.equal(ta[key], tb[key]), key
    a, b = load_checkpoint(out), load_checkpoint(ref)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert not list(tmp_path.glob(".injcert-*.tmp")) and not list(tmp_path.glob("*.tmp"))
