"""Give the band skip the restorer's residual: ``python scripts/residual_bands.py IN OUT [--config C --config-out C2]``.

``OUT`` is ``IN`` with ``spectral_bands.residual_variances`` fitted by
:func:`~injcert.model.bands.fit_residual_band_variances`: the spectrum of $x_0 - R(c)$ over the
training images and corruptions. The exact linear part around the anchor,
$R + K_t(c)(x_t - \\alpha_t R)$, then uses the image's band skip only inside the condition's holes and
the residual's elsewhere (:meth:`~injcert.model.CondUNet.mixed_band_skip`): it trusts the noisy state
only as far as the restorer's error leaves room, where with the image's variances alone it returns
most of the noise at mid noise levels, far below $R$ itself. The bounds keep their form
(``proofs/05``, item 19); the deep path was trained around the old skip, so ``OUT`` starts a refiner
run (``train --config C2 --init OUT``). ``--config C --config-out C2`` writes the training config ``C``
with ``OUT``'s model options, so that the run accepts ``OUT`` as its init.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from injcert._atomic import atomic_write_bytes  # noqa: E402
from injcert.cli import run_script  # noqa: E402
from injcert.errors import InputError  # noqa: E402
from injcert.io import load_checkpoint, save_checkpoint  # noqa: E402
from injcert.model import CondUNet  # noqa: E402
from injcert.model.bands import fit_residual_band_variances  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=64, help="crop size of the fit (default 64)")
    ap.add_argument("--config", help="a training config to rewrite with OUT's model options")
    ap.add_argument("--config-out", help="where to write it (with --config)")
    args = ap.parse_args()
    if (args.config is None) != (args.config_out is None):
        raise InputError("--config and --config-out go together")
    if args.size < 8:
        raise InputError(f"--size must be at least 8 (pixels of the fitted crops), got {args.size}")
    train_cfg = None
    if args.config is not None:
        try:
            train_cfg = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the training config {args.config!r}: {exc}") from None
        if not isinstance(train_cfg, dict):
            raise InputError(f"the training config {args.config!r} is not a JSON object")
    src = load_checkpoint(args.src)
    if getattr(src, "restorer", None) is None or src.bands is None:
        raise InputError(f"{args.src} needs a restorer and spectral_bands")
    cfg = dict(src.config)
    old = list(cfg["spectral_bands"]["variances"])
    new = fit_residual_band_variances(src.eval().anchor, cfg["spectral_bands"]["orders"], size=args.size)
    cfg["spectral_bands"] = {"orders": list(cfg["spectral_bands"]["orders"]), "variances": old,
                             "residual_variances": new}
    model = CondUNet.from_config(cfg)
    model.load_state_dict(src.state_dict(), strict=True)
    md = dict(getattr(src, "checkpoint_metadata", {}) or {})
    md["residual_bands_from"] = {"path": str(args.src), "size": args.size}
    save_checkpoint(model, args.out, metadata=md, inputs=[args.src])
    if train_cfg is not None:
        train_cfg["model"] = cfg
        atomic_write_bytes(args.config_out, (json.dumps(train_cfg, indent=2) + "\n").encode())
    print(f"wrote {args.out}: band variances {', '.join(f'{v:.4g}' for v in old)}; the restorer's residual "
          f"{', '.join(f'{v:.4g}' for v in new)}; deep-path gain {float(src.gain):.6g} -> {float(model.gain):.6g}")
    return 0


if __name__ == "__main__":
    run_script(main)
