"""``train``: the command line of :func:`injcert.tasks.train.train` (its options, the config they
build, the one-line summary). ``python -m injcert.tasks.train`` (the torchrun entry point) runs
:func:`main` here."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Optional

from .._progress import summary
from ..errors import ConfigError
from ..io import load_state, read_checkpoint_header, read_json_file
from ..tasks.train import TrainConfig, _env_rank0, _validated_state, resolve_resume, train
from ..threads import apply_threads
from . import HelpFormatter, _is_environment_error, _one_line, add_threads_argument

__all__ = ["add_train_arguments", "run_train", "main"]


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``train``'s options on ``parser``."""
    d = TrainConfig()
    parser.add_argument("--config", metavar="FILE.json",
                        help="training config (TrainConfig fields; see configs/; default: the built-in defaults)")
    parser.add_argument("--steps", type=int, help=f"total steps, >= 1 (default: the config's, built-in {d.steps})")
    parser.add_argument("--batch-size", type=int, help=f"global batch size (default: the config's, built-in {d.batch_size})")
    parser.add_argument("--lr", type=float, help=f"learning rate (default: the config's, built-in {d.lr:g})")
    parser.add_argument("--seed", type=int, help=f"random seed (default: the config's, built-in {d.seed})")
    parser.add_argument("--log", metavar="FILE.jsonl", help="JSON-lines training log (default: none)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--out", metavar="CKPT",
                        help="model checkpoint to write (the training state goes to CKPT.state); "
                        "default: the --resume path without .state, else model.ckpt")
    parser.add_argument("--resume", metavar="CKPT.state", help="continue from a training state")
    parser.add_argument("--init", metavar="CKPT",
                        help="start from this model checkpoint's weights (fresh optimizer, step 0; its model "
                             "options must be the config's); default: the config's init, else random weights")
    parser.add_argument("--model-from-init", action="store_true",
                        help="with --init: take the model options from that checkpoint instead of the config "
                             "(fine-tune any checkpoint with a training recipe)")
    parser.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true",
                        help="no progress bar; print only the one-line summary")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="DataLoader processes drawing batches ahead (default: 0 on cpu, up to 8 on cuda)")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="stop and save after this many seconds (resume with --resume OUT.state)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward pass (GPU speed-up)")
    parser.add_argument("--images", nargs="+", metavar="DIR_OR_FILE",
                        help="train on these images: folders are searched recursively for PNG/JPEG files, unreadable "
                             "ones skipped with one line each; the list is recorded in the checkpoint "
                             "(default: the config's images, else the bundled training images)")


def run_train(args: argparse.Namespace) -> int:
    """Run ``train`` from parsed arguments; returns the exit status (0)."""
    cfg: dict[str, Any] = {}
    if args.resume:  # the model path that --out printed works as well as PATH.state
        args.resume = str(resolve_resume(args.resume))
    if args.config:
        cfg = read_json_file(args.config, "config")
    elif args.resume:
        tensors, meta = load_state(args.resume)
        cfg = dict(_validated_state(args.resume, tensors, meta).to_dict())
        del tensors
    for key, val in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                     ("seed", args.seed), ("log", args.log), ("init", args.init)):
        if val is not None:
            cfg[key] = val
    if getattr(args, "model_from_init", False):
        if not cfg.get("init") or args.resume:
            raise ConfigError("--model-from-init needs --init (or a config with 'init') and no --resume")
        cfg["model"] = read_checkpoint_header(cfg["init"])["model_config"]
    if getattr(args, "images", None):
        from ..data.images import image_files

        cfg["images"] = image_files(args.images, min_side=int(cfg.get("patch_size", TrainConfig.patch_size)))
    config = TrainConfig.from_dict(cfg)
    if config.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {config.steps} (0 steps would write an untrained checkpoint)")
    out = args.out
    if out is None:
        out = args.resume[: -len(".state")] if args.resume and args.resume.endswith(".state") else "model.ckpt"
    if args.time_limit is not None and not (math.isfinite(args.time_limit) and args.time_limit > 0):
        raise ConfigError(f"--time-limit must be a number of seconds > 0, got {args.time_limit!r}")
    path = train(config, out, resume=args.resume, device=args.device, progress=not args.no_progress,
                 workers=args.workers, time_limit=args.time_limit, compile_model=args.compile)
    if _env_rank0():
        _, meta = load_state(str(path) + ".state")
        val = meta.get("val_loss")
        val_s = "n/a" if val is None else f"{val:.4f}"
        summary("train", f"wrote {path} (step {meta['step']}/{config.steps}, validation loss {val_s}, "
                f"{meta.get('wall_time', 0.0):.0f} s of training)")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m injcert.tasks.train`` (also the torchrun entry point): ``train``'s options,
    ``--threads``, and the command-line contract (exit 2 and one line for an unusable input)."""
    parser = argparse.ArgumentParser(prog="python -m injcert.tasks.train", description="train a CondUNet",
                                     formatter_class=HelpFormatter)
    add_train_arguments(parser)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    try:
        apply_threads(args.threads)
        return run_train(args)
    except BaseException as exc:  # the command-line contract of injcert.cli: exit 2 and one line
        if isinstance(exc, KeyboardInterrupt) or not _is_environment_error(exc):
            raise
        print(f"injcert train: error: {_one_line(exc)}", file=sys.stderr)
        return 2
