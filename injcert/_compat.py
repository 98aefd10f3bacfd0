"""Small shims around third-party behaviour."""

from __future__ import annotations

import warnings

__all__ = ["quiet_jvp_decompositions", "transform_wrapped"]

_done = False


def quiet_jvp_decompositions() -> None:
    """Import ``torch._decomp.decompositions_for_jvp`` with its ``torch.jit.script is deprecated``
    warnings silenced.

    PyTorch imports that module on the first forward-mode ``torch.func.jvp``/``jacfwd`` and it
    scripts about 18 functions, each of which emits a ``DeprecationWarning`` attributed to the
    caller's process — a user's CI run with ``-W error`` then fails inside injcert's certify path.
    The filter is narrow: that message, that category, only while this one import runs.
    """
    global _done
    if _done:
        return
    _done = True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is", category=DeprecationWarning)
        try:
            import torch._decomp.decompositions_for_jvp  # noqa: F401
        except ImportError:  # pragma: no cover - another torch layout: nothing to silence
            pass


def transform_wrapped(t: object) -> bool:
    """Whether ``t`` was made inside a ``torch.func`` transform (``grad``, ``jacrev``, ``vmap``, ``jvp``):
    such a tensor belongs to that transform and must not be kept past it. ``True`` when this torch
    cannot tell, so a caller that caches only on ``False`` stays safe."""
    import torch

    check = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return True if check is None else bool(check(t))
