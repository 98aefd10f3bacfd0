"""Checkpoints, training states and every other file injcert writes; never unpickles.

Long because it is the one safe file layer: atomic writes, output-path checks, safetensors reading
without unpickling, checkpoints, states and run locks all share the same checks; no other module
opens a file for writing.

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

The output layer
----------------
Every file injcert writes (checkpoints, states, latents, PNG, JSON, Markdown, logs, figures) goes
through :func:`atomic_write`:

* the path is checked first (:func:`check_output_path`): a symlink is refused (never followed), so
  is anything that exists and is not a regular file (device node, fifo, directory, socket), an
  output that is the same file as one of the command's inputs (``os.path.samefile``), and a parent
  that is not a writable directory;
* the data go to a temporary file ``.injcert-<pid>-<random>.tmp`` in the target folder (a short
  name: it fits the 255-byte name limit whatever the target's name), opened with ``O_EXCL |
  O_NOFOLLOW``, are fsync'ed and renamed over the target (``os.replace``), and the folder is
  fsync'ed: a reader, a concurrent writer or a ``kill -9`` sees the old file or the new one, never
  half a file;
* temporary files of that pattern left by dead processes (``kill -9``) are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io as _io
import json
import math
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Optional, TypeVar, Union

import torch
from torch import nn

from .errors import ArgumentError, CheckpointError, ConfigError, InputError, OutputPathError, TrainingError
from . import limits

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
_TMP_PREFIX = ".injcert-"
_TMP_SUFFIX = ".tmp"

MODEL_REGISTRY: dict[str, type] = {}

M = TypeVar("M", bound=type)
PathLike = Union[str, "os.PathLike[str]"]


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: make a model class loadable by name from checkpoints.

    The class must provide a JSON-able ``config`` property and a ``from_config(cfg)``
    classmethod.
    """

    def deco(cls: M) -> M:
        if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not cls:
            raise ArgumentError(f"model name {name!r} already registered to {MODEL_REGISTRY[name]!r}")
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


def notice(message: str) -> None:
    """One line on stderr (``injcert: note: ...``): a conversion the user should know about."""
    print(f"injcert: note: {message}", file=sys.stderr)


# ============================================================================ the output layer


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a fifo"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def same_file(a: PathLike, b: PathLike) -> bool:
    """``os.path.samefile`` that is ``False`` (not an error) when either path does not exist."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def check_output_path(path: PathLike, *, inputs: Iterable[Any] = (), directory: bool = False,
                      what: str = "output") -> Path:
    """Check that ``path`` may be written, without writing anything; returns it as a ``Path``.

    Refused (:class:`~injcert.errors.OutputPathError`, one line): an empty name; a symlink (for
    files; never followed); anything that exists and is not a regular file (``directory=True``:
    not a directory); the same file as one of ``inputs`` (paths; other objects and missing files
    are ignored); a name longer than the file system allows; a parent that is not a directory, or
    the nearest existing folder above it not writable.
    """
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not text:
        raise OutputPathError(f"{what} path is empty")
    p = Path(text)
    if not directory and (text.endswith(os.sep) or p.name in ("", ".", "..")):
        raise OutputPathError(f"{what} {text!r} names a directory, not a file")
    try:
        st: Optional[os.stat_result] = os.lstat(p)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise OutputPathError(f"{what} {text!r}: a parent of it is not a directory") from None
    except OSError as exc:
        raise OutputPathError(f"{what} {text!r}: {exc.strerror or exc}") from None
    if st is not None:
        if directory:
            if stat.S_ISLNK(st.st_mode):
                try:
                    st = os.stat(p)
                except OSError:
                    raise OutputPathError(f"{what} folder {text!r} is a dangling symbolic link") from None
            if not stat.S_ISDIR(st.st_mode):
                raise OutputPathError(f"{what} folder {text!r} exists and is {_kind(st.st_mode)}")
        elif stat.S_ISLNK(st.st_mode):
            raise OutputPathError(f"{what} {text!r} is a symbolic link; refusing to write through it")
        elif not stat.S_ISREG(st.st_mode):
            raise OutputPathError(f"{what} {text!r} exists and is {_kind(st.st_mode)}; refusing to replace it")
        for inp in inputs:
            if isinstance(inp, (str, os.PathLike)) and os.fspath(inp) and same_file(p, inp):
                raise OutputPathError(f"{what} {text!r} is the same file as the input {os.fspath(inp)!r}; "
                                      "refusing to overwrite an input")
    # the nearest existing folder above must be a writable directory
    folder = p if directory else p.parent
    folder = Path(os.path.abspath(folder))
    probe = folder
    while True:
        try:
            pst = os.stat(probe)
        except FileNotFoundError:
            if probe.parent == probe:
                raise OutputPathError(f"{what} {text!r}: no existing folder above it") from None
            probe = probe.parent
            continue
        except NotADirectoryError:
            raise OutputPathError(f"{what} {text!r}: a parent of it is not a directory") from None
        except OSError as exc:
            raise OutputPathError(f"{what} {text!r}: {exc.strerror or exc}") from None
        break
    if not stat.S_ISDIR(pst.st_mode):
        raise OutputPathError(f"{what} {text!r}: its parent {str(probe)!r} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {text!r}: the folder {str(probe)!r} is not writable")
    if not directory:
        limit = _name_max(probe)
        n = len(os.fsencode(p.name))
        if n > limit:
            raise OutputPathError(f"{what} name is {n} bytes long; this file system allows {limit}")
    return p


def _tmp_name() -> str:
    return f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}{_TMP_SUFFIX}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_orphan_temps(folder: PathLike) -> list[Path]:
    """Remove ``.injcert-<pid>-<hex>.tmp`` files of ``folder`` whose process is gone (``kill -9``).

    Only regular files of exactly this pattern are touched; files of live processes (a concurrent
    writer) are left alone. Returns the paths removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        name = e.name
        if not (name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX)):
            continue
        pid_s, _, rand = name[len(_TMP_PREFIX):-len(_TMP_SUFFIX)].partition("-")
        if not (pid_s.isdigit() and rand and all(c in "0123456789abcdef" for c in rand)):
            continue
        try:
            if not e.is_file(follow_symlinks=False) or _pid_alive(int(pid_s)):
                continue
            os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            pass
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on dirs
        pass
    finally:
        os.close(dfd)


def atomic_write(path: PathLike, data: Union[bytes, bytearray, memoryview, Callable[[BinaryIO], None]], *,
                 inputs: Iterable[Any] = ()) -> Path:
    """Write ``data`` (bytes, or a function writing into a binary file) to ``path`` atomically.

    The path is checked by :func:`check_output_path` (with ``inputs``) before anything is written;
    the data go to a short-named temporary file in the same folder (``O_EXCL | O_NOFOLLOW``), are
    fsync'ed and renamed over ``path``; the target is checked again just before the rename. Any
    failure (full disk, refused path, ``KeyboardInterrupt``) removes the temporary file and leaves
    the target as it was.

    Raises:
        OutputPathError: the path is refused.
        OSError: the write failed (e.g. ``ENOSPC``).
    """
    inputs = tuple(inputs)
    p = check_output_path(path, inputs=inputs)
    p.parent.mkdir(parents=True, exist_ok=True)
    clean_orphan_temps(p.parent)
    tmp = p.parent / _tmp_name()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        check_output_path(p, inputs=inputs)  # something may have appeared meanwhile
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(p.parent)
    return p


@contextlib.contextmanager
def atomic_directory(target: PathLike, *, what: str = "output folder") -> Iterator[Path]:
    """Build the files of a folder in a temporary sibling; they reach ``target`` only if the block
    ends without an exception.

    Yields the temporary folder (``.injcert-<pid>-<hex>.tmpdir`` next to ``target``, so relative
    links inside it stay valid). On success every file in it is renamed into ``target`` (created if
    missing; each rename atomic; files of ``target`` that the block did not write are left alone) and
    the temporary folder removed; on any exception (Ctrl-C included) it is removed and ``target`` is
    as it was. Temporary folders of dead processes next to ``target`` are removed first.

    Raises:
        OutputPathError: as :func:`check_output_path` with ``directory=True``, or ``target`` is a
            symbolic link.
    """
    import shutil

    target = check_output_path(target, directory=True, what=what)
    if target.is_symlink():
        raise OutputPathError(f"{what} {os.fspath(target)!r} is a symbolic link; refusing to write through it")
    parent = Path(os.path.abspath(target)).parent
    parent.mkdir(parents=True, exist_ok=True)
    for e in list(os.scandir(parent)):
        pid_s = e.name[len(_TMP_PREFIX):].partition("-")[0]
        if (e.name.startswith(_TMP_PREFIX) and e.name.endswith(".tmpdir") and pid_s.isdigit()
                and not _pid_alive(int(pid_s)) and e.is_dir(follow_symlinks=False)):
            shutil.rmtree(e.path, ignore_errors=True)
    build = parent / (_tmp_name()[: -len(_TMP_SUFFIX)] + ".tmpdir")
    os.mkdir(build)
    try:
        yield build
        target.mkdir(exist_ok=True)
        for root, dirs, files in os.walk(build):
            rel = Path(root).relative_to(build)
            for d in dirs:
                (target / rel / d).mkdir(exist_ok=True)
            for f in files:
                check_output_path(target / rel / f, what=what)  # never replace a link or a non-file
                os.replace(Path(root) / f, target / rel / f)
        _fsync_dir(target)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def atomic_write_bytes(path: PathLike, data: bytes, *, inputs: Iterable[Any] = ()) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, bytes(data), inputs=inputs)


def save_figure(fig: Any, path: PathLike, *, inputs: Iterable[Any] = (), **savefig: Any) -> Path:
    """Render a matplotlib figure in memory and write it with :func:`atomic_write`.

    The format comes from the suffix (``savefig(format=...)`` overrides); a name without a suffix
    is refused before anything is rendered.
    """
    p = check_output_path(path, inputs=inputs)
    fmt = savefig.pop("format", None) or p.suffix.lower().lstrip(".")
    if not fmt:
        raise OutputPathError(f"figure {os.fspath(path)!r} has no suffix; use a name ending in .png")
    buf = _io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, **savefig)
    except ValueError as exc:  # matplotlib: unknown format
        raise OutputPathError(f"cannot write figure {os.fspath(path)!r}: {str(exc).splitlines()[0]}") from None
    return atomic_write(p, buf.getvalue(), inputs=inputs)


def probe_writable(folder: PathLike) -> None:
    """Create and remove a temporary file in ``folder`` (made if missing): fail now, not later."""
    f = Path(folder)
    check_output_path(f, directory=True)
    f.mkdir(parents=True, exist_ok=True)
    tmp = f / _tmp_name()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, b"x")
        os.fsync(fd)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def output_lock(target: PathLike, what: str = "run") -> Iterator[Path]:
    """Hold an exclusive lock on ``target + ".lock"`` while the block runs.

    A second holder (another process) is refused at once with a one-line
    :class:`~injcert.errors.TrainingError`; the lock dies with its process (``flock``), so a
    ``kill -9`` never leaves a stale lock. The lock file is removed on exit.
    """
    import fcntl

    lock = Path(os.fspath(target) + ".lock")
    check_output_path(lock, what="lock file")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            except OSError:
                holder = "?"
            os.close(fd)
            raise TrainingError(f"another {what} (pid {holder}) is writing to {os.fspath(target)!r}; "
                                f"refusing to run a second one (lock {str(lock)!r})") from None
        except BaseException:
            os.close(fd)
            raise
        # the file may have been removed (and re-created) by the previous holder meanwhile
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def open_append(path: PathLike, *, inputs: Iterable[Any] = ()) -> Any:
    """Open ``path`` for appending (a log), after :func:`check_output_path`; never follows a symlink."""
    p = check_output_path(path, inputs=inputs)
    p.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(p, flags, 0o666)
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # pragma: no cover - raced in after the check
        os.close(fd)
        raise OutputPathError(f"log {os.fspath(path)!r} is not a regular file")
    return os.fdopen(fd, "a", encoding="utf-8")


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


def strict_float32() -> None:
    """Turn TF32 off for CUDA matrix products and cuDNN convolutions (process-wide).

    The certificate charges the network's float32 rounding at unit roundoff $2^{-24}$
    (``proofs/05``); TF32 rounds the inputs of a product to a 10-bit mantissa ($2^{-11}$), which that
    charge does not cover, and PyTorch enables it for cuDNN convolutions by default. Called by
    :func:`check_device` and :func:`load_checkpoint` for a CUDA device; a no-op without CUDA."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def check_device(device: Any) -> torch.device:
    """Parse a device string and check this machine can run on it; one :class:`ConfigError` otherwise.

    Accepted: ``cpu``; ``cuda``/``cuda:N`` where CUDA is available (and ``N`` exists; TF32 is then
    turned off, :func:`strict_float32`); ``mps`` where the MPS backend is available. ``meta`` (no
    data) and every other type are refused.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
        strict_float32()
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device {device!r} requested but the MPS backend is not available on this machine")
        return dev
    raise ConfigError(f"device {device!r} cannot run injcert; use cpu, cuda or cuda:N")


def _unwrap(model: Any) -> Any:
    seen = 0
    while seen < 8 and getattr(type(model), "_injcert_model_name", None) is None:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "model", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
        seen += 1
    return model


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's weights (names, shapes, values; float tensors as float64, so the same
    weights cast to float32 or float64 give the same fingerprint). Wrappers (tiling, DDP) are
    looked through."""
    m = _unwrap(model)
    h = hashlib.sha256()
    for name, t in sorted(m.state_dict().items()):
        t = t.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(torch.float64)
        h.update(f"{name}\0{tuple(t.shape)}\0{'float' if t.is_floating_point() else t.dtype}\0".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def has_nonfinite(model: nn.Module) -> list[str]:
    """Names of the parameters/buffers of ``model`` that contain NaN or infinity."""
    bad = []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def check_finite_model(model: nn.Module, what: str = "checkpoint") -> None:
    """Raise :class:`~injcert.errors.InputError` when a weight is NaN or infinite (commands that
    *use* a model; ``certify`` reports it as a failed property instead)."""
    bad = has_nonfinite(_unwrap(model))
    if bad:
        raise InputError(f"{what} holds NaN or infinite weights ({len(bad)} tensor(s): "
                         f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); it cannot be used")


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
    header = _json_loads(raw, label)
    if not isinstance(header, dict):
        raise CheckpointError(f"{label} is corrupt: its header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{label} is corrupt: its metadata is not an object")
    # every tensor's entry well formed and its byte range inside the file, before reading
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
    if 8 + n + end > size:
        raise CheckpointError(f"{label} is truncated: expected {8 + n + end} bytes, found {size}")
    limits.check("params", total, f"numbers stored in {label}")
    return declared, meta


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
    them as a failed property); use :func:`has_nonfinite` / :func:`check_finite_model` to test.

    Raises:
        CheckpointError: missing, truncated, corrupt, pickled, unknown model, a config that does not
            describe the stored tensors, or a tensor of another dtype than the model declares.
        LimitError: more stored numbers than ``limits.params``.
    """
    label = repr(os.fspath(path))
    declared, config = _read_header(path, _MODEL_FORMAT)
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
    cls = MODEL_REGISTRY[name]
    stored = sum(math.prod(shape) * _ST_ITEM[dt] for dt, shape in declared.values())
    budget = _BuildBudget(8 * stored + 64 * 2**20)
    try:
        with budget:
            model = cls.from_config(model_cfg)
    except Exception as exc:  # noqa: BLE001 - any failure to build from the file's config is a bad file
        if budget.exceeded:
            raise CheckpointError(
                f"{label} has a config that declares a model far larger than the {stored} bytes of tensors it "
                f"stores (more than {budget.budget} bytes to build); refusing to build it") from None
        raise CheckpointError(f"{label} has an unusable config for {name!r}: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
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
