"""benchmarks/results_table.py regenerates the asv tables of docs/benchmarks/results.md and keeps
the hand-run measurements below its marker (they are not asv results and would be lost)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.results_table import KEEP_MARKER, with_kept_sections

ROOT = Path(__file__).resolve().parents[1]


def test_regeneration_keeps_the_hand_run_sections() -> None:
    old = "old asv tables\n\n" + KEEP_MARKER + "\n\n## A training run\n\nnumbers\n"
    new = with_kept_sections("new asv tables\n", old)
    assert new.startswith("new asv tables\n") and "old asv tables" not in new
    assert new.endswith(KEEP_MARKER + "\n\n## A training run\n\nnumbers\n")
    assert with_kept_sections(new.split(KEEP_MARKER)[0].rstrip("\n") + "\n", new) == new  # idempotent
    assert with_kept_sections("tables\n", "no marker here") == "tables\n"


def test_results_page_has_one_marker_above_its_hand_run_sections() -> None:
    text = (ROOT / "docs" / "benchmarks" / "results.md").read_text()
    assert text.count(KEEP_MARKER) == 1
    above, below = text.split(KEEP_MARKER)
    assert "### bench_" in above and "### bench_" not in below
    assert "## Low-noise continuation" in below
