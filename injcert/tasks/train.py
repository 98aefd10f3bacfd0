r"""Training: Adam + EMA on bundled-image patches, resumable bit for bit, DDP under ``torchrun``.

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

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InjcertError
from ..io import load_state, save_checkpoint, save_state
from ..model.objective import T_MIN, denoising_loss
from ..model.unet import DEFAULT_MODEL_CONFIG, CondUNet

__all__ = ["TrainConfig", "train", "add_train_arguments", "run_train", "step_seed", "VAL_SEED"]

PathLike = Union[str, "os.PathLike[str]"]

#: Seed of the held-out validation patches and their noise (fixed: val losses are comparable).
VAL_SEED: int = 20240917
_DATASET_LENGTH = 2**62


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
        lr: Adam learning rate (linear warm-up over ``warmup_steps``, then constant).
        seed: seed of the weights' initialisation and of every random draw.
        patch_size: side of the square training patches (pixels).
        channels: image channels (1 or 3); the model's ``in_channels``.
        model: :class:`~injcert.model.unet.CondUNet` options (missing ones take defaults).
        ema_decay: EMA decay $\\beta$ (the effective decay is $\\min(\\beta, (1+k)/(10+k))$).
        checkpoint_every: steps between checkpoints (and one at the end).
        val_every: steps between validation losses (and one at the end).
        val_batches: held-out batches (of ``batch_size`` patches) per validation.
        log: JSON-lines log path (``None``: none).
        p_uncond: fraction of unconditional examples.
        t_min: smallest training time.
        grad_clip: gradient-norm clip (0: none).
        warmup_steps: learning-rate warm-up steps (0: none).
        images: training image names (``None``: all of ``TRAIN_IMAGES``).
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
    grad_clip: float = 1.0
    warmup_steps: int = 50
    images: Optional[list] = None

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

        def integer(name: str, minimum: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ConfigError(f"training option {name} must be an int >= {minimum}, got {v!r}")

        def number(name: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
            v = getattr(self, name)
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
            if not ok:
                lb, ub = ("(" if lo_open else "["), (")" if hi_open else "]")
                raise ConfigError(f"training option {name} must lie in {lb}{lo}, {hi}{ub}, got {v!r}")

        integer("steps", 0)
        integer("batch_size", 1)
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
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ConfigError(f"training option channels must be 1 or 3, got {self.channels!r}")
        if self.log is not None and not isinstance(self.log, str):
            raise ConfigError(f"training option log must be a path string or null, got {self.log!r}")
        if self.images is not None and (not isinstance(self.images, list) or not self.images):
            raise ConfigError(f"training option images must be a non-empty list of names or null, got {self.images!r}")
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
        self.model = model


# ============================================================================ distributed


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return _Dist(), dev
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    is_cuda = torch.device(device).type == "cuda"
    if is_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device)
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if is_cuda else "gloo")
        here = True
    return _Dist(dist.get_rank(), dist.get_world_size(), local, here), dev


# ============================================================================ state


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if not isinstance(val, Tensor):
                val = torch.tensor(val)
            tensors[f"optim/{idx}/{key}"] = val.detach().clone()
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, groups


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for name, val in tensors.items():
        if not name.startswith("optim/"):
            continue
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = val
    fixed = []
    for g in groups:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        fixed.append(g)
    opt.load_state_dict({"state": state, "param_groups": fixed})


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def _replica_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


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
    from ..io import atomic_write_bytes

    atomic_write_bytes(path, ("\n".join(keep) + ("\n" if keep else "")).encode())


# ============================================================================ training


def _batch(dataset: Any, start: int, n: int, device: torch.device) -> Tensor:
    return torch.stack([dataset[start + j] for j in range(n)]).to(device)


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.mul_(decay).add_(pm.detach(), alpha=1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


@torch.no_grad()
def validation_loss(model: nn.Module, batches: list[Tensor], p_uncond: float, t_min: float) -> float:
    """Mean denoising loss on fixed held-out batches with fixed noise (deterministic)."""
    if not batches:
        return float("nan")
    was = model.training
    model.eval()
    total = 0.0
    for i, x0 in enumerate(batches):
        g = torch.Generator().manual_seed(_mix(VAL_SEED, i))
        total += float(denoising_loss(model, x0, g, p_uncond=p_uncond, t_min=t_min))
    model.train(was)
    return total / len(batches)


def train(
    config: Optional[TrainConfig],
    out: PathLike,
    resume: Optional[PathLike] = None,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Train a :class:`~injcert.model.unet.CondUNet`; returns the checkpoint path ``out``.

    Arguments:
        config: the options; ``None`` takes them from the ``resume`` state.
        out: model checkpoint path; the training state goes to ``out + ".state"``.
        resume: a training state written by a previous run (continues at its step).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (under torchrun: ``cuda:LOCAL_RANK``).
        progress: show a tqdm bar (rank 0).

    Raises:
        ConfigError: bad options, a resume state with another model, or an indivisible batch.
        CheckpointError: an unreadable ``resume`` file.
    """
    from tqdm.auto import tqdm

    from ..data.images import PatchDataset

    t_start = time.perf_counter()
    out = Path(out)
    state_path = Path(str(out) + ".state")
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {}
    if resume is not None:
        tensors, meta = load_state(resume)
        saved = TrainConfig.from_dict(meta["config"])
        if config is None:
            config = saved
        elif config.model != saved.model:
            raise ConfigError(f"resume state {str(resume)!r} holds a model with another config; use the same model options")
    if config is None:
        raise ConfigError("train() needs a config or a resume state")
    config.validate()

    dist_info, dev = _init_distributed(device)
    if config.batch_size % dist_info.world:
        raise ConfigError(f"batch_size={config.batch_size} is not divisible by the world size {dist_info.world}")
    local_b = config.batch_size // dist_info.world

    torch.manual_seed(config.seed)
    model = CondUNet.from_config(config.model).to(dev)
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    ema.eval()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    start = 0
    wall_before = 0.0
    val_loss: Optional[float] = None
    if resume is not None:
        model.load_state_dict(_prefixed(tensors, "model/"), strict=True)
        ema.load_state_dict(_prefixed(tensors, "ema/"), strict=True)
        _restore_optimizer(opt, tensors, meta["param_groups"])
        if "rng/torch" in tensors:
            torch.set_rng_state(tensors["rng/torch"])
        start = int(meta["step"])
        wall_before = float(meta.get("wall_time", 0.0))
        val_loss = meta.get("val_loss")
    del tensors

    net: nn.Module = model
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    dataset = PatchDataset(config.images, patch_size=config.patch_size, channels=config.channels,
                           length=_DATASET_LENGTH, seed=config.seed, split="train")
    val_batches: list[Tensor] = []
    if dist_info.main and config.val_batches > 0:
        vds = PatchDataset(None, patch_size=config.patch_size, channels=config.channels,
                           length=config.val_batches * config.batch_size, seed=VAL_SEED, split="heldout")
        val_batches = [_batch(vds, i * config.batch_size, config.batch_size, dev) for i in range(config.val_batches)]

    log_path = Path(config.log) if (config.log and dist_info.main) else None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            _truncate_log(log_path, start)
        elif log_path.exists():
            log_path.unlink()
    command = " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv else ""

    def save(step: int) -> None:
        hashes = None
        if dist_info.world > 1:
            import torch.distributed as dist

            hashes = [None] * dist_info.world
            dist.all_gather_object(hashes, _replica_hash(model))
            if len(set(hashes)) != 1:
                raise RuntimeError(f"DDP replicas diverged at step {step}: {hashes}")
        if not dist_info.main:
            return
        wall = wall_before + time.perf_counter() - t_start
        st = {f"model/{k}": v for k, v in model.state_dict().items()}
        st.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
        opt_t, groups = _flatten_optimizer(opt)
        st.update(opt_t)
        st["rng/torch"] = torch.get_rng_state()
        save_state(state_path, st, {
            "step": step, "config": config.to_dict(), "param_groups": groups, "wall_time": wall,
            "val_loss": val_loss, "world_size": dist_info.world,
        })
        md = {"step": step, "val_loss": val_loss, "train_command": command, "wall_time": wall,
              "seed": config.seed, "world_size": dist_info.world, "batch_size": config.batch_size,
              "lipschitz_budget": model.config["lipschitz_budget"], "training_config": config.to_dict()}
        if hashes is not None:
            md["replica_sha256"] = hashes
        save_checkpoint(ema, out, metadata=md)

    bar = tqdm(total=config.steps, initial=start, disable=not (progress and dist_info.main),
               desc="train", unit="step", dynamic_ncols=True)
    logf = open(log_path, "a") if log_path is not None else None
    sps_smooth: Optional[float] = None
    try:
        model.train()
        for step in range(start, config.steps):
            t0 = time.perf_counter()
            lr = config.lr * min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else config.lr
            for g in opt.param_groups:
                g["lr"] = lr
            x0 = _batch(dataset, step * config.batch_size + dist_info.rank * local_b, local_b, dev)
            gen = torch.Generator().manual_seed(step_seed(config.seed, step, dist_info.rank))
            loss = denoising_loss(net, x0, gen, p_uncond=config.p_uncond, t_min=config.t_min)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            decay = min(config.ema_decay, (1.0 + step) / (10.0 + step))
            _ema_update(ema, model, decay)
            loss_val = loss.detach()
            if dist_info.world > 1:
                import torch.distributed as dist

                loss_val = loss_val.clone()
                dist.all_reduce(loss_val)
                loss_val /= dist_info.world
            loss_f = float(loss_val)
            if not math.isfinite(loss_f):
                raise FloatingPointError(f"training loss became {loss_f} at step {step + 1}")
            done = step + 1
            dt = time.perf_counter() - t0
            sps = config.batch_size / max(dt, 1e-9)
            sps_smooth = sps if sps_smooth is None else 0.9 * sps_smooth + 0.1 * sps
            rec: dict[str, Any] = {"step": done, "loss": loss_f, "lr": lr, "samples_per_s": sps}
            if dist_info.main and config.val_batches > 0 and (done % config.val_every == 0 or done == config.steps):
                val_loss = validation_loss(ema, val_batches, config.p_uncond, config.t_min)
                rec["val_loss"] = val_loss
            if done % config.checkpoint_every == 0 or done == config.steps:
                save(done)
            if logf is not None:
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
            bar.set_postfix(loss=f"{loss_f:.4f}", samples_s=f"{sps_smooth:.1f}", refresh=False)
            bar.update(1)
        if start >= config.steps and not out.exists():
            save(start)
    finally:
        bar.close()
        if logf is not None:
            logf.close()
        if dist_info.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()
    return out


# ============================================================================ command line


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``train``'s options on ``parser``."""
    parser.add_argument("--config", metavar="FILE.json", help="training config (TrainConfig fields; see configs/)")
    parser.add_argument("--steps", type=int, help="total steps (overrides the config)")
    parser.add_argument("--batch-size", type=int, help="global batch size")
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--log", metavar="FILE.jsonl", help="JSON-lines training log")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--out", metavar="PATH", help="model checkpoint (the state goes to PATH.state); "
                        "default: the --resume path without .state, else model.safetensors")
    parser.add_argument("--resume", metavar="PATH.state", help="continue from a training state")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> int:
    """Run ``train`` from parsed arguments; returns the exit status (0)."""
    cfg: dict[str, Any] = {}
    if args.config:
        try:
            cfg = json.loads(Path(args.config).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {args.config!r}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {args.config!r}: {str(exc).splitlines()[0]}") from None
        if not isinstance(cfg, dict):
            raise ConfigError(f"config {args.config!r} must hold a JSON object, got {type(cfg).__name__}")
    elif args.resume:
        cfg = load_state(args.resume)[1]["config"]
    for key, val in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                     ("seed", args.seed), ("log", args.log)):
        if val is not None:
            cfg[key] = val
    config = TrainConfig.from_dict(cfg)
    out = args.out
    if out is None:
        out = args.resume[: -len(".state")] if args.resume and args.resume.endswith(".state") else "model.safetensors"
    path = train(config, out, resume=args.resume, device=args.device, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {path}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m injcert.tasks.train`` (also the torchrun entry point)."""
    parser = argparse.ArgumentParser(prog="python -m injcert.tasks.train", description="train a CondUNet")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except InjcertError as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"injcert train: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
