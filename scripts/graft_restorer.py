"""Put another run's restorer into a model: ``python scripts/graft_restorer.py MODEL RESTORER OUT [--average OTHER] [--symmetries 8]``.

``OUT`` is ``MODEL`` (its certified score network: the deep path, the band skip, the schedule) with the
restorer weights ``restorer.*`` of ``RESTORER`` (e.g. a restorer-only run that continued after
``MODEL``'s refiner started). A restorer of another architecture (width, levels) is taken with its
options: ``OUT``'s model options are ``MODEL``'s with ``RESTORER``'s restorer (a refiner run then
needs ``train --model-from-init``). Nothing the certificate reads
changes: the restorer is a function of the condition alone (proofs/05, item 19), so ``OUT`` certifies
the bounds ``MODEL`` does. Whether the refiner still fits the new restorer is for the benchmarks to
say; a short refiner run (``train --config configs/refiner.json --init OUT``) adapts it. Both sources
are recorded in the metadata (``restorer_from``).

``--average OTHER [--weight W]`` grafts the average $(1 - W)\,\theta_{RESTORER} + W\,\theta_{OTHER}$
of two restorers' weights (default $W = 1/2$): for a run fine-tuned from the other (the same
start, so the two lie in one basin), the average keeps much of what each learned ("model soups",
Wortsman et al., ICML 2022). Integer buffers come from ``OTHER``.

``--symmetries 8`` makes ``OUT``'s restorer the average of the grafted network over the eight
symmetries of the square (the model option ``restorer.symmetries``; 1: the network alone); without
it ``OUT`` keeps ``MODEL``'s setting. The weights are the same either way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from injcert.cli import run_script  # noqa: E402
from injcert.errors import InputError  # noqa: E402
from injcert.io import load_checkpoint, save_checkpoint  # noqa: E402
from injcert.model.restorer import SYMMETRIES  # noqa: E402
from injcert.model.unet import CondUNet, weights_config  # noqa: E402


def _architecture(model) -> dict:
    """The restorer's options that fix its weights (not how it is evaluated)."""
    return weights_config(model.config)["restorer"]


def _rebuilt(model, restorer: dict):
    """``model`` rebuilt with the restorer options ``restorer``: every weight outside the restorer is
    ``model``'s; the restorer's are left for the caller to load."""
    cfg = model.config
    cfg["restorer"] = restorer
    out = CondUNet.from_config(cfg)
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith("restorer.")}
    result = out.load_state_dict(kept, strict=False)
    if result.unexpected_keys or any(not k.startswith("restorer.") for k in result.missing_keys):
        raise InputError(f"the model does not fit its own options with another restorer: {result.missing_keys[:3]}")
    out.checkpoint_metadata = getattr(model, "checkpoint_metadata", {})
    return out


def _options(arch: dict, symmetries: int) -> dict:
    """A restorer's model options: its architecture, and ``symmetries`` where it is not 1."""
    return dict(arch, symmetries=symmetries) if symmetries != 1 else dict(arch)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("restorer")
    ap.add_argument("out")
    ap.add_argument("--average", metavar="OTHER", help="a second restorer checkpoint to average the weights with")
    ap.add_argument("--weight", type=float, default=0.5, help="OTHER's share of the average (default 0.5)")
    ap.add_argument("--symmetries", type=int,
                    help="evaluate OUT's restorer as the network alone (1) or its average over the square's eight "
                         "symmetries (8); default: MODEL's setting")
    args = ap.parse_args()
    if not 0.0 <= args.weight <= 1.0:
        raise InputError(f"--weight must lie in [0, 1], got {args.weight!r}")
    if args.symmetries is not None and args.symmetries not in SYMMETRIES:
        raise InputError(f"--symmetries must be one of {list(SYMMETRIES)}, got {args.symmetries!r}")
    model, donor = load_checkpoint(args.model), load_checkpoint(args.restorer)
    if getattr(model, "restorer", None) is None or getattr(donor, "restorer", None) is None:
        raise InputError("both checkpoints need a restorer (model option 'restorer')")
    # the donor's restorer comes with its architecture; OUT's symmetry setting is asked for or MODEL's
    options = _options(_architecture(donor), model.restorer.symmetries if args.symmetries is None else args.symmetries)
    if options != model.config["restorer"]:
        model = _rebuilt(model, options)
    state, inputs = donor.restorer.state_dict(), [args.model, args.restorer]
    md = dict(getattr(model, "checkpoint_metadata", {}) or {})
    md["restorer_from"] = {"path": str(args.restorer), "metadata": dict(getattr(donor, "checkpoint_metadata", {}) or {})}
    if args.average:
        other = load_checkpoint(args.average)
        if getattr(other, "restorer", None) is None or _architecture(other) != _architecture(donor):
            raise InputError(f"{args.average!r} has no restorer of the same architecture to average with")
        theirs, w = other.restorer.state_dict(), float(args.weight)
        state = {k: (1 - w) * v + w * theirs[k] if v.is_floating_point() else theirs[k] for k, v in state.items()}
        md["restorer_from"]["averaged_with"] = {"path": str(args.average), "weight": w,
                                                "metadata": dict(getattr(other, "checkpoint_metadata", {}) or {})}
        inputs.append(args.average)
    model.restorer.load_state_dict(state)
    save_checkpoint(model, args.out, metadata=md, inputs=inputs)
    what = f"the average of the restorers of {args.restorer} and {args.average} (weight {args.weight:g})" \
        if args.average else f"the restorer of {args.restorer}"
    if args.symmetries is not None:
        what += f", evaluated with symmetries={args.symmetries}"
    print(f"wrote {args.out}: {args.model} with {what}")
    return 0


if __name__ == "__main__":
    run_script(main)
