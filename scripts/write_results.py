"""Run the headline benchmarks and write their results into the docs and the README.

    python scripts/write_results.py [CKPT] [--sizes 64 256] [--steps 20] [--skip-certify] [--rows JSON ...]

Replaces what lies between ``<!-- results:begin -->`` and ``<!-- results:end -->`` in
``docs/benchmarks/results.md`` and between ``<!-- headline:begin -->`` and ``<!-- headline:end -->``
in ``README.md``. Every section names the command that produced it, the model's weights fingerprint,
the date and the machine. Nothing is typed by hand: to change a figure, change a benchmark and run
this again.

Sections: restoration against the best classical method per corruption and size
(``benchmarks/restoration_by_size.py``), the model's own estimate from the condition alone
(``benchmarks/condition_usage.py``), and the certificate (``python -m injcert certify``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import injcert  # noqa: E402
from injcert.cli import run_script  # noqa: E402
from injcert.io import weights_fingerprint  # noqa: E402

RESULTS = ROOT / "docs" / "benchmarks" / "results.md"
README = ROOT / "README.md"


def _run(cmd: list[str]) -> tuple[str, float]:
    """Run ``cmd`` from the repository root; returns its stdout and wall time (a failure stops the script)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # certify exits 1 when a property fails: still a result
        sys.exit(f"write_results: {' '.join(cmd)} failed with exit {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc.stdout, time.perf_counter() - t0


def _shown(cmd: list[str]) -> str:
    parts = ["python" if c == sys.executable else c for c in cmd]
    return " ".join(str(Path(p).relative_to(ROOT)) if str(p).startswith(str(ROOT) + os.sep) else p for p in parts)


def _fmt(v: float, signed: bool = False) -> str:
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def restoration(ckpt: str, sizes: list[int], steps: int, rows_files: Optional[list[str]] = None,
                fingerprint: str = "") -> tuple[str, str]:
    """The restoration section and the README's headline table: from a run of
    ``benchmarks/restoration_by_size.py``, or from the JSON files such runs wrote (``rows_files``)."""
    cmd = [sys.executable, "benchmarks/restoration_by_size.py", ckpt, "--sizes", *map(str, sizes),
           "--steps", str(steps), "--json", "ROWS"]
    if rows_files:
        data, seconds = _saved_rows(rows_files, sizes, steps, fingerprint)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.json"
            _, seconds = _run(cmd[:-1] + [str(out)])
            data = json.loads(out.read_text())
    lines = ["| size | corruption | best classical | its PSNR / SSIM | ours PSNR / SSIM | ΔPSNR | ours produced by |",
             "|---|---|---|---|---|---|---|"]
    head = ["| corruption | best classical method | its PSNR | injcert | Δ |", "|---|---|---|---|---|"]
    for size in sizes:
        rows = [r for r in data["rows"] if r["size"] == size]
        for c in dict.fromkeys(r["corruption"] for r in rows):
            ours = next(r for r in rows if r["corruption"] == c and r["method"] == "ours")
            best = max((r for r in rows if r["corruption"] == c and r["method"] != "ours"), key=lambda r: r["psnr"])
            d = ours["psnr"] - best["psnr"]
            lines.append(f"| {size}² | {c} | {best['method']} | {_fmt(best['psnr'])} / {best['ssim']:.4f} | "
                         f"{_fmt(ours['psnr'])} / {ours['ssim']:.4f} | {_fmt(d, True)} | {ours['source']} |")
            if size == sizes[0]:
                head.append(f"| {c} | {best['method']} | {_fmt(best['psnr'])} dB | {_fmt(ours['psnr'])} dB | "
                            f"{_fmt(d, True)} dB |")
    text = (f"Held-out images ({', '.join(data['images'])}), the same corruptions and seeds for every "
            f"method, {steps} steps; PSNR and SSIM averaged over the images. \"Produced by\" names our start "
            "estimates (with how many images started from each where they differ) and in how many images "
            "the gate kept the flow (blur: 0, its flow is off by default and the result is the least-squares "
            "estimate); each image is restored in a call of its own, with its own "
            "start check, start level and gate decision.\n\n"
            f"Command: `{_shown(cmd[:-2])}` ({seconds:.0f} s{' over the sizes, run separately' if rows_files else ''})"
            "\n\n" + "\n".join(lines))
    headline = (f"Held-out images at {sizes[0]}², PSNR averaged over {len(data['images'])} images "
                f"(generated by `scripts/write_results.py`; the full table, SSIM and larger sizes are in "
                f"[the results](docs/benchmarks/results.md)):\n\n" + "\n".join(head))
    return text, headline


def _saved_rows(files: list[str], sizes: list[int], steps: int, fingerprint: str) -> tuple[dict, float]:
    """The rows of earlier ``restoration_by_size.py --json`` runs: each file must be of these weights
    and steps; together they must hold every size asked for (the first file's images)."""
    data: dict = {"rows": []}
    seconds = 0.0
    for f in files:
        try:
            part = json.loads(Path(f).read_text())
        except (OSError, ValueError) as exc:  # a JSON or Unicode decoding error is a ValueError
            part = exc
        if not isinstance(part, dict) or not {"images", "rows"} <= set(part):
            why = f" ({type(part).__name__}: {part})" if isinstance(part, Exception) else ""
            sys.exit(f"write_results: {f} is not the JSON of `restoration_by_size.py --json`{why}")
        if not part.get("per_image", False):
            sys.exit(f"write_results: {f} restored each batch in one call (--one-call, or a run from before "
                     "one call per image); the page reports one call per image")
        if part.get("weights") != fingerprint or part.get("steps") != steps:
            sys.exit(f"write_results: {f} is not a run of these weights with {steps} steps "
                     f"(weights {str(part.get('weights'))[:16]}, steps {part.get('steps')})")
        data.setdefault("images", part["images"])
        if part["images"] != data["images"]:
            sys.exit(f"write_results: {f} ran on other images ({part['images']})")
        data["rows"] += part["rows"]
        seconds += sum(float(v) for v in part.get("seconds", {}).values())
    missing = sorted(set(sizes) - {r["size"] for r in data["rows"]})
    if missing:
        sys.exit(f"write_results: no rows of size {missing} in {files}")
    return data, seconds


def own_estimate(ckpt: str, sizes: list[int]) -> str:
    cmd = [sys.executable, "benchmarks/condition_usage.py", ckpt, "--sizes", *map(str, sizes),
           "--corruptions", "random", "box", "--levels", "0.1"]
    out, seconds = _run(cmd)
    return ("The denoiser at $t_{\\max}$ from the condition alone, and the restorer's $R(c)$, against "
            "`inpaint_biharmonic`, at the missing pixels.\n\n"
            f"Command: `{_shown(cmd)}` ({seconds:.0f} s)\n" + out.replace("\n### ", "\n#### "))


def certificate(ckpt: str) -> tuple[str, str]:
    """The certificate section (its whole table) and the README's excerpt (the property rows and the verdict)."""
    cmd = [sys.executable, "-m", "injcert", "certify", ckpt, "--threads", "2"]
    env_out, seconds = _run(cmd)
    lines = env_out.strip().splitlines()
    rules = [i for i, ln in enumerate(lines) if ln.startswith("-----")]
    table = lines[rules[0]:rules[2] + 1] if len(rules) >= 3 else lines[:20]  # header and property rows
    excerpt = "\n".join(["```", f"$ {_shown(cmd)}", *table, lines[-1], "```"])
    return f"Command: `{_shown(cmd)}` ({seconds:.0f} s)\n\n```\n" + "\n".join(lines) + "\n```", excerpt


def _replace(path: Path, begin: str, end: str, body: str) -> None:
    text = path.read_text()
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pat.search(text):
        sys.exit(f"write_results: {path} has no {begin} ... {end} markers")
    path.write_text(pat.sub(lambda _: f"{begin}\n{body}\n{end}", text, count=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default=str(injcert.DEFAULT_CHECKPOINT))
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--skip-certify", action="store_true")
    ap.add_argument("--rows", nargs="+", metavar="JSON",
                    help="take the restoration rows from these `restoration_by_size.py --json` outputs (of the "
                         "same weights and steps) instead of running it: a size run separately, or earlier")
    args = ap.parse_args()
    model = injcert.load_checkpoint(args.checkpoint)
    stamp = (f"Model `{Path(args.checkpoint).name}`, weights sha256 `{weights_fingerprint(model)[:16]}`; run on "
             f"{datetime.date.today().isoformat()}, {platform.machine()} with {os.cpu_count()} CPU cores, "
             f"torch {__import__('torch').__version__}.")
    ckpt = os.path.relpath(args.checkpoint, ROOT) if Path(args.checkpoint).is_absolute() else args.checkpoint
    restore, headline = restoration(ckpt, args.sizes, args.steps, args.rows, weights_fingerprint(model))
    parts = [stamp, "## Restoration against the best classical method", restore,
             "## The model's own estimate", own_estimate(ckpt, args.sizes)]
    if not args.skip_certify:
        full, excerpt = certificate(ckpt)
        parts += ["## Certificate", full]
        _replace(README, "<!-- certificate:begin -->", "<!-- certificate:end -->", excerpt)
    _replace(RESULTS, "<!-- results:begin -->", "<!-- results:end -->", "\n\n".join(parts))
    _replace(README, "<!-- headline:begin -->", "<!-- headline:end -->", headline)
    print(f"write_results: wrote {RESULTS.relative_to(ROOT)} and the README's headline table")


if __name__ == "__main__":
    run_script(main)
