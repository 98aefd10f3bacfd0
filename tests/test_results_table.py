"""benchmarks/results_table.py regenerates the asv tables of an ``--out`` file and keeps the
hand-run measurements below its marker (they are not asv results and would be lost); by default it
only prints, so it never overwrites the generated docs/benchmarks/results.md."""

from __future__ import annotations

from pathlib import Path

from benchmarks.results_table import KEEP_MARKER, main, with_kept_sections

ROOT = Path(__file__).resolve().parents[1]


def test_regeneration_keeps_the_hand_run_sections() -> None:
    old = "old asv tables\n\n" + KEEP_MARKER + "\n\n## A training run\n\nnumbers\n"
    new = with_kept_sections("new asv tables\n", old)
    assert new.startswith("new asv tables\n") and "old asv tables" not in new
    assert new.endswith(KEEP_MARKER + "\n\n## A training run\n\nnumbers\n")
    assert with_kept_sections(new.split(KEEP_MARKER)[0].rstrip("\n") + "\n", new) == new  # idempotent
    assert with_kept_sections("tables\n", "no marker here") == "tables\n"


def test_history_keeps_the_former_results_page_with_its_marker() -> None:
    text = (ROOT / "docs" / "notes" / "history.md").read_text()
    assert text.count(KEEP_MARKER) == 1
    above, below = text.split(KEEP_MARKER)
    assert "### bench_" in above and "### bench_" not in below
    assert "## Low-noise continuation" in below


def test_results_page_has_its_generated_section_and_is_not_written_by_default(tmp_path: Path) -> None:
    page = ROOT / "docs" / "benchmarks" / "results.md"
    text = page.read_text()
    assert text.count("<!-- results:begin -->") == 1 and text.count("<!-- results:end -->") == 1
    assert text.index("<!-- results:begin -->") < text.index("<!-- results:end -->")
    run = tmp_path / "results" / "machine"
    run.mkdir(parents=True)
    (run / "r.json").write_text('{"results": {}, "date": 1, "commit_hash": "abc", "params": {}}')
    assert main(["--results", str(tmp_path / "results")]) == 0
    assert page.read_text() == text
