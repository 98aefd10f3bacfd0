"""Editing: background preservation of the bit-exact edit vs naive DDIM inversion (asv suite).

A "recolor" edit of a centred box on 32×32 crops of ``astronaut`` and ``chelsea`` at strength
0.5, 10 steps. ``ours`` = :func:`injcert.tasks.edit.edit_full` (reversible Heun on the integer
lattice, the outside reset to the stored trajectory at every sub-step: outside error exactly 0 by
Theorem 7); ``naive_ddim`` = :func:`injcert.cli.compare.naive_ddim_edit` (DDIM-encode, replace
the inside, DDIM-decode, no reset: the outside drifts).

Run ``python benchmarks/bench_editing.py`` for a table.
"""

from __future__ import annotations

import torch

from injcert.cli.compare import bench_model, edit_mask, editing_rows, load_batch, naive_ddim_edit

torch.set_num_threads(1)

METHODS = ["ours", "naive_ddim"]
IMAGES = ["astronaut", "chelsea"]
SIZE = 32
STEPS = 10
STRENGTH = 0.5


def _all() -> dict:
    model, _ = bench_model()
    rows = editing_rows(model, load_batch(IMAGES, SIZE), STEPS, STRENGTH)
    return {("ours" if r.method.startswith("ours") else "naive_ddim"): r.__dict__ for r in rows}


class Editing:
    params = (METHODS,)
    param_names = ["method"]
    timeout = 300

    def setup_cache(self) -> dict:
        return _all()

    def setup(self, cache: dict, method: str) -> None:
        from injcert.tasks.edit import make_target

        self.model, _ = bench_model()
        self.x = load_batch(IMAGES, SIZE)[0]
        self.mask = edit_mask(self.x)
        self.target = make_target(self.x, self.mask, "recolor")

    def time_edit(self, cache: dict, method: str) -> None:
        from injcert.tasks.edit import edit_full

        with torch.no_grad():
            if method == "ours":
                edit_full(self.model, self.x, self.mask, self.target, STRENGTH, STEPS)
            else:
                naive_ddim_edit(self.model, self.x, self.mask, self.target, STRENGTH, STEPS)

    def track_outside_max_abs(self, cache: dict, method: str) -> float:
        return cache[method]["outside_max_abs"]

    track_outside_max_abs.unit = "max |change| outside the mask"

    def track_outside_mse(self, cache: dict, method: str) -> float:
        return cache[method]["outside_mse"]

    track_outside_mse.unit = "MSE outside the mask"

    def track_seam_energy(self, cache: dict, method: str) -> float:
        return cache[method]["seam"]

    track_seam_energy.unit = "seam energy"


if __name__ == "__main__":
    for m, r in _all().items():
        print(f"{m:12s} outside max-abs {r['outside_max_abs']:.3e}  MSE {r['outside_mse']:.3e}  "
              f"PSNR {r['outside_psnr']:.2f}  seam {r['seam']:.3e}  NFE {r['nfe']}")
