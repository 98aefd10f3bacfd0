"""``python -m injcert certify CKPT ...``: print the certificate table, write JSON/Markdown/figures.

Exit status: 0 every property holds; 1 some property fails (the table says which and by how much);
2 unusable input (raised as :class:`~injcert.errors.CheckpointError`, printed by the CLI as one
line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``certify`` options on ``parser``."""
    from .certificate import METHODS, CertifyConfig

    d = CertifyConfig()
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint file (.ckpt/.safetensors written by injcert)")
    parser.add_argument("--json", metavar="OUT", help="write the report as JSON (schema: injcert/certify/schema.json)")
    parser.add_argument("--markdown", metavar="OUT", help="write the report as Markdown")
    parser.add_argument("--figures", metavar="DIR", help="write figures (PNG) into DIR")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"integrator steps (default {d.steps})")
    parser.add_argument("--method", choices=list(METHODS), default=d.method,
                        help=f"integrator to certify (default {d.method})")
    parser.add_argument("--t-max", type=float, default=None, dest="t_max",
                        help="end time of the flow (default: the model schedule's t_max)")
    parser.add_argument("--device", default=d.device, help=f"device, e.g. cpu or cuda (default {d.device})")
    parser.add_argument("--samples", type=int, default=d.samples,
                        help=f"held-out patches for the empirical checks, 0 to skip them (default {d.samples})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed (default {d.seed})")
    parser.add_argument("--quiet", action="store_true", help="print only the verdict line")


def run(args: argparse.Namespace) -> int:
    """Certify ``args.checkpoint``; returns 0 (all properties hold) or 1 (some property fails).

    Raises:
        CheckpointError: unusable input (the CLI turns it into exit status 2).
        ConfigError: a bad option value (also exit status 2).
    """
    from .certificate import certify

    cert = certify(
        args.checkpoint,
        steps=args.steps,
        method=args.method,
        t_max=args.t_max,
        device=args.device,
        samples=args.samples,
        seed=args.seed,
        round_trip_study=bool(args.figures),
    )
    table = cert.table()
    if args.quiet:
        print(table.rstrip().splitlines()[-1] if not cert.soundness_failures else table, end="\n")
    else:
        print(table, end="")
    if args.json:
        cert.to_json(args.json)
    if args.markdown:
        cert.to_markdown(args.markdown)
    if args.figures:
        cert.figures(args.figures)
    sys.stdout.flush()
    return cert.exit_code
