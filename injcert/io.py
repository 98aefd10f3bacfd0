"""Checkpoints: safetensors weights plus a JSON config, written atomically, never unpickled.

A checkpoint is **one** ``.safetensors`` file. Its header metadata holds

``format``
    ``"injcert-checkpoint"`` (model) or ``"injcert-state"`` (training state);
``version``
    the checkpoint format version (:data:`FORMAT_VERSION`);
``config``
    JSON: ``{"model": <registered name>, "model_config": {...}, "metadata": {...}}``.

Loading never executes code from the file. A pickle (``torch.save``) is refused with a
:class:`~injcert.errors.CheckpointError`: injcert does not even hand it to
``torch.load(weights_only=True)``, because a checkpoint that is not in the safe format is, by
definition, not one of ours. Writes go to a temporary file in the target folder, are fsync'ed, and
replace the target with :func:`os.replace`, so a reader (or a ``kill -9``) never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from .errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "register_model",
    "MODEL_REGISTRY",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_header",
    "save_state",
    "load_state",
    "atomic_write_bytes",
    "has_nonfinite",
]

FORMAT_VERSION = 1
_MODEL_FORMAT = "injcert-checkpoint"
_STATE_FORMAT = "injcert-state"
_MAX_HEADER = 100 * 1024 * 1024

MODEL_REGISTRY: dict[str, type] = {}

M = TypeVar("M", bound=type)


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: make a model class loadable by name from checkpoints.

    The class must provide a JSON-able ``config`` property and a ``from_config(cfg)``
    classmethod.
    """

    def deco(cls: M) -> M:
        if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} already registered to {MODEL_REGISTRY[name]!r}")
        cls._injcert_model_name = name  # type: ignore[attr-defined]
        MODEL_REGISTRY[name] = cls
        return cls

    return deco


def _ensure_builtin_models() -> None:
    """Import the modules that register injcert's own models (lazily, to keep io light)."""
    try:
        import injcert.model.unet  # noqa: F401
    except ImportError:  # pragma: no cover - model package not built yet
        pass


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on dirs
        pass
    return path


def _save_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], header: dict[str, str]) -> Path:
    from safetensors.torch import save

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(clean, metadata=header))


def _describe_pickle(head: bytes) -> str | None:
    if head[:2] == b"PK":
        return "a zip archive (a torch.save pickle)"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "a pickle"
    return None


def _read_safetensors(path: str | os.PathLike[str], expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {str(path)!r}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {str(path)!r}")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
    kind = _describe_pickle(head)
    if kind is not None:
        raise CheckpointError(
            f"{str(path)!r} is {kind}, not an injcert safetensors checkpoint; refusing to unpickle it"
        )
    if len(head) < 8:
        raise CheckpointError(f"{str(path)!r} is truncated ({size} bytes): not a safetensors checkpoint")
    n = int.from_bytes(head, "little")
    if n <= 0 or n > _MAX_HEADER or 8 + n > size:
        raise CheckpointError(f"{str(path)!r} is truncated or corrupt (header length {n}, file size {size})")
    with open(path, "rb") as fh:
        fh.seek(8)
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{str(path)!r} is corrupt: its header is not JSON") from None
    meta = header.get("__metadata__") or {}
    fmt = meta.get("format")
    if fmt != expected_format:
        raise CheckpointError(
            f"{str(path)!r} is not an injcert {expected_format.split('-')[1]} file (format={fmt!r})"
        )
    try:
        version = int(meta.get("version", "-1"))
    except ValueError:
        version = -1
    if version < 1 or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has format version {meta.get('version')!r}; this injcert reads 1..{FORMAT_VERSION}"
        )
    try:
        config = json.loads(meta.get("config", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{str(path)!r} is corrupt: its config is not JSON") from None
    # Check that every tensor's byte range lies inside the file before reading.
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise CheckpointError(f"{str(path)!r} is corrupt: bad entry for tensor {key!r}") from None
    if 8 + n + end > size:
        raise CheckpointError(f"{str(path)!r} is truncated: expected {8 + n + end} bytes, found {size}")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{str(path)!r} is corrupt: {str(exc).splitlines()[0]}") from None
    return tensors, config


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (weights and config) to ``path`` atomically.

    Arguments:
        model: an instance of a class registered with :func:`register_model`.
        path: target file (conventionally ``*.ckpt`` or ``*.safetensors``).
        metadata: JSON-able training metadata (step, validation loss, command, ...).

    Returns:
        The path written.

    Raises:
        CheckpointError: the model's class is not registered or its config is not JSON-able.
    """
    name = getattr(type(model), "_injcert_model_name", None)
    if name is None or MODEL_REGISTRY.get(name) is not type(model):
        raise CheckpointError(f"cannot save a {type(model).__name__}: its class is not registered with register_model")
    try:
        cfg = json.dumps(
            {"model": name, "model_config": model.config, "metadata": metadata or {}}, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"config or metadata of {type(model).__name__} is not JSON-able: {exc}") from None
    header = {"format": _MODEL_FORMAT, "version": str(FORMAT_VERSION), "config": cfg}
    return _save_tensors(path, dict(model.state_dict()), header)


def read_checkpoint_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a checkpoint without building the model; returns its config dict."""
    _, config = _read_safetensors(path, _MODEL_FORMAT)
    return config


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Load a model saved by :func:`save_checkpoint`; returns it in eval mode.

    The model gets a ``checkpoint_metadata`` attribute (the saved metadata) and
    ``checkpoint_path``. Non-finite weights are *not* an error here (a certificate reports
    them as a failed property); use :func:`has_nonfinite` to test.

    Raises:
        CheckpointError: missing, truncated, corrupt, pickled, unknown model or incompatible weights.
    """
    tensors, config = _read_safetensors(path, _MODEL_FORMAT)
    _ensure_builtin_models()
    name = config.get("model")
    if name not in MODEL_REGISTRY:
        raise CheckpointError(
            f"{str(path)!r} names an unknown model architecture {name!r}; known: {sorted(MODEL_REGISTRY)}"
        )
    cls = MODEL_REGISTRY[name]
    try:
        model = cls.from_config(config.get("model_config", {}))
    except Exception as exc:
        raise CheckpointError(f"{str(path)!r} has an unusable config for {name!r}: {str(exc).splitlines()[0]}") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{str(path)!r} does not match the {name!r} architecture: {first[1].strip() if len(first) > 1 else first[0]}"
        ) from None
    model.checkpoint_metadata = config.get("metadata", {})  # type: ignore[attr-defined]
    model.checkpoint_path = str(path)  # type: ignore[attr-defined]
    return model.to(device).eval()


def has_nonfinite(model: nn.Module) -> list[str]:
    """Names of the parameters/buffers of ``model`` that contain NaN or infinity."""
    bad = []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def save_state(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Atomically save a flat dict of tensors with JSON-able ``meta`` (e.g. training state)."""
    try:
        cfg = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"state metadata is not JSON-able: {exc}") from None
    header = {"format": _STATE_FORMAT, "version": str(FORMAT_VERSION), "config": cfg}
    return _save_tensors(path, tensors, header)


def load_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load what :func:`save_state` wrote. Raises :class:`CheckpointError` on any bad file."""
    return _read_safetensors(path, _STATE_FORMAT)
