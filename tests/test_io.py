"""Checkpoint mechanism: safetensors round trip, atomic writes, refusal of pickles and bad files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

from injcert.errors import CheckpointError
from injcert.io import (
    has_nonfinite,
    load_checkpoint,
    load_state,
    read_checkpoint_header,
    register_model,
    save_checkpoint,
    save_state,
)


@register_model("_test_tiny")
class Tiny(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.width = width
        self.lin = nn.Linear(width, width)
        self.register_buffer("scale", torch.ones(width))

    @property
    def config(self) -> dict:
        return {"width": self.width}

    @classmethod
    def from_config(cls, cfg: dict) -> "Tiny":
        return cls(**cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale


@given(width=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_round_trip_is_exact(tmp_path_factory, width: int, seed: int) -> None:
    torch.manual_seed(seed)
    model = Tiny(width)
    path = tmp_path_factory.mktemp("ck") / "m.ckpt"
    save_checkpoint(model, path, metadata={"step": 7})
    loaded = load_checkpoint(path)
    assert isinstance(loaded, Tiny) and not loaded.training
    assert loaded.checkpoint_metadata == {"step": 7}
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert read_checkpoint_header(path)["model_config"] == {"width": width}


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "m.ckpt"
    save_checkpoint(Tiny(), path)
    save_checkpoint(Tiny(), path)  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["m.ckpt"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.ckpt")


@pytest.mark.parametrize("cut", [0, 4, 9, 40, -10])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "m.ckpt"
    save_checkpoint(Tiny(), path)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "m.ckpt"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this object would create a file: the test asserts it never appears."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_hostile_pickle_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {"state": _Payload(str(marker))}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_unknown_architecture_and_wrong_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "m.ckpt"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "injcert-checkpoint", "version": "1",
                                                         "config": '{"model": "no_such_net", "model_config": {}}'})
    with pytest.raises(CheckpointError, match="unknown model architecture"):
        load_checkpoint(path)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "injcert-checkpoint", "version": "1",
                                                         "config": '{"model": "_test_tiny", "model_config": {"width": 2}}'})
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "injcert-checkpoint", "version": "99", "config": "{}"})
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(path)
    save_file({"w": torch.zeros(2)}, str(path))  # a plain safetensors file, not ours
    with pytest.raises(CheckpointError, match="not an injcert"):
        load_checkpoint(path)


def test_nonfinite_weights_are_reported_not_hidden(tmp_path: Path) -> None:
    model = Tiny()
    with torch.no_grad():
        model.lin.weight[0, 0] = float("nan")
    path = tmp_path / "m.ckpt"
    save_checkpoint(model, path)
    assert has_nonfinite(load_checkpoint(path)) == ["lin.weight"]


def test_state_round_trip(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(5), "b": torch.randn(2, 3, dtype=torch.float64)}
    save_state(tmp_path / "s", tensors, {"step": 3, "rng": [1, 2]})
    got, meta = load_state(tmp_path / "s")
    assert meta == {"step": 3, "rng": [1, 2]} and all(torch.equal(got[k], v) for k, v in tensors.items())
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "s")  # a state file is not a model checkpoint


def test_a_safetensors_header_length_is_not_taken_for_a_pickle():
    """A 1408-byte safetensors header starts with bytes 0x80 0x05 — a protocol-5 pickle's opcodes.
    A latent whose header grew to such a length was refused as a pickle."""
    from injcert.io import _describe_pickle

    for n in (128, 0x0180, 0x0580, 0x0280):
        head = n.to_bytes(8, "little") + b"{"
        assert head[:1] == b"\x80"
        assert _describe_pickle(head, 8 + n + 100) is None
        assert _describe_pickle(head, 8 + n - 1) == "a pickle"  # the claimed header does not fit: not safetensors
    import pickle

    for proto in (2, 3, 4, 5):
        assert _describe_pickle(pickle.dumps({"a": 1}, protocol=proto)[:9], 10**6) == "a pickle"
    assert _describe_pickle(b"PK\x03\x04" + b"\0" * 5, 10**6) is not None


def test_strict_float32_turns_tf32_off():
    """The certificate's float32 rounding charge does not cover TF32: strict_float32 turns it off
    for matmuls and cuDNN convolutions (the flags exist without CUDA too)."""
    from injcert.io import strict_float32

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        strict_float32()
        assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.cuda
def test_a_cuda_device_runs_without_tf32():
    from injcert.io import check_device

    torch.backends.cudnn.allow_tf32 = True
    check_device("cuda")
    assert torch.backends.cudnn.allow_tf32 is False
