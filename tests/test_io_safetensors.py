"""injcert.io's generic safetensors layer: write_safetensors (atomic) and the header-checked readers
every safetensors file goes through (checkpoints, training states, latents)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from injcert.errors import CheckpointError, OutputPathError
from injcert.io import read_safetensors, read_safetensors_header, write_safetensors


def _write(tmp_path, name="x.safetensors"):
    tensors = {"state": torch.arange(12, dtype=torch.int64).reshape(1, 3, 2, 2),
               "aux": torch.ones(1, 3, 2, 2, dtype=torch.float64)}
    path = write_safetensors(tmp_path / name, tensors, {"injcert_latent": json.dumps({"steps": 3})})
    return path, tensors


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    path, tensors = _write(tmp_path)
    declared, meta = read_safetensors_header(path, "latent")
    assert declared == {"state": (torch.int64, (1, 3, 2, 2)), "aux": (torch.float64, (1, 3, 2, 2))}
    assert json.loads(meta["injcert_latent"]) == {"steps": 3}
    back, meta2 = read_safetensors(path, "latent")
    assert meta2 == meta and set(back) == set(tensors)
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temporary file left


def test_validate_runs_before_any_tensor_is_read(tmp_path, monkeypatch):
    path, _ = _write(tmp_path)
    import injcert.io as io

    def no_read(p):
        raise AssertionError("tensors read before validation")

    monkeypatch.setattr(io, "_load_tensors", no_read)
    seen = {}

    def refuse(declared, meta):
        seen.update(declared)
        raise CheckpointError("refused by the caller")

    with pytest.raises(CheckpointError, match="refused by the caller"):
        read_safetensors(path, "latent", validate=refuse)
    assert set(seen) == {"state", "aux"}


def test_bad_files_are_one_checkpoint_error_naming_what(tmp_path):
    with pytest.raises(CheckpointError, match="latent not found"):
        read_safetensors_header(tmp_path / "missing", "latent")
    pk = tmp_path / "p.safetensors"
    pk.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(CheckpointError, match="not an injcert safetensors latent; refusing to unpickle"):
        read_safetensors(pk, "latent")
    path, _ = _write(tmp_path, "t.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-5])
    with pytest.raises(CheckpointError, match="truncated"):
        read_safetensors(tmp_path / "cut.safetensors", "latent")
    with pytest.raises(CheckpointError, match="is not a file"):
        read_safetensors_header(tmp_path, "latent")


def test_write_refuses_a_symlink(tmp_path):
    target = tmp_path / "real"
    target.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OutputPathError):
        write_safetensors(tmp_path / "link", {"a": torch.zeros(1)}, {})
    assert target.read_bytes() == b"keep"
