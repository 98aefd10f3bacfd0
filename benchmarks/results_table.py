"""Turn the latest asv results into Markdown tables (stdout and ``docs/benchmarks/results.md``).

Usage: ``python benchmarks/results_table.py [--results .asv/results] [--out docs/benchmarks/results.md]``.

One table per benchmark class: a row per parameter combination, a column per ``time_*``,
``peakmem_*`` and ``track_*`` method. Skipped combinations (``NotImplementedError`` in ``setup``)
and failures show as "—". Only the most recent result file (by its ``date``) is read; this
module defines no benchmarks (asv imports it and finds none).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent


def latest_result(results_dir: Path) -> Tuple[Path, Dict[str, Any]]:
    """The newest asv result file under ``results_dir`` (all machines) and its JSON."""
    best: Optional[Tuple[int, Path, Dict[str, Any]]] = None
    for path in results_dir.glob("*/*.json"):
        if path.name == "machine.json":
            continue
        data = json.loads(path.read_text())
        if "results" not in data:
            continue
        key = int(data.get("date") or 0)
        if best is None or key > best[0] or (key == best[0] and path.stat().st_mtime > best[1].stat().st_mtime):
            best = (key, path, data)
    if best is None:
        raise SystemExit(f"no asv results under {results_dir} (run `make bench` first)")
    return best[1], best[2]


def _fmt(value: Any, kind: str, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if kind == "time":
        v = float(value)
        return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"
    if kind in ("memory", "peakmemory"):
        return f"{float(value) / 2**20:.0f} MiB"
    v = float(value)
    if math.isinf(v):
        return "inf"
    if v == 0:
        return "0"
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.4g}" if 1e-2 <= abs(v) < 1e4 else f"{v:.2e}"


def _unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"" else s


def tables(data: Dict[str, Any], meta: Dict[str, Any]) -> List[str]:
    """Markdown tables of one result file; ``meta`` is asv's ``benchmarks.json``."""
    columns = data.get("result_columns", ["result", "params"])
    groups: Dict[str, List[str]] = {}
    for name in sorted(data["results"]):
        groups.setdefault(name.rsplit(".", 1)[0], []).append(name)
    out = []
    for group, names in groups.items():
        first = meta.get(names[0], {})
        pnames = list(first.get("param_names", []))
        entry0 = dict(zip(columns, data["results"][names[0]]))
        pvals = entry0.get("params") or []
        combos = list(itertools.product(*pvals)) if pvals else [()]
        heads = [p for p in pnames] + [n.rsplit(".", 1)[1] for n in names]
        rows = []
        for i, combo in enumerate(combos):
            row = [_unquote(str(c)) for c in combo]
            for n in names:
                e = dict(zip(columns, data["results"][n]))
                res = e.get("result")
                val = res[i] if isinstance(res, list) and i < len(res) else None
                info = meta.get(n, {})
                row.append(_fmt(val, info.get("type", "track"), info.get("unit", "")))
            if any(c != "—" for c in row[len(pnames):]):
                rows.append(row)
        units = ", ".join(
            f"`{n.rsplit('.', 1)[1]}`: {meta.get(n, {}).get('unit', '')}" for n in names
            if meta.get(n, {}).get("type") == "track" and meta.get(n, {}).get("unit", "unit") != "unit"
        )
        lines = [f"### {group}", ""]
        if units:
            lines += [f"Units — {units}.", ""]
        if not rows:
            out.append("\n".join(lines + ["All combinations skipped or failed in this run (see the asv log)."]))
            continue
        lines.append("| " + " | ".join(heads) + " |")
        lines.append("|" + "|".join("---" for _ in heads) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("\n".join(lines))
    return out


#: The line below which ``docs/benchmarks/results.md`` holds hand-run measurements (restoration tables,
#: profiles, training runs): regenerating the asv tables keeps them.
KEEP_MARKER = "<!-- results_table.py replaces the asv tables above this line and keeps everything below it -->"


def with_kept_sections(asv_text: str, old: str) -> str:
    """``asv_text``, followed by the marker and whatever followed it in ``old`` (nothing if absent)."""
    if KEEP_MARKER not in old:
        return asv_text
    return asv_text + "\n" + KEEP_MARKER + old.split(KEEP_MARKER, 1)[1]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / ".asv" / "results"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "results.md"))
    args = ap.parse_args(argv)
    results = Path(args.results)
    path, data = latest_result(results)
    meta_path = results / "benchmarks.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    machine = data.get("params", {})
    header = (
        f"Latest asv run (`asv run --quick`: one sample per benchmark): commit "
        f"`{str(data.get('commit_hash', '?'))[:10]}`, machine `{machine.get('machine', '?')}` "
        f"({machine.get('cpu', '?')}, {machine.get('num_cpu', '?')} CPUs), Python {data.get('python', '?')}. "
        "\"—\" = skipped (not applicable or not affordable) or failed."
    )
    text = header + "\n\n" + "\n\n".join(tables(data, meta)) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(with_kept_sections(text, out.read_text() if out.is_file() else ""))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
