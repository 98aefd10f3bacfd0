r"""Certify a network that injcert did not write: a ``torch.export`` program (``.pt2``) or a network
built by the user's own code (``--factory MODULE:CALLABLE``), wrapped in :class:`injcert.ScoreModel`.

**How a ``.pt2`` is loaded, and why no pickle runs.** ``torch.export.load`` reads JSON (the graph)
and tensor payloads, but it also calls ``torch.load(..., weights_only=False)`` on pickled weights
and constants, ``pickle.loads`` on "opaque" constants, ``torch._C._pickle_load_obj`` on custom
objects, and can load compiled AOTInductor libraries. :func:`load_exported` therefore

1. reads the file into memory once and refuses an archive with compiled code (``.so``, ``.dll``,
   ``.dylib``, ``.pyd``, ``.o``, ``.cpp``, ``.py``, an ``aotinductor`` folder) or that is not a zip;
2. runs ``torch.export.load`` on those bytes with every unpickling entry point replaced:
   ``torch.load`` is forced to ``weights_only=True`` (PyTorch's restricted unpickler, which only
   builds tensors and plain containers), ``pickle.loads`` and ``_pickle_load_obj`` refuse, and so does
   the AOTInductor loader;
3. refuses to load at all when this PyTorch's loader does not have those entry points where they
   are expected (a version whose loader was not vetted).

A file refused this way is unusable input (exit status 2); nothing in it was executed. The program
then runs only the ``torch.ops`` of its graph.

``--factory MODULE:CALLABLE`` is the explicit opt-in to running the user's code (as ``torchrun`` and
``uvicorn`` do): ``MODULE`` is imported from the current directory / ``PYTHONPATH`` and ``CALLABLE()``
must return an ``nn.Module`` (wrapped with ``--schedule``/``--parameterization``) or a
:class:`~injcert.ScoreModel`; ``--weights FILE.safetensors`` is loaded with safetensors (no pickle).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ..errors import CheckpointError, InjcertError
from ..model.protocol import ScoreModel

__all__ = ["load_exported", "load_factory", "foreign_hint", "ForeignModelError", "HINT"]

#: What to do with a network injcert cannot read.
HINT = ("export it with torch.export.save(torch.export.export(net, (x, t)), 'net.pt2') and pass "
        "--schedule/--parameterization, or use --factory MODULE:CALLABLE [--weights FILE.safetensors]")

_CODE_SUFFIXES = (".so", ".dll", ".dylib", ".pyd", ".o", ".cpp", ".py", ".pyc", ".sh")


class ForeignModelError(CheckpointError):
    """A foreign network that cannot be certified (unusable input: exit status 2)."""


class _Refused(ForeignModelError):
    pass


def _refuse(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise _Refused(f"refused: the archive asks to unpickle {what}, which could run code")
    return refuse


@contextlib.contextmanager
def _no_pickle() -> Iterator[None]:
    """Every unpickling entry point of ``torch.export.load`` made safe (see the module docstring)."""
    try:
        from torch.export.pt2_archive import _package as pkg
    except ImportError:  # pragma: no cover - another PyTorch layout
        raise ForeignModelError(f"this PyTorch ({torch.__version__}) has no vetted torch.export loader; {HINT}") \
            from None
    needed = [hasattr(pkg, "pickle"), hasattr(pkg, "_load_aoti"), hasattr(torch._C, "_pickle_load_obj")]
    if not all(needed):
        raise ForeignModelError(f"this PyTorch's ({torch.__version__}) torch.export loader was not vetted "
                                f"(its unpickling entry points moved); {HINT}")
    real_load, real_pickle, real_obj, real_aoti = torch.load, pkg.pickle, torch._C._pickle_load_obj, pkg._load_aoti

    def weights_only_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return real_load(f, *args, **kwargs)

    class _NoPickle:
        loads = staticmethod(_refuse("an arbitrary object (pickle.loads)"))
        load = loads

    torch.load = weights_only_load  # type: ignore[assignment]
    pkg.pickle = _NoPickle  # type: ignore[assignment]
    torch._C._pickle_load_obj = _refuse("a custom object")  # type: ignore[attr-defined]
    pkg._load_aoti = _refuse("compiled AOTInductor code")  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load, pkg.pickle, pkg._load_aoti = real_load, real_pickle, real_aoti  # type: ignore[assignment]
        torch._C._pickle_load_obj = real_obj  # type: ignore[attr-defined]


def load_exported(path: str | os.PathLike[str]) -> tuple[nn.Module, Optional[int]]:
    """``(module, channels)`` of a ``torch.export.save`` file, loaded without running any pickle (module
    docstring); ``channels`` from the program's example input (``None`` if it has none).

    Raises:
        ForeignModelError: missing, not a ``.pt2`` zip, compiled code inside, a pickle that the
            weights-only unpickler refuses, or not loadable by ``torch.export.load``.
    """
    label = repr(os.fspath(path))
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ForeignModelError(f"cannot read {label}: {exc.strerror or exc}") from None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ForeignModelError(f"{label} is not a torch.export archive (.pt2 zip); {HINT}") from None
    bad = [n for n in names if n.lower().endswith(_CODE_SUFFIXES) or "aotinductor" in n.lower()]
    if bad:
        raise ForeignModelError(f"{label} holds compiled or source code ({bad[0]}); refusing to load it")
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with _no_pickle():
            ep = torch.export.load(io.BytesIO(data))
    except _Refused as exc:
        raise ForeignModelError(f"{label}: {exc} (loaded with the weights-only unpickler)") from None
    except Exception as exc:  # noqa: BLE001 - any failure of the loader is unusable input
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "WeightsUnpickler" in str(exc):
            raise ForeignModelError(f"{label}: refused a pickle that is not plain tensors (weights-only "
                                    "unpickler); nothing in it was run") from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ForeignModelError(f"{label} is not a loadable torch.export program ({first}); {HINT}") from None
    finally:
        logger.setLevel(level)
    channels = None
    try:
        channels = int(ep.example_inputs[0][0].shape[1])
    except (AttributeError, IndexError, TypeError):
        pass
    return ep.module(), channels


def _import_factory(spec: str) -> Any:
    if ":" not in spec:
        raise ForeignModelError(f"--factory must be MODULE:CALLABLE, got {spec!r}")
    mod_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:  # noqa: BLE001 - the user's code: any failure is reported in one line
        raise ForeignModelError(f"--factory: cannot import {mod_name!r}: {type(exc).__name__}: "
                                f"{(str(exc).splitlines() or [''])[0]}") from None
    obj: Any = mod
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ForeignModelError(f"--factory: module {mod_name!r} has no {attr!r}")
    if not callable(obj):
        raise ForeignModelError(f"--factory: {spec!r} is a {type(obj).__name__}, not a callable")
    return obj


def load_factory(spec: str, weights: Optional[str] = None) -> nn.Module:
    """``CALLABLE()`` of ``MODULE:CALLABLE`` (an ``nn.Module`` or a ScoreModel), with ``weights`` loaded.

    Raises:
        ForeignModelError: the import, the call or the weights fail (one line), or it returns something else.
    """
    fn = _import_factory(spec)
    try:
        obj = fn()
    except InjcertError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ForeignModelError(f"--factory: {spec}() raised {type(exc).__name__}: "
                                f"{(str(exc).splitlines() or [''])[0]}") from None
    if not isinstance(obj, nn.Module):
        raise ForeignModelError(f"--factory: {spec}() must return an nn.Module or an injcert.ScoreModel, "
                                f"got {type(obj).__name__}")
    if weights is not None:
        target = obj.net if isinstance(obj, ScoreModel) else obj
        try:
            from safetensors.torch import load_file

            state = load_file(weights)
        except Exception as exc:  # noqa: BLE001
            raise ForeignModelError(f"--weights {weights!r} is not a readable safetensors file: "
                                    f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
        try:
            target.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ForeignModelError(f"--weights {weights!r} does not fit {type(target).__name__}: "
                                    f"{(str(exc).splitlines() or [''])[0]}") from None
    return obj.eval()


def foreign_hint(path: str | os.PathLike[str]) -> Optional[str]:
    """One line saying what a file injcert cannot certify is, and what to do; ``None`` if it looks like
    an injcert checkpoint."""
    p = Path(path)
    label = repr(os.fspath(path))
    if p.is_dir():
        if (p / "model_index.json").exists() or (p / "config.json").exists():
            return f"{label} is a diffusers-style folder; {HINT}"
        return f"{label} is a folder, not a checkpoint; {HINT}"
    try:
        with open(p, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return None
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return f"{label} is a TorchScript archive (torch.jit.save), which injcert does not run; {HINT}"
        if any(n.endswith("data.pkl") for n in names):
            return f"{label} is a torch.save pickle (never unpickled); {HINT}"
        return None
    if head[:1] == b"\x80":
        return f"{label} is a pickle (never unpickled); {HINT}"
    if p.suffix == ".safetensors" and b"injcert" not in p.read_bytes()[:1 << 16]:
        return f"{label} is a plain safetensors state dict without an injcert config; {HINT}"
    return None
