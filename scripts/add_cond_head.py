"""Give a checkpoint the condition-only denoiser term: ``python scripts/add_cond_head.py IN OUT``.

The model is rebuilt with ``cond_head`` on (:meth:`~injcert.model.unet.CondUNet.condition_estimate`),
its weights copied, and the head left at its zero initialisation: the new checkpoint computes the
same function bit for bit and certifies the same bounds. It starts a fine-tuning run
(``train --init OUT``) in which the head learns what the observation says.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from injcert.errors import InjcertError  # noqa: E402
from injcert.io import load_checkpoint, save_checkpoint  # noqa: E402
from injcert.model import CondUNet  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out")
    args = ap.parse_args()
    try:
        src = load_checkpoint(args.src)
        cfg = dict(src.config, cond_head=True)
        model = CondUNet.from_config(cfg)
        missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
        if unexpected or any(not k.startswith("cond_head.") for k in missing):
            print(f"error: {args.src} does not fit (missing {missing}, unexpected {unexpected})", file=sys.stderr)
            return 2
        md = dict(getattr(src, "checkpoint_metadata", {}) or {})
        md["cond_head_from"] = str(args.src)
        save_checkpoint(model, args.out, metadata=md, inputs=[args.src])
    except InjcertError as exc:  # a missing, corrupt or untrusted checkpoint, a bad config or output path
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: cond_head on (zero), {len(missing)} new tensors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
