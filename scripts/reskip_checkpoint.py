"""Give a checkpoint's weights the spectral Gaussian-data skip: ``python scripts/reskip_checkpoint.py IN OUT``.

The scalar skip ``data_variance`` of a denoiser-parameterised model is replaced by
``spectral_bands`` (``injcert.model.bands``: binomial orders ``--orders``, variances fitted on the
training images by :func:`~injcert.model.bands.fit_band_variances`). The band skip is part of the
exact linear part, so it is not charged to the denoiser's budget: ``lipschitz_kappa`` is lowered by the
old skip's charge, which keeps the deep path's output gain — and so the function the weights
compute through it — unchanged. The result starts a fine-tuning run (``train --init OUT``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from injcert.errors import InjcertError  # noqa: E402
from injcert.io import load_checkpoint, save_checkpoint  # noqa: E402
from injcert.model import CondUNet  # noqa: E402
from injcert.model.bands import fit_band_variances  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--orders", type=int, nargs="+", default=[1, 4, 16, 64])
    args = ap.parse_args()
    try:
        return _reskip(args)
    except InjcertError as exc:  # a missing, corrupt or untrusted checkpoint, a bad output path: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _reskip(args: argparse.Namespace) -> int:
    src = load_checkpoint(args.src)
    cfg = src.config
    if cfg.get("parameterization") != "denoiser" or cfg.get("data_variance") is None:
        print(f"error: {args.src} is not a denoiser-parameterised model with a scalar data_variance", file=sys.stderr)
        return 2
    cfg["lipschitz_kappa"] = cfg["lipschitz_kappa"] - src.wiener_max
    cfg["data_variance"] = None
    cfg["spectral_bands"] = {"orders": list(args.orders), "variances": fit_band_variances(args.orders)}
    model = CondUNet.from_config(cfg)
    model.load_state_dict(src.state_dict(), strict=True)
    if float(model.gain) != float(src.gain):
        print(f"error: the deep path's gain changed ({float(src.gain)!r} -> {float(model.gain)!r})", file=sys.stderr)
        return 1
    md = dict(getattr(src, "checkpoint_metadata", {}) or {})
    md["reskipped_from"] = str(args.src)
    save_checkpoint(model, args.out, metadata=md, inputs=[args.src])
    print(f"wrote {args.out}: spectral_bands {cfg['spectral_bands']}, lipschitz_kappa {cfg['lipschitz_kappa']!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
