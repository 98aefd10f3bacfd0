"""Smoke test of the side-by-side comparison (``python -m injcert bench``) at tiny sizes."""

from __future__ import annotations

import math

import torch

from injcert.cli import main
from injcert.cli import compare
from injcert.testing import AnalyticMixtureScore, flow_map


def test_bench_command_tiny(tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(["bench", "--quick", "--size", "8", "--images", "astronaut", "--steps", "2", "--recon-steps", "2",
               "--methods", "ddim", "reversible", "--skip", "sampling", "--out", str(out)])
    assert rc == 0
    text = (out / "results.md").read_text()
    printed = capsys.readouterr().out
    for section in ("Round trip", "Reconstruction", "Editing"):
        assert section in text and section in printed
    for name in ("round_trip.png", "reconstruction.png", "editing.png"):
        assert (out / name).stat().st_size > 0
    # every corruption type is compared with its classical baselines (never the corrupted input)
    for label in ("inpaint_biharmonic", "richardson_lucy", "wiener", "denoise_nl_means", "denoise_tv_chambolle", "bm3d"):
        assert label in text
    rows = [line for line in text.splitlines() if line.startswith("| reversible")]
    assert rows and all(line.split("|")[4].strip() == "0" for line in rows)  # bit-exact round trip


def test_round_trip_and_edit_baselines():
    model = compare.fallback_model()
    x = compare.load_batch(["chelsea"], 8)[0]
    exact = compare.round_trip(model, x, "reversible", 2)
    naive = compare.round_trip(model, x, "ddim", 2)
    assert exact["max_abs"] == 0.0 and exact["nfe"] == 6
    assert naive["max_abs"] > 0.0
    rows = {r.method: r for r in compare.editing_rows(model, [x], 2)}
    ours, ddim = rows["ours (reversible + reset)"], rows["naive DDIM inversion"]
    assert ours.outside_max_abs == 0.0 and math.isinf(ours.outside_psnr)
    assert ddim.outside_max_abs > 0.0 and math.isfinite(ddim.outside_psnr)


def test_sampling_accuracy_analytic():
    model = AnalyticMixtureScore()
    z = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = flow_map(model, z, model.schedule.t_max, 0.0)
    rows = compare.sampling_accuracy(model, z, [8], ref)
    names = [r[0] for r in rows]
    assert "reversible (8 steps)" in names and any(n.startswith("dopri5") for n in names)
    assert all(r[1] == -1 or math.isfinite(r[2]) for r in rows)


def test_markdown_table_formats():
    t = compare.markdown_table(["a", "b"], [["x", float("nan")], ["y", float("inf")], ["z", 0.0]])
    assert "failed" in t and "inf" in t and "| z " in t
