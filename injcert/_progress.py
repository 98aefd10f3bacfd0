"""Progress bars and closing summaries of the commands (one convention for all of them).

- Progress goes to **stderr** as tqdm bars, off with ``--quiet``;
- stdout carries the result (the certificate table, a JSON record, the benchmark tables);
- every command ends with one line ``injcert <command>: <what it wrote>; <the key figure>``
  (:func:`summary`), on stderr where stdout is a machine-readable record, else on stdout.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Optional, Sequence, TextIO

__all__ = ["Stages", "bar", "summary"]


def bar(iterable: Optional[Iterable[Any]] = None, *, desc: str = "", total: Optional[int] = None,
        enabled: bool = True, leave: bool = False) -> Any:
    """A tqdm bar on stderr (a plain pass-through when ``enabled`` is false or tqdm is missing)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        enabled = False
    if not enabled or not _interactive():
        return _NoBar(iterable)
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=leave, dynamic_ncols=True)


def _interactive() -> bool:
    """Bars only on a terminal: piped or captured stderr (CI logs, ``2> file``, tests checking for a
    one-line error) gets no carriage-return noise. ``INJCERT_PROGRESS=1`` forces them on."""
    import os

    if os.environ.get("INJCERT_PROGRESS") == "1":
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


class _NoBar:
    def __init__(self, iterable: Optional[Iterable[Any]]) -> None:
        self._it = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self._it if self._it is not None else ())

    def update(self, n: int = 1) -> None:
        pass

    def set_description_str(self, s: str) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def write(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class Stages:
    """A bar over named stages: ``with stages("lipschitz bound"): ...`` shows the stage running,
    its elapsed time, and advances when it ends.

    Arguments:
        desc: the bar's label (the command).
        names: the stages, in order (their count is the bar's total).
        enabled: ``False`` prints nothing.
    """

    def __init__(self, desc: str, names: Sequence[str], enabled: bool = True) -> None:
        self.desc = desc
        self.names = list(names)
        self._bar = bar(desc=desc, total=len(self.names), enabled=enabled)
        if enabled:
            self._bar.bar_format = "{desc}: {n_fmt}/{total_fmt} stages |{bar}| {elapsed}{postfix}"

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._bar.set_postfix_str(name)
        try:
            yield
        finally:
            self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def summary(command: str, text: str, *, stream: Optional[TextIO] = None) -> str:
    """Print the closing line ``injcert <command>: <text>`` (stdout unless ``stream``) and return it."""
    line = f"injcert {command}: {text}"
    out = stream if stream is not None else sys.stdout
    sys.stdout.flush()  # the result printed before comes first
    print(line, file=out, flush=True)
    return line
