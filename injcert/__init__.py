"""injcert: injective Neural-ODE conditional diffusion models with certified inversion.

The public surface is short and re-exported explicitly here; each concept lives in its own
module (``theory`` for the mathematics, ``model``, ``solvers``, ``tasks``, ``certify``).
"""

from __future__ import annotations

import os as _os
import sys as _sys
from pathlib import Path

# ``python -m injcert ...`` (argv[0] is "-m" while the package is located) or the ``injcert``
# script: make OpenMP's idle threads sleep instead of spin before torch loads the runtime, which
# reads this only once (injcert/threads.py). An explicit setting wins; ``import injcert`` leaves it.
if _os.path.basename(_sys.argv[0] if _sys.argv else "") in ("-m", "injcert") and "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

#: Path of the shipped default model (trained with ``python -m injcert train``; see the README).
DEFAULT_CHECKPOINT: Path = Path(__file__).resolve().parent / "assets" / "default.ckpt"

from .errors import ArgumentError as ArgumentError  # noqa: E402
from .errors import ArgumentTypeError as ArgumentTypeError  # noqa: E402
from .errors import CheckpointError as CheckpointError  # noqa: E402
from .errors import ConfigError as ConfigError  # noqa: E402
from .errors import InjcertError as InjcertError  # noqa: E402
from .errors import NonConvergenceError as NonConvergenceError  # noqa: E402
from .errors import InputError as InputError  # noqa: E402
from .errors import LimitError as LimitError  # noqa: E402
from .errors import OutputPathError as OutputPathError  # noqa: E402
from .errors import TrainingError as TrainingError  # noqa: E402
from .errors import UnsupportedModuleError as UnsupportedModuleError  # noqa: E402
from .io import load_checkpoint as load_checkpoint  # noqa: E402
from .io import save_checkpoint as save_checkpoint  # noqa: E402
from .data.corruptions import make_corruption as make_corruption  # noqa: E402
from .data.grid import square_image as square_image  # noqa: E402
from .metrics import background_preservation as background_preservation  # noqa: E402
from .metrics import psnr as psnr  # noqa: E402
from .metrics import region_psnr as region_psnr  # noqa: E402
from .metrics import ssim as ssim  # noqa: E402
from .solvers import Grid as Grid  # noqa: E402
from .solvers import integrate as integrate  # noqa: E402
from .solvers import probability_flow_field as probability_flow_field  # noqa: E402
from .tasks.edit import EditResult as EditResult  # noqa: E402
from .tasks.edit import edit as edit  # noqa: E402
from .tasks.edit import edit_full as edit_full  # noqa: E402
from .tasks.edit import make_target as make_target  # noqa: E402
from .tasks.invert import Latent as Latent  # noqa: E402
from .tasks.invert import decode as decode  # noqa: E402
from .tasks.invert import decode_full as decode_full  # noqa: E402
from .tasks.invert import encode as encode  # noqa: E402
from .tasks.invert import encode_state as encode_state  # noqa: E402
from .tasks.reconstruct import Reconstruction as Reconstruction  # noqa: E402
from .tasks.reconstruct import reconstruct as reconstruct  # noqa: E402
from .tasks.reconstruct import reconstruct_full as reconstruct_full  # noqa: E402
from .tasks.tiling import TiledModel as TiledModel  # noqa: E402
from .theory.lipschitz import LipschitzBound as LipschitzBound  # noqa: E402
from .theory.lipschitz import lipschitz_bound as lipschitz_bound  # noqa: E402
from .theory.lipschitz import lipschitz_lower_bound as lipschitz_lower_bound  # noqa: E402
from .theory.lipschitz import register_lipschitz_rule as register_lipschitz_rule  # noqa: E402
from .theory.lipschitz import residual_bound as residual_bound  # noqa: E402
from .theory.lipschitz import concat_bound as concat_bound  # noqa: E402
from .theory.lipschitz import product_bound as product_bound  # noqa: E402
from .theory.lipschitz import sum_bound as sum_bound  # noqa: E402
from .theory.logdet import logdet as logdet  # noqa: E402
from .theory.logdet import trace as trace  # noqa: E402
from .theory.spectral import operator_norm_bound as operator_norm_bound  # noqa: E402
from .theory.spectral import operator_norm_interval as operator_norm_interval  # noqa: E402
from .certify import Certificate as Certificate  # noqa: E402
from .certify import CertifyConfig as CertifyConfig  # noqa: E402
from .certify import certify as certify  # noqa: E402
from .model.protocol import ScoreModel as ScoreModel  # noqa: E402
from .model.protocol import ScoreModelError as ScoreModelError  # noqa: E402
from . import testing as testing  # noqa: E402  (last: it imports the public names above)

__all__ = [
    "__version__",
    "DEFAULT_CHECKPOINT",
    "operator_norm_bound",
    "operator_norm_interval",
    "lipschitz_bound",
    "LipschitzBound",
    "lipschitz_lower_bound",
    "register_lipschitz_rule",
    "residual_bound",
    "concat_bound",
    "product_bound",
    "sum_bound",
    "logdet",
    "trace",
    "load_checkpoint",
    "save_checkpoint",
    "encode",
    "encode_state",
    "decode",
    "decode_full",
    "Latent",
    "reconstruct",
    "reconstruct_full",
    "Reconstruction",
    "edit",
    "edit_full",
    "EditResult",
    "make_target",
    "make_corruption",
    "square_image",
    "TiledModel",
    "integrate",
    "Grid",
    "probability_flow_field",
    "psnr",
    "ssim",
    "region_psnr",
    "background_preservation",
    "testing",
    "certify",
    "Certificate",
    "CertifyConfig",
    "ScoreModel",
    "ScoreModelError",
    "InjcertError",
    "ArgumentError",
    "ArgumentTypeError",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "LimitError",
    "OutputPathError",
    "TrainingError",
    "NonConvergenceError",
    "UnsupportedModuleError",
]

