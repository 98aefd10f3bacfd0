"""CPU thread settings that degrade gracefully when the machine is shared.

PyTorch's CPU kernels run on an OpenMP pool of ``torch.get_num_threads()`` threads, one per core
by default. When another CPU-bound process runs on the same cores, the threads of a parallel
region wait for each other at every barrier; with OpenMP's default *active* waiting they spin
while the thread they wait for is descheduled, and a command can become tens of times slower
instead of about twice. Two settings avoid that:

- ``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep instead of spinning. It is read once, when
  the OpenMP runtime loads (that is, when ``torch`` is first imported), so ``python -m injcert``
  sets it (unless the environment already does) before anything imports ``torch``;
- a bounded number of threads (``--threads``, default :func:`default_threads`), applied with
  :func:`torch.set_num_threads`.

Passive waiting costs time on an idle machine (each parallel region wakes its threads through the
kernel). The middle ground, libgomp's bounded spinning (``GOMP_SPINCOUNT``), was timed against it
with ``invert`` alone and next to a competing PyTorch loop (``benchmarks/contention_wait_policy.sh``;
the timings are in ``docs/notes/history.md``) and rejected: only PASSIVE kept the contended run
within a small factor of the quiet one in every repeat. ``OMP_WAIT_POLICY=ACTIVE`` (or
``GOMP_SPINCOUNT``) in the environment wins on a machine known to be idle.
"""

from __future__ import annotations

import ctypes
import os
import sys
from contextlib import contextmanager
from typing import Iterator, Optional
from .errors import ConfigError

__all__ = ["default_threads", "apply_threads", "threads", "set_passive_wait_policy", "keep_freed_heap"]

#: The most threads a command uses by default: the network's convolutions at the sizes used here
#: gain little beyond it, and fewer threads leave room for other work on a shared machine.
MAX_DEFAULT_THREADS = 4


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))  # respects taskset / cgroup CPU sets
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when it is set to a positive integer, else ``min(CPUs available, 4)``."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env.split(",")[0])
        except ValueError:
            n = 0
        if n > 0:
            return n
    return min(_cpus(), MAX_DEFAULT_THREADS)


def apply_threads(threads: Optional[int] = None) -> int:
    """Set torch's intra-op thread count to ``threads`` (default: :func:`default_threads`).

    Returns:
        The number of threads set.

    Raises:
        ConfigError: ``threads`` < 1.
    """
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads!r}")
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@contextmanager
def threads(n: Optional[int] = None, *, default: bool = True) -> Iterator[int]:
    """:func:`apply_threads` for the duration of a ``with`` block, then the previous count again
    (``injcert.cli.main`` called in-process leaves the caller's setting as it found it).

    ``default=False``: with ``n`` None keep the current count (a caller that set its own)."""
    import torch

    prev = torch.get_num_threads()
    try:
        yield apply_threads(n) if (n is not None or default) else prev
    finally:
        if torch.get_num_threads() != prev:
            torch.set_num_threads(prev)


def set_passive_wait_policy() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it (only effective before the
    OpenMP runtime loads, i.e. before ``torch`` is first imported)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


#: glibc ``mallopt`` parameters (``malloc.h``).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_heap() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse instead of returning it to the kernel.

    A decode allocates and frees the same large buffers (im2col columns, activations) at every
    network evaluation. By default glibc serves each from a fresh ``mmap`` and ``munmap``s it on
    free, so every evaluation page-faults its working set in again, and a long ``reconstruct``
    spends much of its time in the kernel. ``mallopt(M_MMAP_MAX, 0)`` (no mmap'ed blocks) and
    ``M_TRIM_THRESHOLD`` = 2 GiB (keep the freed top of the heap) keep the working set mapped: the
    same output bit for bit, at about the same peak memory (timed by hand on ``reconstruct chelsea
    --corruption random --steps 10 --threads 1``; the figures are in ``docs/notes/history.md``).
    Process-wide, so only ``python -m injcert`` (and the
    test suite) call it; a no-op returning ``False`` off glibc, when ``INJCERT_MALLOC=default``, or
    when the environment sets glibc's own ``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_`` /
    ``MALLOC_MMAP_THRESHOLD_`` (the user's choice wins). Returns whether it was applied."""
    if os.environ.get("INJCERT_MALLOC", "").strip().lower() == "default":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
