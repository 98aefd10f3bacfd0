"""Time per phase of ``injcert.certify`` (asv suite; ``python benchmarks/bench_certify.py`` prints a table).

asv: ``asv run --python=same --quick --bench bench_certify``. Each ``time_*`` method times one phase
of the certificate on a small untrained ``CondUNet`` (the phases are what ``Certificate.timings``
reports); ``track_*`` methods record the certified numbers.
"""

from __future__ import annotations

import sys
import time

import torch

torch.set_num_threads(1)

SMALL = dict(in_channels=3, base_channels=8, channel_mults=[1, 2], emb_dim=16, lipschitz_budget=2.0)
DEFAULT: dict = {}


def _model(kind: str):
    from injcert.model.unet import CondUNet

    torch.manual_seed(0)
    return CondUNet(**(SMALL if kind == "small" else DEFAULT)).eval()


class CertifyPhases:
    params = (["small"], [20, 50])
    param_names = ("model", "steps")
    timeout = 600

    def setup(self, kind: str, steps: int) -> None:
        from injcert.certify import CertifyConfig
        from injcert.solvers import make_grid

        self.model = _model(kind)
        self.cfg = CertifyConfig(steps=steps, samples=4)
        self.grid = make_grid(self.model.schedule, steps).tolist()
        self.shape = (3, self.cfg.patch_size, self.cfg.patch_size)

    def time_lipschitz_bound(self, kind: str, steps: int) -> None:
        from injcert.certify.lipschitz import certified_lipschitz

        certified_lipschitz(self.model, self.shape, self.model.lipschitz_budget)

    def time_integrator_reversible(self, kind: str, steps: int) -> None:
        from injcert.certify.context import CertContext

        CertContext(self.model, {}, self.cfg, torch.device("cpu")).reversible

    def time_logdet(self, kind: str, steps: int) -> None:
        from injcert.certify import logdet
        from injcert.certify.context import CertContext

        ctx = CertContext(self.model, {}, self.cfg, torch.device("cpu"))
        ctx.L = 0.1  # a fixed bound (a cached attribute): time the log-determinants only
        logdet.check(ctx)

    def time_certify_total(self, kind: str, steps: int) -> None:
        from injcert.certify import certify

        certify(self.model, self.cfg)

    def track_lipschitz_ratio_upper_over_lower(self, kind: str, steps: int) -> float:
        from injcert.certify import certify

        cert = certify(self.model, self.cfg)
        return float(cert["lipschitz_empirical"].details["ratio_upper_over_lower"])


def main(argv: list[str]) -> int:
    """Print the per-phase timings of one certificate per model size and step count."""
    from injcert.certify import certify

    sizes = argv[1:] or ["small", "default"]
    rows = []
    for kind in sizes:
        for steps in (20, 50):
            t0 = time.perf_counter()
            cert = certify(_model(kind), steps=steps, samples=4)
            wall = time.perf_counter() - t0
            rows.append((kind, steps, cert.verdict, cert.timings, wall))
    phases = ["lipschitz", "integrator", "logdet", "empirical", "total"]
    head = f"{'model':<8} {'steps':>5} {'verdict':<7} " + " ".join(f"{p:>10}" for p in phases)
    print(head)
    print("-" * len(head))
    for kind, steps, verdict, tm, wall in rows:
        print(f"{kind:<8} {steps:>5} {verdict:<7} " + " ".join(f"{tm.get(p, 0.0):>9.2f}s" for p in phases))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
