r"""Training: Adam + EMA on bundled-image patches, resumable bit for bit, DDP under ``torchrun``.

Long because a resumable training run is one contract (bit-exact resume, DDP, signals, validation):
its configuration, state files and loop are kept together; every function is at most ~50 lines.
Elsewhere: the command line (:mod:`injcert.cli.train`), the distributed set-up
(:mod:`injcert.tasks._distributed`) and the optimizer state as flat tensors
(:mod:`injcert.tasks._train_state`).

Determinism
-----------
Every random draw of step $k$ (which patches, $t$, $\varepsilon$, the corruption) comes from a
``torch.Generator`` seeded with ``mix(seed, k, rank)``, and patch $i$ of
:class:`~injcert.data.images.PatchDataset` depends only on ``(seed, i)``; step $k$ on rank $r$ of
$R$ uses patches ``k*B + r*B/R + j``. So step $k$'s randomness depends only on
``(seed, k, rank)``: a run killed at any moment (``kill -9``) and resumed from its last training
state (``OUT.state``: raw weights, Adam state, EMA weights, step, RNG state) follows, on the CPU
with the same seed, *the same loss trajectory* as an uninterrupted run, and ends with identical
weights (``tests/test_train.py`` checks ``torch.equal``).

Files
-----
``OUT``
    the model checkpoint (:func:`~injcert.io.save_checkpoint`): the **EMA** weights, metadata
    ``step``, ``val_loss``, ``train_command``, ``wall_time``, ``seed``, ...
``OUT.state``
    the training state (:func:`~injcert.io.save_state`).
``log``
    JSON lines ``{"step", "loss", "lr", "samples_per_s"[, "val_loss"]}`` (rank 0 only; on resume
    the lines after the resumed step are dropped, so the log never repeats a step).

Both files are written atomically every ``checkpoint_every`` steps and at the end.

Distributed
-----------
Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set, world size > 1) the process group
is initialised (gloo on CPU, nccl on CUDA; ``--device cuda`` uses ``cuda:LOCAL_RANK``), the
model wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, and the global batch
``batch_size`` split into ``batch_size / world_size`` distinct examples per rank. Only rank 0
writes files, logs and shows the progress bar. At each checkpoint every rank hashes its replica
and the hashes are stored in the metadata (``replica_sha256``); differing replicas are an error.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import limits
from ..data.images import PatchDataset
from ..errors import CheckpointError, ConfigError, TrainingError
from ..io import (atomic_write_bytes, check_finite, check_output_path, clean_orphan_temps, is_state_file,
                  load_checkpoint, load_state, notice, open_append, output_lock, probe_writable,
                  save_checkpoint, save_state, weights_fingerprint)
from ..model.objective import (REFINE_VARSIGMA, T_MIN, draw_training_batch, loss_on_batch, low_noise_range, refine_range,
                               restorer_loss)
from ..model.layers import batched_normalisation
from ..model.unet import DEFAULT_MODEL_CONFIG, CondUNet, weights_config
from ._distributed import _Dist, _init_distributed, _replica_hash
from ._train_state import _flatten_optimizer, _prefixed, _restore_optimizer

__all__ = ["TrainConfig", "train", "step_seed", "VAL_SEED"]

PathLike = Union[str, "os.PathLike[str]"]

#: Seed of the held-out validation patches and their noise (fixed: val losses are comparable).
VAL_SEED: int = 20240917
_DATASET_LENGTH = 2**62


#: The learning-rate schedules after the warm-up (:func:`learning_rate`).
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


def learning_rate(config: "TrainConfig", step: int) -> float:
    """The learning rate of (0-based) ``step``: linear warm-up to ``lr`` over ``warmup_steps``, then
    ``lr`` (``constant``) or $\\ell_f + (\\ell - \\ell_f)\\,(1 + \\cos \\pi u)/2$ with
    $u = (k + 1 - w)/(K - w + 1)$ (``cosine``, $K$ = ``steps``, $w$ = ``warmup_steps``): it reaches
    ``lr_final`` one step after the last, so every step has a positive rate even at ``lr_final = 0``."""
    k, w, total = step + 1, config.warmup_steps, config.steps
    if w and k < w:
        return config.lr * k / w
    if config.lr_schedule == "constant" or total <= w:
        return config.lr
    u = min(1.0, max(0.0, (k - w) / (total - w + 1)))
    return config.lr_final + (config.lr - config.lr_final) * 0.5 * (1.0 + math.cos(math.pi * u))


def _mix(*values: int) -> int:
    """Mix integers into one 63-bit seed (SplitMix64 finaliser applied per value)."""
    z = 0x632BE59BD9B4E019
    for v in values:
        z = (z ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
    return z & 0x7FFFFFFFFFFFFFFF


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of the generator of training step ``step`` on ``rank`` (depends on nothing else)."""
    return _mix(seed, step, rank, 0x7472)


# ============================================================================ config


@dataclass
class TrainConfig:
    """Every training option (JSON: ``configs/*.json``).

    Attributes:
        steps: total optimisation steps (a resumed run continues up to this number).
        batch_size: global batch (split evenly over ranks).
        lr: Adam learning rate (linear warm-up over ``warmup_steps``, then ``lr_schedule``).
        seed: seed of the weights' initialisation and of every random draw.
        patch_size: side of the square training patches (pixels).
        max_downscale: training patches are crops of up to ``max_downscale`` × ``patch_size`` pixels
            resized to ``patch_size`` (log-uniform scale; 1: native-resolution crops; see
            :class:`~injcert.data.images.PatchDataset`).
        dihedral: training patches are also rotated by a random multiple of 90° (with the flip, all
            eight symmetries of the square; validation patches are not).
        channels: image channels (1 or 3); the model's ``in_channels``.
        model: :class:`~injcert.model.unet.CondUNet` options (missing ones take defaults).
        ema_decay: EMA decay $\\beta$ (the effective decay is $\\min(\\beta, (1+k)/(10+k))$).
        checkpoint_every: steps between checkpoints (and one at the end).
        val_every: steps between validation losses (and one at the end).
        val_batches: held-out batches (of ``batch_size`` patches) per validation.
        log: JSON-lines log path (``None``: none).
        p_uncond: fraction of unconditional examples.
        t_min: smallest training time.
        low_noise_fraction: fraction of each batch whose $t$ is drawn log-uniform in $\\varsigma$ on
            $[\\varsigma(t_{\\min}), \\varsigma_{\\text{low}}]$ instead of uniform in $t$ (0: none; see
            :func:`~injcert.model.objective.draw_training_batch`). Validation always draws uniform $t$.
        low_noise_varsigma: $\\varsigma_{\\text{low}}$.
        refine_fraction: probability that a mask example is a refinement example, its missing pixels
            starting from ``inpaint_biharmonic``'s estimate instead of the truth (0: none; see
            :func:`~injcert.model.objective.draw_training_batch`). Validation never has any.
        refine_varsigma: ``[lo, hi]``, the $\\varsigma$ range of the refinement examples (log-uniform).
        refine_start: what a refinement example's missing pixels start from: ``"biharmonic"`` or
            ``"restorer"`` (the model's own $R(c)$, as reconstruction starts from it where the model has one).
        grad_clip: gradient-norm clip (0: none).
        warmup_steps: learning-rate warm-up steps (0: none).
        images: training image names (``None``: all of ``TRAIN_IMAGES``).
        lr_schedule: ``"constant"`` (``lr`` after the warm-up) or ``"cosine"`` (from ``lr`` at the end
            of the warm-up down to ``lr_final`` at step ``steps``; see :func:`learning_rate`).
        lr_final: the cosine schedule's last learning rate, ``0 <= lr_final <= lr``.
        init: a model checkpoint whose weights start the run (model and EMA; the optimizer starts
            fresh at step 0): fine-tuning or continuing a shipped model. Its model options must be
            this config's. Read once, at the start; a resumed run takes its weights from the state.
        objective: ``"denoising"`` (the conditional denoising loss of the whole score network) or
            ``"restorer"`` (only the conditional restorer $R(c)$, by direct supervision on $x_0$:
            :func:`~injcert.model.objective.restorer_loss`; every other weight stays as it is).
        corruptions: the corruption types training draws (names of
            :data:`~injcert.data.corruptions.CORRUPTIONS`; ``None``: all of them; validation draws all, except for
            the ``"restorer"`` objective, whose validation draws these).
        freeze: parameter-name prefixes that the denoising objective does not train (e.g.
            ``["restorer."]``: refine the certified network around a trained restorer).
        loss_sigma_data: ``None`` (the plain ε loss) or $\\sigma_d > 0$: weigh each example's ε error by
            $1 + \\varsigma_t^2/\\sigma_d^2$ (Karras et al. 2022; :func:`~injcert.model.objective.loss_on_batch`).
            The validation loss stays unweighted, so runs compare.
    """

    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-4
    seed: int = 0
    patch_size: int = 32
    channels: int = 3
    model: dict = field(default_factory=lambda: copy.deepcopy(DEFAULT_MODEL_CONFIG))
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    val_every: int = 250
    val_batches: int = 4
    log: Optional[str] = None
    p_uncond: float = 0.1
    t_min: float = T_MIN
    low_noise_fraction: float = 0.0
    low_noise_varsigma: float = 0.2
    refine_fraction: float = 0.0
    refine_varsigma: list = field(default_factory=lambda: list(REFINE_VARSIGMA))
    grad_clip: float = 1.0
    warmup_steps: int = 50
    images: Optional[list] = None
    lr_schedule: str = "constant"
    lr_final: float = 0.0
    init: Optional[str] = None
    loss_sigma_data: Optional[float] = None
    objective: str = "denoising"
    freeze: list = field(default_factory=list)
    corruptions: Optional[list] = None
    refine_start: str = "biharmonic"
    max_downscale: float = 1.0
    dihedral: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Validate and build; any problem raises one :class:`ConfigError` line."""
        if not isinstance(d, dict):
            raise ConfigError(f"training config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**{k: copy.deepcopy(v) for k, v in d.items()})
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dataclasses.asdict(self))

    def validate(self) -> None:
        """Raise :class:`ConfigError` on the first bad option (and fill in model defaults)."""
        self._validate_numbers()
        self._validate_options()
        self._validate_objective()
        if self.init is not None and (not isinstance(self.init, str) or not self.init):
            raise ConfigError(f"training option init must be a checkpoint path or null, got {self.init!r}")
        self.model = self._validated_model()

    def _integer(self, name: str, minimum: int) -> None:
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"training option {name} must be an int >= {minimum}, got {v!r}")

    def _number(self, name: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
        v = getattr(self, name)
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            lb, ub = ("(" if lo_open else "["), (")" if hi_open else "]")
            raise ConfigError(f"training option {name} must lie in {lb}{lo}, {hi}{ub}, got {v!r}")

    def _validate_numbers(self) -> None:
        """The counts, rates and fractions, and ``refine_varsigma``."""
        integer, number = self._integer, self._number
        integer("steps", 0)
        integer("batch_size", 1)
        limits.check("batch_size", self.batch_size, "training option batch_size")
        integer("seed", 0)
        integer("patch_size", 1)
        integer("checkpoint_every", 1)
        integer("val_every", 1)
        integer("val_batches", 0)
        integer("warmup_steps", 0)
        number("lr", 0.0, math.inf, lo_open=True, hi_open=True)
        number("ema_decay", 0.0, 1.0, hi_open=True)
        number("p_uncond", 0.0, 1.0)
        number("grad_clip", 0.0, math.inf, hi_open=True)
        number("t_min", 0.0, 1.0, hi_open=True)
        number("low_noise_fraction", 0.0, 1.0)
        number("low_noise_varsigma", 0.0, math.inf, lo_open=True, hi_open=True)
        number("refine_fraction", 0.0, 1.0)
        number("max_downscale", 1.0, 64.0)
        rv = self.refine_varsigma
        if (not isinstance(rv, (list, tuple)) or len(rv) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                                   or not math.isfinite(v) for v in rv)
                or not 0 < rv[0] <= rv[1]):
            raise ConfigError(f"training option refine_varsigma must be [lo, hi] with 0 < lo <= hi, got {rv!r}")

    def _validate_options(self) -> None:
        """``channels``, ``log``, ``images``, the learning-rate schedule and ``loss_sigma_data``."""
        number = self._number
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ConfigError(f"training option channels must be 1 or 3, got {self.channels!r}")
        if self.log is not None and not isinstance(self.log, str):
            raise ConfigError(f"training option log must be a path string or null, got {self.log!r}")
        if self.images is not None and (not isinstance(self.images, list) or not self.images):
            raise ConfigError(f"training option images must be a non-empty list of names or null, got {self.images!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"training option lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        number("lr_final", 0.0, self.lr)
        if self.loss_sigma_data is not None:
            number("loss_sigma_data", 0.0, math.inf, lo_open=True, hi_open=True)

    def _validated_model(self) -> dict:
        """The model options checked and completed with the defaults (``in_channels`` = ``channels``)."""
        if not isinstance(self.model, dict):
            raise ConfigError(f"training option model must be an object, got {type(self.model).__name__}")
        unknown = sorted(set(self.model) - set(DEFAULT_MODEL_CONFIG))
        if unknown:
            raise ConfigError(f"unknown model option(s) {unknown}; known: {sorted(DEFAULT_MODEL_CONFIG)}")
        model = copy.deepcopy(DEFAULT_MODEL_CONFIG)
        model.update(self.model)
        if "in_channels" in self.model and self.model["in_channels"] != self.channels:
            raise ConfigError(
                f"model in_channels={self.model['in_channels']!r} differs from training option channels={self.channels!r}"
            )
        model["in_channels"] = self.channels
        budget = model["lipschitz_budget"]
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not math.isfinite(budget) or budget <= 0):
            raise ConfigError(f"model option lipschitz_budget must be a finite number > 0 (or null), got {budget!r}")
        if self.objective == "restorer" and not model.get("restorer"):
            raise ConfigError("training objective 'restorer' needs a model with a restorer (model option 'restorer')")
        return model

    def _validate_objective(self) -> None:
        """The options of what is trained and on what: ``corruptions``, ``refine_start``, ``objective``,
        ``freeze`` (one :class:`ConfigError` line for a bad one)."""
        if self.corruptions is not None:
            from ..data.corruptions import CORRUPTIONS

            if not isinstance(self.corruptions, list) or not self.corruptions or any(
                    c not in CORRUPTIONS for c in self.corruptions):
                raise ConfigError(f"training option corruptions must be null or a non-empty list of "
                                  f"{list(CORRUPTIONS)}, got {self.corruptions!r}")
        if not isinstance(self.dihedral, bool):
            raise ConfigError(f"training option dihedral must be true or false, got {self.dihedral!r}")
        if self.refine_start not in ("biharmonic", "restorer"):
            raise ConfigError(f"training option refine_start must be 'biharmonic' or 'restorer', got {self.refine_start!r}")
        if self.refine_start == "restorer" and self.refine_fraction > 0 and not (self.model or {}).get("restorer"):
            raise ConfigError("training option refine_start 'restorer' needs a model with a restorer")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"training option objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if not isinstance(self.freeze, list) or not all(isinstance(v, str) and v for v in self.freeze):
            raise ConfigError(f"training option freeze must be a list of parameter-name prefixes, got {self.freeze!r}")


#: The training objectives (:attr:`TrainConfig.objective`).
OBJECTIVES = ("denoising", "restorer")


def trainable_parameters(model: nn.Module, config: "TrainConfig") -> list[nn.Parameter]:
    """The parameters ``config`` trains: the restorer's alone for the ``"restorer"`` objective, else every
    parameter whose name starts with none of ``config.freeze``."""
    if config.objective == "restorer":
        return [p for n, p in model.named_parameters() if n.startswith("restorer.")]
    return [p for n, p in model.named_parameters() if not any(n.startswith(f) for f in config.freeze)]


# ============================================================================ state


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines of steps after ``last_step`` (written after the resumed checkpoint)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by kill -9
        if int(rec.get("step", 0)) <= last_step:
            keep.append(line)
    atomic_write_bytes(path, ("\n".join(keep) + ("\n" if keep else "")).encode())


# ============================================================================ training


def _batch(dataset: Any, start: int, n: int, device: torch.device) -> Tensor:
    return torch.stack([dataset[start + j] for j in range(n)]).to(device)


class StepBatches(torch.utils.data.Dataset):
    """Item ``k`` is everything training step ``k`` draws on this rank: patches, $t$, $\\varepsilon$,
    the corruption (:func:`~injcert.model.objective.draw_training_batch`), on the CPU.

    It depends only on ``(seed, k, rank)``, so it can be computed in ``DataLoader`` workers ahead
    of the step (on the CPU, while the GPU runs the previous steps) with the same result as in
    the training process.
    """

    def __init__(self, dataset: Any, schedule: Any, seed: int, rank: int, global_batch: int,
                 local_batch: int, p_uncond: float, t_min: float, low_noise_fraction: float = 0.0,
                 low_noise_varsigma: float = 0.2, refine_fraction: float = 0.0,
                 refine_varsigma: Any = REFINE_VARSIGMA, corruptions: Optional[list] = None,
                 refine_start: str = "biharmonic") -> None:
        self.dataset, self.schedule = dataset, schedule
        self.corruptions, self.refine_start = corruptions, refine_start
        self.seed, self.rank = seed, rank
        self.global_batch, self.local_batch = global_batch, local_batch
        self.p_uncond, self.t_min = p_uncond, t_min
        self.low_noise_fraction, self.low_noise_varsigma = low_noise_fraction, low_noise_varsigma
        # here, in the training process: a bad value would otherwise surface inside a DataLoader worker
        low_noise_range(schedule, t_min, low_noise_fraction, low_noise_varsigma)
        self.refine_fraction, self.refine_varsigma = refine_fraction, tuple(refine_varsigma)
        refine_range(schedule, refine_fraction, self.refine_varsigma)

    def __len__(self) -> int:
        return _DATASET_LENGTH // max(1, self.global_batch)

    def __getitem__(self, step: int) -> dict[str, Tensor]:
        x0 = _batch(self.dataset, step * self.global_batch + self.rank * self.local_batch, self.local_batch,
                    torch.device("cpu"))
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, self.rank))
        return draw_training_batch(x0, gen, self.schedule, p_uncond=self.p_uncond, t_min=self.t_min,
                                   low_noise_fraction=self.low_noise_fraction,
                                   low_noise_varsigma=self.low_noise_varsigma,
                                   refine_fraction=self.refine_fraction, refine_varsigma=self.refine_varsigma,
                                   corruptions=self.corruptions, refine_start=self.refine_start)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _to_device(batch: dict[str, Tensor], dev: torch.device) -> dict[str, Tensor]:
    return {k: v.to(dev, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    pe = [p for p in ema.parameters()]
    pm = [p.detach() for p in model.parameters()]
    torch._foreach_mul_(pe, decay)
    torch._foreach_add_(pe, pm, alpha=1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


@torch.no_grad()
def validation_loss(model: nn.Module, batches: list[dict[str, Tensor]], objective: str = "denoising") -> float:
    """Mean loss of ``objective`` on fixed held-out batches (drawn once by :func:`validation_batches`)."""
    if not batches:
        return float("nan")
    was = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    for b in batches:
        loss = restorer_loss(model.restorer, b) if objective == "restorer" else loss_on_batch(model, b)
        total = total + loss.to(torch.float64).cpu()
    model.train(was)
    return float(total) / len(batches)


def validation_batches(config: "TrainConfig", schedule: Any, device: torch.device) -> list[dict[str, Tensor]]:
    """The held-out batches with their fixed noise and corruptions (seed :data:`VAL_SEED`)."""
    if config.val_batches <= 0:
        return []
    vds = PatchDataset(None, patch_size=config.patch_size, channels=config.channels,
                       length=config.val_batches * config.batch_size, seed=VAL_SEED, split="heldout")
    # the restorer fills missing pixels and returns every seen one as observed: blurred or noisy examples
    # would add a loss it cannot change, so its validation draws the corruptions it trains on
    kinds = config.corruptions if config.objective == "restorer" else None
    out = []
    for i in range(config.val_batches):
        x0 = _batch(vds, i * config.batch_size, config.batch_size, torch.device("cpu"))
        g = torch.Generator().manual_seed(_mix(VAL_SEED, i))
        b = draw_training_batch(x0, g, schedule, p_uncond=config.p_uncond, t_min=config.t_min, corruptions=kinds)
        out.append(_to_device(b, device))
    return out


#: Options a resumed run may change (recorded in the metadata under ``resumed``); any other change
#: of the saved config (seed, model, patch size, ...) is refused.
RESUME_OVERRIDABLE: tuple[str, ...] = ("steps", "batch_size", "lr", "log")


def resolve_resume(path: PathLike) -> Path:
    """The training state to resume from: ``path`` itself if it is one, else ``path + ".state"``
    (so the model path that ``--out`` printed works too)."""
    p = Path(path)
    if is_state_file(p):
        return p
    sibling = Path(str(p) + ".state")
    if not str(p).endswith(".state") and sibling.is_file():
        return sibling
    if p.exists() and not str(p).endswith(".state"):
        raise CheckpointError(f"{str(p)!r} is not a training state and {str(sibling)!r} does not exist")
    return p  # load_state gives the precise error


def _validated_state(path: PathLike, tensors: dict[str, Tensor], meta: dict[str, Any]) -> "TrainConfig":
    """Check what a resume needs from a state file; returns its config. One CheckpointError line."""
    label = repr(str(path))
    if "step" not in meta:
        raise CheckpointError(f"resume state {label} records no step")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"resume state {label} has step {step!r}; it must be an int >= 0")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"resume state {label} has no training config")
    groups = meta.get("param_groups")
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"resume state {label} has no optimizer parameter groups")
    rng = tensors.get("rng/torch")
    ref = torch.get_rng_state()
    if rng is None or rng.dtype != ref.dtype or rng.shape != ref.shape:
        raise CheckpointError(f"resume state {label} has no valid RNG state (rng/torch: "
                              f"{None if rng is None else (str(rng.dtype), list(rng.shape))})")
    for prefix in ("model/", "ema/"):
        if not any(k.startswith(prefix) for k in tensors):
            raise CheckpointError(f"resume state {label} holds no {prefix[:-1]} weights")
    for k, t in tensors.items():
        if k.startswith(("model/", "ema/")) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"resume state {label}: tensor {k!r} holds NaN or infinite values")
    try:
        return TrainConfig.from_dict(meta["config"])
    except ConfigError as exc:
        raise CheckpointError(f"resume state {label} holds an invalid config: {exc}") from None


def _config_changes(path: PathLike, saved: "TrainConfig", config: "TrainConfig") -> dict[str, list[Any]]:
    """``{option: [saved, new]}`` for the overridable options that differ; any other difference
    raises :class:`ConfigError` (one line naming them)."""
    a, b = saved.to_dict(), config.to_dict()
    changed = sorted(k for k in a if a[k] != b.get(k))
    refused = [k for k in changed if k not in RESUME_OVERRIDABLE]
    if refused:
        detail = ", ".join(f"{k}: {a[k]!r} -> {b.get(k)!r}" for k in refused[:3])
        raise ConfigError(f"resume state {str(path)!r} was trained with other options ({detail}); a resumed run "
                          f"may change only {', '.join(RESUME_OVERRIDABLE)}")
    return {k: [a[k], b.get(k)] for k in changed}


def _copy_log(src: Path, dst: Path, last_step: int) -> None:
    """Start ``dst`` with the lines of ``src`` up to ``last_step`` (``src`` is only read)."""
    keep = []
    if src.is_file():
        for line in src.read_text().splitlines():
            try:
                rec = json.loads(line)
                if int(rec.get("step", 0)) <= last_step:
                    keep.append(line)
            except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
                continue
    atomic_write_bytes(dst, ("\n".join(keep) + ("\n" if keep else "")).encode(), inputs=[src])


def train(
    config: Optional[TrainConfig],
    out: PathLike,
    resume: Optional[PathLike] = None,
    device: str = "cpu",
    progress: bool = True,
    *,
    workers: Optional[int] = None,
    time_limit: Optional[float] = None,
    compile_model: bool = False,
) -> Path:
    """Train a :class:`~injcert.model.unet.CondUNet`; returns the checkpoint path ``out``.

    One run at a time per ``out``: the run holds ``out + ".lock"`` (``flock``; released on exit,
    also by ``kill -9``) and a second run on the same ``out`` is refused with one line. See
    :func:`_train` for the arguments.
    """
    with output_lock(out, "training run") if _env_rank0() else contextlib.nullcontext():
        return _train(config, out, resume, device, progress, workers=workers, time_limit=time_limit,
                      compile_model=compile_model)


def _env_rank0() -> bool:
    """Whether this process is rank 0 of its launch (``RANK`` unset: a single process)."""
    return int(os.environ.get("RANK", "0")) == 0


def _restore_weights(config: TrainConfig, resume: Any, tensors: Any, meta: Any, model: nn.Module, ema: Any,
                     opt: Any, history: list) -> tuple[int, float, Optional[float], list]:
    """``(start step, wall time before, last validation loss, history)``: the resumed state's weights,
    or the ``init`` checkpoint's (recorded as the history), or a fresh start."""
    start, wall_before, val_loss = 0, 0.0, None
    if resume is not None:
        start, wall_before, val_loss = _load_resume(resume, tensors, meta, model, ema, opt)
    elif config.init is not None:
        history = [{"init": _load_init(config.init, model, ema)}]
    return start, wall_before, val_loss, history


def _trained_net(config: TrainConfig, model: nn.Module, dist_info: Any, dev: torch.device) -> nn.Module:
    """The module the optimiser steps (the restorer alone for its objective), under DDP on several ranks."""
    net: nn.Module = model.restorer if config.objective == "restorer" else model
    if dist_info.world > 1:
        net = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    return net


def _train(config: Optional[TrainConfig], out: PathLike, resume: Optional[PathLike], device: str, progress: bool, *,
           workers: Optional[int], time_limit: Optional[float], compile_model: bool) -> Path:
    """Train a :class:`~injcert.model.unet.CondUNet`; returns the checkpoint path ``out``.

    Arguments:
        config: the options; ``None`` takes them from the ``resume`` state. A resumed run may change
            only :data:`RESUME_OVERRIDABLE` (``steps``, ``batch_size``, ``lr``, ``log``); the changes
            are recorded in the state and checkpoint metadata (``resumed``).
        out: model checkpoint path; the training state goes to ``out + ".state"``. Every output
            (checkpoint, state, log) is checked and the folder test-written before anything runs.
        resume: a training state written by a previous run (continues at its step), or the model
            checkpoint beside it (``PATH`` → ``PATH.state``). Its step, RNG state, optimizer groups
            and weights are validated. When it was written by a run with another ``out`` (a copied
            state) and the log was not changed, the log goes to ``out + ".log.jsonl"`` (started with
            the copied run's lines up to the resumed step): a run never writes another run's log.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (under torchrun: ``cuda:LOCAL_RANK``).
        progress: show a tqdm bar (rank 0).
        workers: ``DataLoader`` processes drawing batches ahead (``None``: 0 on the CPU, up to 8 on
            a GPU). The batches do not depend on it.
        time_limit: stop (and save) at the first step boundary after this many seconds of this
            call; ``SIGTERM`` does the same. Resume with ``resume=out + ".state"``.
        compile_model: run the forward pass through :func:`torch.compile` (the saved weights are the
            same module's; the certificate never sees the compiled graph).

    Raises:
        ConfigError: bad options, a resume state trained with other options, or an indivisible batch.
        CheckpointError: an unreadable or invalid ``resume`` file.
        OutputPathError: an output that cannot be written (found before training starts).
        TrainingError: the loss became non-finite (the last checkpoint is kept).
    """
    t_start = time.perf_counter()
    out = Path(out)
    config, resume, tensors, meta, changes = _resume_config(config, out, resume)
    if _env_rank0():  # every output checked, the folder test-written, before any work
        _check_outputs(config, out, resume)
    history = _resume_history(meta, changes)

    dist_info, dev = _init_distributed(device)
    if config.batch_size % dist_info.world:
        raise ConfigError(f"batch_size={config.batch_size} is not divisible by the world size {dist_info.world}")
    local_b = config.batch_size // dist_info.world
    model, ema, opt = _build_model(config, dev)
    start, wall_before, val_loss, history = _restore_weights(config, resume, tensors, meta, model, ema, opt, history)
    del tensors

    net = _trained_net(config, model, dist_info, dev)
    loader, val_batches, sync_every = _make_loader(config, model, dist_info, dev, local_b, start, workers)
    step_fn: Any = torch.compile(net) if compile_model else net
    log_path = _prepare_log(config, dist_info, resume, start)
    run = _Run(config=config, out=out, dist_info=dist_info, dev=dev, model=model, ema=ema, opt=opt,
               step_fn=step_fn, compile_model=compile_model, val_batches=val_batches, sync_every=sync_every,
               history=history, command=_train_command(), t_start=t_start, time_limit=time_limit,
               wall_before=wall_before, val_loss=val_loss)
    run.open(progress, start, log_path)
    try:
        run.train(loader, start)
    finally:
        run.close()
    return out


# ---------------------------------------------------------------------------- setup


def _resume_config(config: Optional[TrainConfig], out: Path, resume: Optional[PathLike]
                   ) -> tuple[TrainConfig, Optional[Path], dict[str, Tensor], dict[str, Any], dict[str, list[Any]]]:
    """The run's validated config, the resolved ``resume`` path, the resume state's tensors and
    metadata (empty without ``resume``) and the changed options (``{option: [saved, new]}``)."""
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {}
    changes: dict[str, list[Any]] = {}
    path: Optional[Path] = None
    if resume is not None:
        path = resolve_resume(resume)
        tensors, meta = load_state(path)
        saved = _validated_state(path, tensors, meta)
        if config is None:
            config = saved
        config.validate()
        changes = _config_changes(path, saved, config)
        _redirect_copied_log(config, saved, meta, out, changes)
    if config is None:
        raise ConfigError("train() needs a config or a resume state")
    config.validate()
    return config, path, tensors, meta, changes


def _redirect_copied_log(config: TrainConfig, saved: TrainConfig, meta: dict[str, Any], out: Path,
                         changes: dict[str, list[Any]]) -> None:
    """A state written for another ``out`` (a copied state) whose log was not changed: log to
    ``out + ".log.jsonl"`` (started with that run's lines up to the resumed step) instead, never
    into (or truncating) the other run's log. Updates ``config.log`` and ``changes``."""
    prev_out = meta.get("out")
    if not (config.log and config.log == saved.log and isinstance(prev_out, str)
            and os.path.abspath(prev_out) != os.path.abspath(out)):
        return
    new_log = str(out) + ".log.jsonl"
    notice(f"resuming a state written for {prev_out!r}: logging to {new_log!r}, not to its log {config.log!r}")
    if _env_rank0():
        _copy_log(Path(config.log), Path(new_log), int(meta["step"]))
    changes["log"] = [config.log, new_log]
    config.log = new_log


def _check_outputs(config: TrainConfig, out: Path, resume: Optional[Path]) -> None:
    """Check every output (checkpoint, state, log) and test-write the folder (rank 0, before any work)."""
    state_path = Path(str(out) + ".state")
    init = [config.init] if resume is None and config.init is not None else []
    ins = [p for p in (resume,) if p is not None] + init
    check_output_path(out, inputs=ins, what="--out")
    check_output_path(state_path, inputs=init, what="state")  # a resume rewrites its own state
    if config.log:
        check_output_path(config.log, inputs=ins + [out, state_path], what="log")
    probe_writable(out.parent if str(out.parent) else Path("."))
    clean_orphan_temps(out.parent)


def _resume_history(meta: dict[str, Any], changes: dict[str, list[Any]]) -> list[Any]:
    """The ``resumed`` metadata: the resume state's entries, plus this resume's changes if any."""
    history = list(meta.get("resumed", [])) if isinstance(meta.get("resumed", []), list) else []
    if changes:
        history.append({"step": int(meta["step"]), "changes": changes})
    return history


def _build_model(config: TrainConfig, dev: torch.device) -> tuple[CondUNet, CondUNet, torch.optim.Adam]:
    """The model (initialised from ``torch.manual_seed(config.seed)``), its frozen EMA copy and Adam."""
    torch.manual_seed(config.seed)
    model = CondUNet.from_config(config.model).to(dev)
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    ema.eval()
    train = {id(p) for p in trainable_parameters(model, config)}
    for p in model.parameters():
        p.requires_grad_(id(p) in train)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    return model, ema, opt


def _load_init(path: str, model: CondUNet, ema: CondUNet) -> dict[str, Any]:
    """Start ``model`` and ``ema`` from the weights of the checkpoint at ``path`` (read safely, never
    unpickled); returns what the run records about it (path, weights fingerprint, and the step, batch
    size and validation loss its metadata names). A checkpoint with other model options or non-finite
    weights: one error line, before any weight is copied."""
    src = load_checkpoint(path)
    # the restorer's symmetry average is how it is evaluated, not what its weights are: it may differ
    theirs, ours = weights_config(getattr(src, "config", None)), weights_config(model.config)
    # a checkpoint without a restorer starts a model that adds one: its weights are all there but R's
    adds_restorer = isinstance(theirs, dict) and theirs.get("restorer") is None and ours.get("restorer") is not None \
        and dict(theirs, restorer=ours["restorer"]) == ours
    if theirs != ours and not adds_restorer:
        keys = sorted(k for k in set(ours) | set(theirs or {}) if (theirs or {}).get(k) != ours.get(k))
        raise ConfigError(f"init checkpoint {path!r} was built with other model options ({', '.join(keys)}); "
                          "use its training config (the checkpoint's metadata 'training_config')")
    check_finite(src, f"init checkpoint {path!r}")
    for target in (model, ema):
        result = target.load_state_dict(src.state_dict(), strict=not adds_restorer)
        if adds_restorer and (result.unexpected_keys or any(not k.startswith("restorer.") for k in result.missing_keys)):
            raise ConfigError(f"init checkpoint {path!r} does not fit this model: missing {result.missing_keys[:3]}, "
                              f"unexpected {result.unexpected_keys[:3]}")
    md = dict(getattr(src, "checkpoint_metadata", {}) or {})
    return {"path": str(path), "weights_sha256": weights_fingerprint(src), "step": md.get("step"),
            "batch_size": md.get("batch_size"), "val_loss": md.get("val_loss")}


def _load_resume(resume: Path, tensors: dict[str, Tensor], meta: dict[str, Any], model: nn.Module, ema: nn.Module,
                 opt: torch.optim.Optimizer) -> tuple[int, float, Optional[float]]:
    """Load a (validated) resume state into the model, EMA, optimizer and the torch RNG; returns
    ``(start step, wall time before, val_loss)``. A state that does not fit: one CheckpointError line."""
    try:
        model.load_state_dict(_prefixed(tensors, "model/"), strict=True)
        ema.load_state_dict(_prefixed(tensors, "ema/"), strict=True)
        _restore_optimizer(opt, tensors, meta["param_groups"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])
        raise CheckpointError(f"resume state {str(resume)!r} does not fit this model or optimizer: "
                              f"{first[1].strip() if len(first) > 1 else first[0]}") from None
    torch.set_rng_state(tensors["rng/torch"])
    return int(meta["step"]), float(meta.get("wall_time", 0.0)), meta.get("val_loss")


def _make_loader(config: TrainConfig, model: CondUNet, dist_info: _Dist, dev: torch.device, local_b: int,
                 start: int, workers: Optional[int]) -> tuple[torch.utils.data.DataLoader, list[dict[str, Tensor]], int]:
    """The ``DataLoader`` of steps ``start..steps-1`` (:class:`StepBatches`), the validation
    batches (rank 0) and ``sync_every`` (steps between loss read-backs)."""
    dataset = PatchDataset(config.images, patch_size=config.patch_size, channels=config.channels,
                           length=_DATASET_LENGTH, seed=config.seed, split="train", max_downscale=config.max_downscale,
                           dihedral=config.dihedral)
    val_batches = validation_batches(config, model.schedule, dev) if dist_info.main else []
    if workers is None:
        workers = 0 if dev.type == "cpu" else max(0, min(8, (os.cpu_count() or 1) - 2))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be an int >= 0, got {workers!r}")
    # Loss values are read back (a host sync) every `sync_every` steps, not every step: on a GPU a
    # per-step .item() stalls the launch queue. On the CPU there is nothing to overlap.
    sync_every = 1 if dev.type == "cpu" else 25
    steps_ds = StepBatches(dataset, model.schedule, config.seed, dist_info.rank, config.batch_size, local_b,
                           config.p_uncond, config.t_min, config.low_noise_fraction, config.low_noise_varsigma,
                           config.refine_fraction, config.refine_varsigma, config.corruptions,
                           config.refine_start)
    loader = torch.utils.data.DataLoader(
        steps_ds, batch_size=None, sampler=range(start, config.steps), num_workers=workers,
        pin_memory=dev.type == "cuda", worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None, persistent_workers=False)
    return loader, val_batches, sync_every


def _prepare_log(config: TrainConfig, dist_info: _Dist, resume: Optional[Path], start: int) -> Optional[Path]:
    """The log path (rank 0 with a ``log``, else ``None``): its folder made, and the lines after
    ``start`` dropped on resume, the old file removed otherwise."""
    log_path = Path(config.log) if (config.log and dist_info.main) else None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            _truncate_log(log_path, start)
        elif log_path.is_file():
            log_path.unlink()
    return log_path


def _train_command() -> str:
    """This process's command line (the checkpoint's ``train_command``)."""
    return " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv else ""


# ---------------------------------------------------------------------------- the run


@dataclass
class _Run:
    """One training run from its first step to its end: the model, EMA, optimizer and what the
    steps, the checkpoints and the log share (the validation loss, the losses not yet read back,
    the progress bar, the log file, the stop requests and the signal handlers to restore)."""

    config: TrainConfig
    out: Path
    dist_info: _Dist
    dev: torch.device
    model: CondUNet
    ema: CondUNet
    opt: torch.optim.Optimizer
    step_fn: Any
    compile_model: bool
    val_batches: list[dict[str, Tensor]]
    sync_every: int
    history: list[Any]
    command: str
    t_start: float
    time_limit: Optional[float]
    wall_before: float = 0.0
    val_loss: Optional[float] = None
    bar: Any = None
    logf: Any = None
    pending: list[tuple[dict[str, Any], Tensor]] = field(default_factory=list)
    window_start: float = 0.0
    stop_requested: list[int] = field(default_factory=list)
    old_term: Any = None
    old_int: Any = None

    @property
    def state_path(self) -> Path:
        return Path(str(self.out) + ".state")

    def open(self, progress: bool, start: int, log_path: Optional[Path]) -> None:
        """The progress bar, the log file, the throughput clock; SIGTERM/SIGINT handlers (main thread)."""
        self.bar = tqdm(total=self.config.steps, initial=start, disable=not (progress and self.dist_info.main),
                        desc="train", unit="step", dynamic_ncols=True)
        self.logf = open_append(log_path) if log_path is not None else None
        self.window_start = time.perf_counter()
        if threading.current_thread() is threading.main_thread():
            self.old_term = signal.signal(signal.SIGTERM, self._on_signal)
            self.old_int = signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM/SIGINT: stop at the next step boundary (with a checkpoint); a second Ctrl-C: now."""
        if signum == signal.SIGINT and self.stop_requested:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (the last checkpoint stays)
        self.stop_requested.append(signum)

    def train(self, loader: Any, start: int) -> None:
        """Steps ``start..steps-1`` (until a stop); an already finished state without a checkpoint gets one."""
        self.model.train()
        for step, batch in zip(range(start, self.config.steps), loader):
            lr, loss_val = self.step(step, batch)
            if self.record(step + 1, lr, loss_val):
                break
        self.flush()
        if start >= self.config.steps and not self.out.exists():
            self.save(start)

    def step(self, step: int, batch: dict[str, Tensor]) -> tuple[float, Tensor]:
        """One optimisation step (warm-up lr, clipped gradients, Adam, EMA); returns the lr and the
        loss (a device tensor, averaged over the ranks)."""
        config = self.config
        lr = learning_rate(config, step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        batch = _to_device(batch, self.dev)
        with contextlib.nullcontext() if self.compile_model else batched_normalisation(self.model):
            if self.config.objective == "restorer":
                loss = restorer_loss(self.step_fn, batch)
            else:
                loss = loss_on_batch(self.step_fn, batch, self.config.loss_sigma_data)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], config.grad_clip)
        self.opt.step()
        decay = min(config.ema_decay, (1.0 + step) / (10.0 + step))
        _ema_update(self.ema, self.model, decay)
        loss_val = loss.detach()
        if self.dist_info.world > 1:
            loss_val = loss_val.clone()
            dist.all_reduce(loss_val)
            loss_val /= self.dist_info.world
        return lr, loss_val

    def record(self, done: int, lr: float, loss_val: Tensor) -> bool:
        """After step ``done``: validate, log (read the losses back when due), checkpoint; returns
        whether to stop here."""
        config = self.config
        rec: dict[str, Any] = {"step": done, "lr": lr}
        is_ckpt = done % config.checkpoint_every == 0 or done == config.steps
        stop = self._stop_now()
        is_val = self.dist_info.main and config.val_batches > 0 and (
            done % config.val_every == 0 or done == config.steps or stop)
        if is_val or is_ckpt or stop or len(self.pending) + 1 >= self.sync_every:
            if is_val:
                self.val_loss = validation_loss(self.ema, self.val_batches, self.config.objective)
                rec["val_loss"] = self.val_loss
            self.pending.append((rec, loss_val))
            self.flush()
        else:
            self.pending.append((rec, loss_val))
        if is_ckpt or stop:
            self.save(done)
        return stop

    def _stop_now(self) -> bool:
        """A signal came or the time limit passed, on any rank (all ranks stop at the same step:
        the save gathers from all of them)."""
        stop = bool(self.stop_requested) or (
            self.time_limit is not None and time.perf_counter() - self.t_start >= self.time_limit)
        if self.dist_info.world > 1:
            flag = torch.tensor([1.0 if stop else 0.0], device=self.dev if self.dev.type == "cuda" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def flush(self) -> None:
        """Read back the pending losses (one host sync), check them, log them."""
        if not self.pending:
            return
        values = torch.stack([lv for _, lv in self.pending]).tolist()
        now = time.perf_counter()
        sps = self.config.batch_size * len(self.pending) / max(now - self.window_start, 1e-9)
        self.window_start = now
        for (rec, _), v in zip(self.pending, values):
            if not math.isfinite(v):
                self.pending.clear()
                raise TrainingError(f"training loss became {v} at step {rec['step']}; the last checkpoint is "
                                    "kept (lower lr or check the data)")
            rec["loss"] = v
            rec["samples_per_s"] = sps
            if self.logf is not None:
                self.logf.write(json.dumps(rec) + "\n")
        if self.logf is not None:
            self.logf.flush()
        self.bar.set_postfix(loss=f"{values[-1]:.4f}", samples_s=f"{sps:.1f}", refresh=False)
        self.bar.update(len(self.pending))
        self.pending.clear()

    def save(self, step: int) -> None:
        """Write the training state and the (EMA) checkpoint at ``step`` (rank 0; every rank's
        replica hash is gathered first and must agree)."""
        hashes = self._replica_hashes(step)
        if not self.dist_info.main:
            return
        config, world = self.config, self.dist_info.world
        wall = self.wall_before + time.perf_counter() - self.t_start
        st = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        st.update({f"ema/{k}": v for k, v in self.ema.state_dict().items()})
        opt_t, groups = _flatten_optimizer(self.opt)
        st.update(opt_t)
        st["rng/torch"] = torch.get_rng_state()
        save_state(self.state_path, st, {
            "step": step, "config": config.to_dict(), "param_groups": groups, "wall_time": wall,
            "val_loss": self.val_loss, "world_size": world, "out": os.path.abspath(self.out),
            "resumed": self.history,
        })
        md = {"step": step, "val_loss": self.val_loss, "train_command": self.command, "wall_time": wall,
              "seed": config.seed, "world_size": world, "batch_size": config.batch_size,
              "lipschitz_budget": self.model.config["lipschitz_budget"], "training_config": config.to_dict(),
              "resumed": self.history}
        if hashes is not None:
            md["replica_sha256"] = hashes
        save_checkpoint(self.ema, self.out, metadata=md)

    def _replica_hashes(self, step: int) -> Optional[list[Any]]:
        """Every rank's :func:`_replica_hash` (``None`` on one process); differing replicas raise."""
        if self.dist_info.world <= 1:
            return None
        hashes: list[Any] = [None] * self.dist_info.world
        dist.all_gather_object(hashes, _replica_hash(self.model))
        if len(set(hashes)) != 1:
            raise RuntimeError(f"DDP replicas diverged at step {step}: {hashes}")
        return hashes

    def close(self) -> None:
        """Drop unread losses, close the bar and the log, restore the signal handlers, and end the
        process group if this run started it."""
        self.pending.clear()
        self.bar.close()
        if self.logf is not None:
            self.logf.close()
        if self.old_term is not None:
            signal.signal(signal.SIGTERM, self.old_term)
        if self.old_int is not None:
            signal.signal(signal.SIGINT, self.old_int)
        if self.dist_info.initialised_here:
            dist.destroy_process_group()


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m injcert.tasks.train`` (the torchrun entry point): :func:`injcert.cli.train.main`."""
    # the library layer (tasks/) does not import the command-line layer at import time; only this
    # `python -m` entry point uses it
    from ..cli.train import main as cli_main  # layout: lazy (the torchrun entry point runs the CLI)

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
