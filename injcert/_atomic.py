"""The output layer: atomic writes, output-path checks, run locks (re-exported by :mod:`injcert.io`).

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
import io as _io
import os
import secrets
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Union

from .errors import OutputPathError, TrainingError

__all__ = [
    "atomic_directory",
    "atomic_write",
    "atomic_write_bytes",
    "save_figure",
    "check_output_path",
    "same_file",
    "clean_orphan_temps",
    "probe_writable",
    "output_lock",
    "open_append",
]

_TMP_PREFIX = ".injcert-"
_TMP_SUFFIX = ".tmp"

PathLike = Union[str, "os.PathLike[str]"]


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
        _check_existing(p, st, text, inputs, directory, what)
    probe = _writable_folder(p, text, directory, what)
    if not directory:
        limit = _name_max(probe)
        n = len(os.fsencode(p.name))
        if n > limit:
            raise OutputPathError(f"{what} name is {n} bytes long; this file system allows {limit}")
    return p


def _check_existing(p: Path, st: os.stat_result, text: str, inputs: Iterable[Any], directory: bool,
                    what: str) -> None:
    """An existing target: a directory (``directory=True``; a symlink to one followed), else a regular
    file, never a symlink; and not one of ``inputs``."""
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


def _writable_folder(p: Path, text: str, directory: bool, what: str) -> Path:
    """The nearest existing folder above the target (the target itself for a directory), which must be a
    writable directory."""
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
    return probe


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
