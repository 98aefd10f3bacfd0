"""``python -m injcert certify [CKPT] ...``: print the certificate table, write JSON/Markdown/figures.

The checkpoint is the positional ``CKPT`` or ``--model`` (as in every command; ``--checkpoint`` is
an alias), by default the shipped model. A progress bar over the phases goes to stderr; the
command ends with one line ``injcert certify: VERDICT: ... ; certified L = ...``. ``--quiet``
prints only that line (no bar, no table; the table still appears on a soundness failure).

Exit status: 0 every property holds; 1 some property fails (the table says which and by how much);
2 unusable input (raised as :class:`~injcert.errors.CheckpointError`, printed by the CLI as one
line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile

from .._progress import summary
from ..errors import ConfigError
from ..errors import CheckpointError
from ..model.protocol import ScoreModel
from .certificate import certify
from .foreign import foreign_hint, load_exported, load_factory
from .result import METHODS, Certificate, CertifyConfig

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``certify`` options on ``parser``."""
    d = CertifyConfig()
    parser.add_argument("checkpoint", metavar="CKPT", nargs="?", default=None,
                        help="checkpoint file (.ckpt/.safetensors written by injcert); the same as --model")
    parser.add_argument("--model", "--checkpoint", dest="model", default=None, metavar="CKPT",
                        help="checkpoint, as in every command (default: the shipped model injcert/assets/default.ckpt)")
    parser.add_argument("--json", metavar="OUT", help="write the report as JSON (schema: injcert/certify/schema.json)")
    parser.add_argument("--markdown", metavar="OUT", help="write the report as Markdown")
    parser.add_argument("--figures", metavar="DIR", help="write figures (PNG) into DIR")
    parser.add_argument("--steps", type=int, default=d.steps, help="integrator steps")
    parser.add_argument("--method", choices=list(METHODS), default=d.method, help="integrator to certify")
    parser.add_argument("--t-max", type=float, default=None, dest="t_max",
                        help="end time of the flow (default: the model schedule's t_max)")
    parser.add_argument("--device", default=d.device, help="torch device: cpu, cuda or cuda:N")
    parser.add_argument("--samples", type=int, default=d.samples,
                        help="held-out patches for the empirical checks, 0 to skip them")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed")
    parser.add_argument("--schedule", default=None, metavar="NAME",
                        help="noise schedule of a foreign network (.pt2 or --factory): cosine or linear")
    parser.add_argument("--parameterization", choices=["eps", "denoiser", "v"], default=None,
                        help="what a foreign network predicts (.pt2 or --factory; default for --factory: eps)")
    parser.add_argument("--factory", default=None, metavar="MODULE:CALLABLE",
                        help="certify the network CALLABLE() of your module (imported from the current directory/"
                             "PYTHONPATH: this runs your code) returning an nn.Module or an injcert.ScoreModel")
    parser.add_argument("--weights", default=None, metavar="FILE.safetensors",
                        help="with --factory: load these weights (safetensors) into the network")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar and no table: print only the one-line summary (verdict and L); "
                             "the full table is still printed on a soundness failure")


def run(args: argparse.Namespace) -> int:
    """Certify ``args.checkpoint``; returns 0 (all properties hold) or 1 (some property fails).

    Raises:
        CheckpointError: unusable input (the CLI turns it into exit status 2).
        ConfigError: a bad option value (also exit status 2).
    """
    path = args.checkpoint
    model_opt = getattr(args, "model", None)
    if path is not None and model_opt is not None and path != model_opt:
        raise ConfigError(f"two checkpoints given: {path!r} and --model {model_opt!r}")
    path = path if path is not None else model_opt
    target = foreign_model(args, path)
    if target is None:
        if path is None:
            from .. import DEFAULT_CHECKPOINT  # layout: lazy (the package root sits above certify; read at call time)

            path = str(DEFAULT_CHECKPOINT)
        hint = foreign_hint(path) if os.path.exists(path) and not _is_injcert_file(path) else None
        if hint is not None:
            raise CheckpointError(hint)
        target = path
    cert = certify(
        target,
        steps=args.steps,
        method=args.method,
        t_max=args.t_max,
        device=args.device,
        samples=args.samples,
        seed=args.seed,
        round_trip_study=bool(args.figures),
        progress=not args.quiet,
    )
    if not args.quiet or cert.soundness_failures:
        print(cert.table(), end="")
    wrote = []
    if args.json:
        cert.to_json(args.json)
        wrote.append(str(args.json))
    if args.markdown:
        cert.to_markdown(args.markdown)
        wrote.append(str(args.markdown))
    if args.figures:
        figs = cert.figures(args.figures)
        wrote.append(f"{len(figs)} figures in {args.figures}")
    summary("certify", _summary_text(cert, wrote))
    sys.stdout.flush()
    return cert.exit_code


def _is_injcert_file(path: str) -> bool:
    """Whether ``path`` starts like a safetensors file with injcert's metadata (read the usual way)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return True  # let load_checkpoint report it
    return b"injcert" in head


def _is_pt2(path: str) -> bool:
    if path.endswith(".pt2"):
        return True
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("archive_format") or "/models/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def foreign_model(args: argparse.Namespace, path: "str | None") -> "ScoreModel | None":
    """The ScoreModel of ``--factory`` or of a ``.pt2`` program; ``None`` for an injcert checkpoint."""
    factory, schedule, par = getattr(args, "factory", None), getattr(args, "schedule", None), \
        getattr(args, "parameterization", None)
    if factory is not None:
        if path is not None:
            raise ConfigError(f"give either a checkpoint ({path!r}) or --factory, not both")
        net = load_factory(factory, getattr(args, "weights", None))
        if isinstance(net, ScoreModel):
            if schedule is not None or par is not None:
                raise ConfigError("--factory returned a ScoreModel, which has its schedule and parameterization: "
                                  "drop --schedule/--parameterization")
            return net
        return ScoreModel(net, schedule or "cosine", par or "eps")
    if getattr(args, "weights", None) is not None:
        raise ConfigError("--weights needs --factory MODULE:CALLABLE")
    if path is not None and os.path.isfile(path) and _is_pt2(path):
        if schedule is None or par is None:
            raise ConfigError(f"{path!r} is a torch.export program: pass --schedule NAME and "
                              "--parameterization eps|denoiser|v (the file does not say them)")
        net, channels = load_exported(path)
        return ScoreModel(net, schedule, par, in_channels=channels)
    if path is not None and not os.path.exists(path):
        return None  # the checkpoint loader says it is not found
    if schedule is not None or par is not None:
        raise ConfigError("--schedule/--parameterization are for a .pt2 program or --factory; an injcert "
                          "checkpoint has its own")
    return None


def _summary_text(cert: Certificate, wrote: list) -> str:
    """``VERDICT: PASS (14 properties) in 22.1 s; L = 369.5 (budget 400); wrote a, b``."""
    n = len(cert.properties)
    total = cert.timings.get("total")
    text = f"VERDICT: {cert.verdict} ({n} properties" + (f", failed: {', '.join(p.name for p in cert.failures)}"
                                                          if cert.failures else "") + ")"
    if total is not None:
        text += f" in {total:.1f} s"
    try:
        lip = cert["lipschitz_bound"]
        if lip.value is not None:
            text += f"; certified L = {lip.value:.4g}" + (f" (budget {lip.bound:.4g})" if lip.bound is not None else "")
    except KeyError:
        pass
    unproven = [p.name for p in cert.properties if p.summary.startswith("NOT CERTIFIED")]
    if unproven:
        text += "; NOT CERTIFIED: " + ", ".join(unproven)
    if cert.soundness_failures:
        text += "; SOUNDNESS FAILURE (see the table)"
    return text + ("; wrote " + ", ".join(wrote) if wrote else "")
