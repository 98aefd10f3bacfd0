"""The training loop's structure (no function over ~80 lines) and its signal contract:
SIGTERM/SIGINT stop at the step boundary with a checkpoint, a second Ctrl-C raises
KeyboardInterrupt, and the caller's handlers are back afterwards."""

from __future__ import annotations

import ast
import json
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import injcert.tasks.train as train_mod
from injcert.io import load_checkpoint, load_state
from injcert.tasks.train import TrainConfig, train

from helpers import tiny_config

MAX_BODY_LINES = 80


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of ``fn``'s body without its docstring."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_no_function_in_train_is_over_80_lines():
    tree = ast.parse(Path(train_mod.__file__).read_text())
    long = [(fn.name, fn.lineno, _body_lines(fn)) for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(fn) > MAX_BODY_LINES]
    assert not long, f"functions over {MAX_BODY_LINES} lines (name, line, body lines): {long}"


def test_first_request_stops_a_second_ctrl_c_interrupts():
    run = SimpleNamespace(stop_requested=[])
    train_mod._Run._on_signal(run, signal.SIGTERM, None)
    train_mod._Run._on_signal(run, signal.SIGTERM, None)  # repeated SIGTERM: still a request
    assert run.stop_requested == [signal.SIGTERM, signal.SIGTERM]
    run = SimpleNamespace(stop_requested=[])
    train_mod._Run._on_signal(run, signal.SIGINT, None)
    assert run.stop_requested == [signal.SIGINT]
    with pytest.raises(KeyboardInterrupt):
        train_mod._Run._on_signal(run, signal.SIGINT, None)


def test_sigint_stops_at_a_step_with_a_checkpoint_and_restores_the_handlers(tmp_path):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are installed only in the main thread")
    log = tmp_path / "int.jsonl"
    config = TrainConfig.from_dict(dict(tiny_config(), steps=100000, checkpoint_every=100000, val_every=100000,
                                        log=str(log)))
    out = tmp_path / "int.ckpt"
    seen: list[int] = []

    def outer(signum, frame):  # the caller's handler: must be back after train()
        seen.append(signum)

    def interrupt() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    old_int = signal.signal(signal.SIGINT, outer)
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        sender = threading.Thread(target=interrupt, daemon=True)
        sender.start()
        train(config, out, progress=False)
        sender.join(timeout=10)
        assert signal.getsignal(signal.SIGINT) is outer and signal.getsignal(signal.SIGTERM) is old_term
    finally:
        signal.signal(signal.SIGINT, old_int)
    assert not seen  # train()'s handler took the Ctrl-C, not the caller's
    _, meta = load_state(str(out) + ".state")
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert meta["step"] == steps[-1] >= 2 and steps == list(range(1, steps[-1] + 1))
    assert load_checkpoint(out).checkpoint_metadata["step"] == meta["step"]
