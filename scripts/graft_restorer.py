"""Put another run's restorer into a model: ``python scripts/graft_restorer.py MODEL RESTORER OUT``.

``OUT`` is ``MODEL`` (its certified score network: the deep path, the band skip, the schedule) with the
restorer weights ``restorer.*`` of ``RESTORER`` (a checkpoint of the same architecture, e.g. a
restorer-only run that continued after ``MODEL``'s refiner started). Nothing the certificate reads
changes: the restorer is a function of the condition alone (proofs/05, item 19), so ``OUT`` certifies
the bounds ``MODEL`` does. Whether the refiner still fits the new restorer is for the benchmarks to
say; a short refiner run (``train --config configs/refiner.json --init OUT``) adapts it. Both sources
are recorded in the metadata (``restorer_from``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from injcert.cli import run_script  # noqa: E402
from injcert.errors import InputError  # noqa: E402
from injcert.io import load_checkpoint, save_checkpoint  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("restorer")
    ap.add_argument("out")
    args = ap.parse_args()
    model, donor = load_checkpoint(args.model), load_checkpoint(args.restorer)
    if getattr(model, "restorer", None) is None or getattr(donor, "restorer", None) is None:
        raise InputError("both checkpoints need a restorer (model option 'restorer')")
    if model.config.get("restorer") != donor.config.get("restorer"):
        raise InputError(f"the restorers differ in architecture: {model.config.get('restorer')} vs "
                         f"{donor.config.get('restorer')}")
    model.restorer.load_state_dict(donor.restorer.state_dict())
    md = dict(getattr(model, "checkpoint_metadata", {}) or {})
    md["restorer_from"] = {"path": str(args.restorer), "metadata": dict(getattr(donor, "checkpoint_metadata", {}) or {})}
    save_checkpoint(model, args.out, metadata=md, inputs=[args.model, args.restorer])
    print(f"wrote {args.out}: {args.model} with the restorer of {args.restorer}")
    return 0


if __name__ == "__main__":
    run_script(main)
