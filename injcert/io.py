"""Checkpoints, training states and every other file injcert writes; never unpickles.

The one safe file layer: safetensors reading without unpickling, checkpoints and states share the
same checks; every file is written through :mod:`injcert._atomic`, and no other module opens a file
for writing.

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
definition, not one of ours. Before any tensor is read, the header is checked (JSON object, tensor
entries inside the file, :mod:`injcert.limits`), and the model the config describes is built under
an allocation budget derived from the stored tensors and compared with them name by name, shape by
shape and **dtype by dtype** (a checkpoint must hold the dtype its model declares: nothing is cast).

Every safetensors file (checkpoint, training state, latent) is written by :func:`write_safetensors`
and read through :func:`read_safetensors_header` / :func:`read_safetensors`, which make these header
checks; checkpoints and states add their ``format``, ``version`` and ``config``.

The output layer (atomic writes, output-path checks, run locks) is :mod:`injcert._atomic`, the model
registry and the checks of a model's weights :mod:`injcert.registry`, the device checks
:mod:`injcert._device`; their names are re-exported here.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from . import limits
from ._atomic import (atomic_directory, atomic_write, atomic_write_bytes,  # noqa: F401
                      check_output_path, clean_orphan_temps, open_append, output_lock, probe_writable, same_file,
                      save_figure)
from ._device import check_device, strict_float32
from .registry import (MODEL_REGISTRY, _ensure_builtin_models, check_finite, check_finite_model,  # noqa: F401
                       has_nonfinite, register_model, weights_fingerprint)

__all__ = [
    "atomic_directory",
    "FORMAT_VERSION",
    "register_model",
    "MODEL_REGISTRY",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_header",
    "save_state",
    "load_state",
    "write_safetensors",
    "read_safetensors",
    "read_safetensors_header",
    "atomic_write",
    "atomic_write_bytes",
    "save_figure",
    "check_output_path",
    "same_file",
    "clean_orphan_temps",
    "probe_writable",
    "output_lock",
    "read_json_file",
    "check_device",
    "strict_float32",
    "weights_fingerprint",
    "check_finite",
    "check_finite_model",
    "has_nonfinite",
    "notice",
    "is_state_file",
    "open_append",
]

FORMAT_VERSION = 1
_MODEL_FORMAT = "injcert-checkpoint"
_STATE_FORMAT = "injcert-state"
_MAX_HEADER = 100 * 1024 * 1024

PathLike = Union[str, "os.PathLike[str]"]


def notice(message: str) -> None:
    """One line on stderr (``injcert: note: ...``): a conversion the user should know about."""
    print(f"injcert: note: {message}", file=sys.stderr)


# ============================================================================ small input helpers


def _json_loads(text: Union[str, bytes], what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{what} is corrupt: its JSON is nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise CheckpointError(f"{what} is corrupt: not JSON ({str(exc).splitlines()[0]})") from None


def regular_input_file(path: PathLike, error: type, missing: str, unreadable: str, not_regular: str) -> os.stat_result:
    """``os.stat`` of an input that must be an existing regular file, else one ``error`` line.

    The messages are templates with ``{label}`` (the path's repr) and, for ``unreadable``,
    ``{reason}``; one place decides what "cannot read" means for every input the project opens.
    """
    label = repr(os.fspath(path))
    try:
        st = os.stat(os.fspath(path))
    except FileNotFoundError:
        raise error(missing.format(label=label)) from None
    except OSError as exc:
        raise error(unreadable.format(label=label, reason=exc.strerror or exc)) from None
    if not stat.S_ISREG(st.st_mode):
        raise error(not_regular.format(label=label))
    return st


def read_json_file(path: PathLike, what: str = "config") -> dict[str, Any]:
    """Read a JSON object from ``path``; anything else raises one :class:`ConfigError` line."""
    text_path = os.fspath(path)
    st = regular_input_file(text_path, ConfigError, what + " file not found: {label}",
                            "cannot read " + what + " {label}: {reason}", what + " {label} is not a regular file")
    if st.st_size > 16 * 1024 * 1024:
        raise ConfigError(f"{what} {text_path!r} is {st.st_size} bytes; a config is at most 16 MiB")
    try:
        with open(text_path, "rb") as fh:
            raw = fh.read()
        obj = json.loads(raw)
    except RecursionError:
        raise ConfigError(f"{what} {text_path!r} is nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {text_path!r}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{what} {text_path!r} is not valid JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{what} {text_path!r} must hold a JSON object, got a {type(obj).__name__}")
    return obj


# ============================================================================ checkpoints


def write_safetensors(path: PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *,
                      inputs: Iterable[Any] = ()) -> Path:
    """Write ``tensors`` with the header ``metadata`` (str → str) as one safetensors file, through
    :func:`atomic_write` (path checks, temp file, fsync, rename, folder fsync). The one writer of
    every safetensors file injcert makes: checkpoints, training states, latents.

    Returns:
        The path written.

    Raises:
        OutputPathError: the path is refused (symlink, device node, one of ``inputs``, ...).
        OSError: the write failed (e.g. ``ENOSPC``).
    """
    from safetensors.torch import save

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, save(clean, metadata=metadata), inputs=inputs)



def _describe_pickle(head: bytes, size: int | None = None) -> str | None:
    """What pickle container ``head`` (the file's first 9 bytes) starts, or ``None``.

    A safetensors file starts with its header's length (u64, little endian) and the header's ``{``;
    that length's low bytes can be ``0x80 0x05`` (a 1408-byte header) — the start of a protocol-5
    pickle — so a head that is a plausible safetensors start is never called a pickle."""
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 0 < n and (size is None or 8 + n <= size):
            return None
    if head[:2] == b"PK":
        return "a zip archive (a torch.save pickle)"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "a pickle"
    return None


#: safetensors dtype codes → (torch dtype, bytes per element)
_ST_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}


TensorSpecs = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def read_safetensors_header(path: PathLike, what: str = "file") -> tuple[TensorSpecs, dict[str, Any]]:
    """Validate a safetensors file's header without reading a tensor.

    Checked: an existing regular file; not a pickle (never unpickled); a header length inside the
    file and at most 100 MiB; a JSON object; a ``__metadata__`` object; every tensor entry well formed
    (known dtype, non-negative shape, byte range that its shape fills, inside the file); at most
    ``limits.params`` stored numbers. ``what`` names the file in the messages (``"checkpoint"``,
    ``"latent"``, ...).

    Returns:
        ``({name: (dtype, shape)}, metadata)``: the declared tensors and the header's metadata dict.

    Raises:
        CheckpointError: missing, unreadable, not a regular file, a pickle, truncated or corrupt.
        LimitError: more stored numbers than ``limits.params``.
    """

    p = Path(path)
    label = repr(os.fspath(path))
    st = regular_input_file(p, CheckpointError, what + " not found: {label}", "cannot read {label}: {reason}",
                            what + " is not a file: {label}")
    size = st.st_size
    n, raw = _read_raw_header(p, label, what, size)
    header = _json_loads(raw, label)
    if not isinstance(header, dict):
        raise CheckpointError(f"{label} is corrupt: its header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{label} is corrupt: its metadata is not an object")
    declared, end, total = _declared_tensors(header, label)
    if 8 + n + end > size:
        raise CheckpointError(f"{label} is truncated: expected {8 + n + end} bytes, found {size}")
    limits.check("params", total, f"numbers stored in {label}")
    return declared, meta


def _read_raw_header(p: Path, label: str, what: str, size: int) -> tuple[int, bytes]:
    """``(n, the n header bytes)`` of a safetensors file of ``size`` bytes; a pickle or a bad length refused."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(9)
            kind = _describe_pickle(head, size)
            if kind is not None:
                raise CheckpointError(f"{label} is {kind}, not an injcert safetensors {what}; refusing to unpickle it")
            head = head[:8]
            fh.seek(len(head))
            if len(head) < 8:
                raise CheckpointError(f"{label} is truncated ({size} bytes): not a safetensors {what}")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{label} is truncated or corrupt (header length {n}, file size {size})")
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"cannot read {label}: {exc.strerror or exc}") from None
    return n, raw


def _declared_tensors(header: dict, label: str) -> tuple[TensorSpecs, int, int]:
    """``(declared tensors, end of their byte ranges, stored numbers)``: every tensor's entry well formed
    (known dtype, non-negative shape, a byte range its shape fills), before reading."""
    declared: TensorSpecs = {}
    end = 0
    total = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, item = _ST_DTYPES[info["dtype"]]
            shape = tuple(info["shape"])
            a, b = (int(v) for v in info["data_offsets"])
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape) or not 0 <= a <= b:
                raise CheckpointError(f"{label} is corrupt: bad entry for tensor {key!r}")
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{label} is corrupt: bad entry for tensor {key!r}") from None
        numel = math.prod(shape)
        if numel * item != b - a:
            raise CheckpointError(f"{label} is corrupt: tensor {key!r} of shape {list(shape)} does not fill its bytes")
        declared[key] = (dtype, shape)
        end = max(end, b)
        total += numel
    return declared, end, total


def read_safetensors(path: PathLike, what: str = "file", *,
                     validate: Optional[Callable[[TensorSpecs, dict[str, Any]], None]] = None,
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file whose header :func:`read_safetensors_header` accepts (never unpickles).

    ``validate(declared, metadata)``, if given, runs after the header check and before any tensor
    is read (check the metadata, names, shapes, limits there; raise to refuse the file).

    Returns:
        ``(tensors, metadata)`` (tensors on the CPU).

    Raises:
        CheckpointError: see :func:`read_safetensors_header`; or the tensors cannot be read.
        LimitError: more stored numbers than ``limits.params``.
    """
    declared, meta = read_safetensors_header(path, what)
    if validate is not None:
        validate(declared, meta)
    return _load_tensors(path), meta


def _read_header(path: PathLike, expected_format: str) -> tuple[TensorSpecs, dict[str, Any]]:
    """Validate a checkpoint's or state's header without reading a tensor (see
    :func:`read_safetensors_header`), then its ``format``, ``version`` and JSON ``config``.

    Returns ``({name: (dtype, shape)}, config)``. Raises :class:`CheckpointError` on anything wrong
    and :class:`~injcert.errors.LimitError` when it stores more numbers than ``limits.params``.
    """
    declared, meta = read_safetensors_header(path, "checkpoint")
    label = repr(os.fspath(path))
    fmt = meta.get("format")
    if fmt != expected_format:
        raise CheckpointError(f"{label} is not an injcert {expected_format.split('-')[1]} file (format={fmt!r})")
    try:
        version = int(meta.get("version", "-1"))
    except (TypeError, ValueError):
        version = -1
    if version < 1 or version > FORMAT_VERSION:
        raise CheckpointError(f"{label} has format version {meta.get('version')!r}; this injcert reads 1..{FORMAT_VERSION}")
    cfg_text = meta.get("config", "{}")
    if not isinstance(cfg_text, str):
        raise CheckpointError(f"{label} is corrupt: its config is not a string")
    config = _json_loads(cfg_text, f"{label} config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{label} has a config that is a JSON {type(config).__name__}, not an object")
    return declared, config


def _load_tensors(path: PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{os.fspath(path)!r} is corrupt: {str(exc).splitlines()[0]}") from None


def _read_safetensors(path: PathLike, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    _, config = _read_header(path, expected_format)
    return _load_tensors(path), config


class _BuildBudget(torch.overrides.TorchFunctionMode):
    """Counts the bytes the tensor factories (``torch.empty``, ``zeros``, ``randn``, ...) are asked
    for while a model is built, and stops the build *before* the call that would pass the budget."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        from torch.utils._device import _device_constructors

        self.budget = int(budget)
        self.used = 0
        self.exceeded = False
        self.factories = _device_constructors()

    @staticmethod
    def _numel(func: Any, args: tuple, kwargs: dict) -> Optional[int]:
        size = kwargs.get("size")
        if size is not None:
            return math.prod(int(v) for v in size) if isinstance(size, (tuple, list, torch.Size)) else int(size)
        name = getattr(func, "__name__", "")
        if name in ("tensor", "as_tensor", "asarray", "scalar_tensor", "nested_tensor") or name.startswith("sparse"):
            return None
        if name in ("arange", "range"):
            nums = [float(a) for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
            if len(nums) == 1:
                return max(0, math.ceil(nums[0]))
            if len(nums) >= 2:
                step = nums[2] if len(nums) > 2 and nums[2] != 0 else 1.0
                return max(0, math.ceil((nums[1] - nums[0]) / step))
            return None
        if name in ("linspace", "logspace"):
            steps = args[2] if len(args) > 2 else kwargs.get("steps")
            return int(steps) if isinstance(steps, int) else None
        if name == "eye":
            ints = [a for a in args[:2] if isinstance(a, int) and not isinstance(a, bool)]
            return ints[0] * (ints[1] if len(ints) > 1 else ints[0]) if ints else None
        for a in args:
            if isinstance(a, (tuple, list, torch.Size)) and all(isinstance(v, int) for v in a):
                return math.prod(a)
        ints = []
        for a in args:
            if isinstance(a, int) and not isinstance(a, bool):
                ints.append(a)
            else:
                break
        return math.prod(ints) if ints and name not in ("randint", "full", "randperm") else (
            ints[0] if name == "randperm" and ints else None)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        if func in self.factories:
            try:
                n = self._numel(func, args, kwargs)
            except (TypeError, ValueError, OverflowError):
                n = None
            if n is not None:
                dtype = kwargs.get("dtype") or torch.get_default_dtype()
                item = int(getattr(dtype, "itemsize", 8))
                self.used += n * item
                if self.used > self.budget:
                    self.exceeded = True
                    raise MemoryError(f"building the model would allocate more than {self.budget} bytes")
        return func(*args, **kwargs)


def save_checkpoint(model: nn.Module, path: PathLike, *, metadata: dict[str, Any] | None = None,
                    inputs: Iterable[Any] = ()) -> Path:
    """Save ``model`` (weights and config) to ``path`` atomically (:func:`atomic_write`).

    Arguments:
        model: an instance of a class registered with :func:`register_model`.
        path: target file (conventionally ``*.ckpt`` or ``*.safetensors``).
        metadata: JSON-able training metadata (step, validation loss, command, ...).
        inputs: paths the target must not be (the command's inputs).

    Returns:
        The path written.

    Raises:
        CheckpointError: the model's class is not registered or its config is not JSON-able.
        OutputPathError: the path is refused (symlink, device node, an input, ...).
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
    return write_safetensors(path, dict(model.state_dict()), header, inputs=inputs)


def read_checkpoint_header(path: PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint's header without building the model; returns its config dict."""
    _, config = _read_header(path, _MODEL_FORMAT)
    return config


_DTYPE_NAMES = {v[0]: str(v[0]).replace("torch.", "") for v in _ST_DTYPES.values()}


def load_checkpoint(path: PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model saved by :func:`save_checkpoint`; returns it in eval mode.

    Order: the header is validated (no tensor read); the model the config names is built under an
    allocation budget of ``8 ×`` the stored tensor bytes ``+ 64 MiB`` (a small file whose config
    declares a huge model is refused before the allocation); its tensors are compared with the
    stored ones (names, shapes, dtypes: nothing is cast); then the weights are read.

    The model gets a ``checkpoint_metadata`` attribute (the saved metadata) and
    ``checkpoint_path``. Non-finite weights are *not* an error here (a certificate reports
    them as a failed property); use :func:`has_nonfinite` / :func:`check_finite` to test.

    Raises:
        CheckpointError: missing, truncated, corrupt, pickled, unknown model, a config that does not
            describe the stored tensors, or a tensor of another dtype than the model declares.
        LimitError: more stored numbers than ``limits.params``.
    """
    label = repr(os.fspath(path))
    declared, config = _read_header(path, _MODEL_FORMAT)
    name, model_cfg, metadata = _checkpoint_config(config, label)
    model = _build_within_budget(MODEL_REGISTRY[name], model_cfg, declared, label, name)
    _check_declared_tensors(model, declared, label, name)
    tensors = _load_tensors(path)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{label} does not match the {name!r} architecture: {first[1].strip() if len(first) > 1 else first[0]}"
        ) from None
    model.checkpoint_metadata = metadata  # type: ignore[attr-defined]
    model.checkpoint_path = os.fspath(path)  # type: ignore[attr-defined]
    if torch.device(device).type == "cuda":
        strict_float32()
    return model.to(device).eval()


def _checkpoint_config(config: dict, label: str) -> tuple[str, dict, dict]:
    """``(model name, model_config, metadata)`` of a checkpoint's header config, each checked."""
    _ensure_builtin_models()
    name = config.get("model")
    if not isinstance(name, str) or name not in MODEL_REGISTRY:
        raise CheckpointError(f"{label} names an unknown model architecture {name!r}; known: {sorted(MODEL_REGISTRY)}")
    model_cfg = config.get("model_config", {})
    metadata = config.get("metadata", {})
    if not isinstance(model_cfg, dict):
        raise CheckpointError(f"{label} has a model_config that is a {type(model_cfg).__name__}, not an object")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{label} has metadata that is a {type(metadata).__name__}, not an object")
    return name, model_cfg, metadata


def _build_within_budget(cls: type, model_cfg: dict, declared: dict, label: str, name: str) -> nn.Module:
    """``cls.from_config(model_cfg)`` under an allocation budget of 8 x the stored tensor bytes + 64 MiB."""
    stored = sum(math.prod(shape) * _ST_ITEM[dt] for dt, shape in declared.values())
    budget = _BuildBudget(8 * stored + 64 * 2**20)
    try:
        with budget:
            return cls.from_config(model_cfg)
    except Exception as exc:  # noqa: BLE001 - any failure to build from the file's config is a bad file
        if budget.exceeded:
            raise CheckpointError(
                f"{label} has a config that declares a model far larger than the {stored} bytes of tensors it "
                f"stores (more than {budget.budget} bytes to build); refusing to build it") from None
        raise CheckpointError(f"{label} has an unusable config for {name!r}: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None


def _check_declared_tensors(model: nn.Module, declared: dict, label: str, name: str) -> None:
    """The stored tensors are the model's: the same names, shapes and dtypes (nothing is cast)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(declared))
    unexpected = sorted(set(declared) - set(expected))
    if missing or unexpected:
        what = (f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}" if missing else
                f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        raise CheckpointError(f"{label} does not match the {name!r} architecture: {what} tensor(s)")
    for key, t in expected.items():
        dt, shape = declared[key]
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{label} does not match the {name!r} architecture: tensor {key!r} has shape "
                                  f"{list(shape)}, the config declares {list(t.shape)}")
        if t.dtype != dt:
            raise CheckpointError(f"{label}: tensor {key!r} is stored as {_DTYPE_NAMES.get(dt, dt)} but the model "
                                  f"declares {str(t.dtype).replace('torch.', '')}; refusing to cast it")


_ST_ITEM = {v[0]: v[1] for v in _ST_DTYPES.values()}


def save_state(path: PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *,
               inputs: Iterable[Any] = ()) -> Path:
    """Atomically save a flat dict of tensors with JSON-able ``meta`` (e.g. training state)."""
    try:
        cfg = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"state metadata is not JSON-able: {exc}") from None
    header = {"format": _STATE_FORMAT, "version": str(FORMAT_VERSION), "config": cfg}
    return write_safetensors(path, tensors, header, inputs=inputs)


def load_state(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load what :func:`save_state` wrote. Raises :class:`CheckpointError` on any bad file."""
    return _read_safetensors(path, _STATE_FORMAT)


def is_state_file(path: PathLike) -> bool:
    """Whether ``path`` is an injcert training state (header check only, never raises)."""
    try:
        _read_header(path, _STATE_FORMAT)
    except Exception:  # noqa: BLE001
        return False
    return True
