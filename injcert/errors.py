"""Exception types of injcert.

Every error raised on purpose by injcert derives from :class:`InjcertError`, so a
caller (or the command line) can tell a user-facing failure from a bug.
"""

from __future__ import annotations

__all__ = [
    "InjcertError",
    "UnsupportedModuleError",
    "NonConvergenceError",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "OutputPathError",
    "LimitError",
    "TrainingError",
    "ArgumentError",
    "ArgumentTypeError",
]


class InjcertError(Exception):
    """Base class of every error injcert raises deliberately."""


class UnsupportedModuleError(InjcertError, TypeError):
    """A module has no sound Lipschitz rule; the message names its type.

    A certified bound is never computed by skipping a module.
    """


class NonConvergenceError(InjcertError, RuntimeError):
    """An iterative inverse did not reach its certified tolerance.

    Attributes:
        error: the certified a-posteriori error bound reached (``inf`` if none).
        iterations: the number of iterations performed.
    """

    def __init__(self, message: str, error: float = float("inf"), iterations: int = 0) -> None:
        super().__init__(message)
        self.error = float(error)
        self.iterations = int(iterations)


class CheckpointError(InjcertError, ValueError):
    """A checkpoint is missing, truncated, corrupt, untrusted or incompatible."""


class ConfigError(InjcertError, ValueError):
    """A configuration is invalid (unknown key, negative size, non-positive budget, ...)."""


class InputError(InjcertError, ValueError):
    """An input is unusable: non-finite data, a latent made by another model, sizes that differ, ..."""


class OutputPathError(InjcertError, OSError):
    """An output path is refused: a device node, fifo, directory or symlink, an input of the same
    command, or a folder that cannot be written."""


class LimitError(InjcertError, ValueError):
    """An input asks for more than a documented resource limit (pixels, parameters, steps, ...).

    The message names the limit and how to raise it (``--limit NAME=VALUE`` or ``INJCERT_MAX_*``).
    """


class TrainingError(InjcertError, RuntimeError):
    """A training run cannot go on: another run holds ``--out``, the loss became non-finite, ..."""


class ArgumentError(InjcertError, ValueError):
    """An argument lies outside its documented domain (``steps < 1``, an unknown method or grid
    name, a negative tolerance, shapes that do not match, ...). A ``ValueError`` too, so callers that
    caught ``ValueError`` keep working."""


class ArgumentTypeError(InjcertError, TypeError):
    """An argument has the wrong type or dtype (a float where an int is needed, an int64 tensor where a
    float one is, ...). A ``TypeError`` too."""
