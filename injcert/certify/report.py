"""Rendering a :class:`~injcert.certify.result.Certificate`: stdout table, Markdown, figures.

JSON is :meth:`Certificate.to_json` (documented by ``injcert/certify/schema.json``, see
:func:`schema` and :func:`validate`). A soundness failure is announced by a banner at the top and
the bottom of the table and of the Markdown.

This module reads a certificate through the attributes it needs (:class:`CertificateView`, a
Protocol that :class:`~injcert.certify.result.Certificate` satisfies) and imports nothing of the
certificate: the import graph flows one way, ``result -> report``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Union

from ..io import save_figure

__all__ = ["render_table", "render_markdown", "write_figures", "schema", "validate", "SCHEMA_PATH",
           "CertificateView"]


class PropertyView(Protocol):
    """What the renderers read of one entry (:class:`~injcert.certify.result.Property`)."""
    name: str
    status: str
    kind: str
    value: Optional[float]
    bound: Optional[float]
    theorem: str
    summary: str
    details: dict[str, Any]
    soundness_failure: bool


class ConfigView(Protocol):
    """What the renderers read of the run's settings (:class:`~injcert.certify.result.CertifyConfig`)."""
    steps: int
    method: str
    grid: str
    samples: int
    seed: int
    patch_size: int


class CertificateView(Protocol):
    """What the renderers read of a certificate (:class:`~injcert.certify.result.Certificate`)."""
    model: dict[str, Any]
    timings: dict[str, float]
    data: dict[str, Any]

    @property
    def properties(self) -> Sequence[PropertyView]: ...

    @property
    def config(self) -> ConfigView: ...

    @property
    def verdict(self) -> str: ...

    @property
    def failures(self) -> Sequence[PropertyView]: ...

    @property
    def soundness_failures(self) -> Sequence[PropertyView]: ...

    def __getitem__(self, name: str) -> PropertyView: ...

SCHEMA_PATH = Path(__file__).with_name("schema.json")


def schema() -> dict[str, Any]:
    """The JSON schema of the report (``injcert/certify/schema.json``)."""
    return json.loads(SCHEMA_PATH.read_text())


def validate(report: Union[dict[str, Any], str]) -> None:
    """Validate a report (dict or JSON text) against :func:`schema`; needs ``jsonschema``.

    Raises:
        jsonschema.ValidationError: the report does not follow the schema.
    """
    import jsonschema  # optional dependency (the ``test`` extra): imported only when validating

    if isinstance(report, str):
        report = json.loads(report)
    jsonschema.validate(report, schema())


def _num(v: Any) -> str:
    if v is None:
        return "-"
    v = float(v)
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return "inf" if v > 0 else "-inf" if v < 0 else "nan"
    if 1e-3 <= abs(v) < 1e5:
        return f"{v:.5g}"
    return f"{v:.3e}"


def _banner(cert: CertificateView) -> list[str]:
    bad = cert.soundness_failures
    if not bad:
        return []
    names = ", ".join(p.name for p in bad)
    return [
        "!" * 88,
        f"!!! SOUNDNESS FAILURE in {names}: a measurement contradicts a certified bound.",
        "!!! This is a bug in injcert's bounds (or in a rule), not a property of the model. Please report it.",
        "!" * 88,
    ]


def _header(cert: CertificateView) -> list[str]:
    m, c = cert.model, cert.config
    arch = m.get("architecture") or m.get("class")
    src = m.get("path") or "<in-memory model>"
    lines = [
        f"injcert certificate: {arch} ({m.get('class')}, {m.get('parameters', 0):,} parameters, {m.get('dtype')}) from {src}",
        f"flow t in [0, {m.get('t_max', '?')}], method {c.method}, {c.steps} {c.grid} steps, device {m.get('device')}, "
        f"{c.samples} held-out samples, seed {c.seed}",
    ]
    if m.get("sha256"):
        lines.append(f"sha256 {m['sha256']}")
    return lines


def render_table(cert: CertificateView) -> str:
    """A readable plain-text table: one row per property, then each property's one-line summary."""
    rows = [(p.status, p.name, p.kind, _num(p.value), _num(p.bound), p.theorem) for p in cert.properties]
    head = ("status", "property", "kind", "value", "bound", "theorem")
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) if rows else len(head[i]) for i in range(6)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    rule = "-" * (sum(widths) + 2 * 5)
    out = _banner(cert) + _header(cert) + [rule, fmt.format(*head), rule]
    out += [fmt.format(*r) for r in rows]
    out.append(rule)
    for p in cert.properties:
        flag = "  <-- SOUNDNESS FAILURE" if p.soundness_failure else ""
        out.append(f"[{p.status}] {p.name}: {p.summary}{flag}")
    layers = cert.data.get("layers") or []
    if layers:
        top = sorted(layers, key=lambda r: -r["bound"])[:5]
        out.append(rule)
        out.append(f"per-layer bounds ({len(layers)} layers; largest 5, full table in --markdown/--json):")
        for r in top:
            out.append(f"    {r['name']:<40} {r['type']:<14} {_num(r['bound'])}")
    out.append(rule)
    counts = {s: sum(p.status == s for p in cert.properties) for s in ("PASS", "FAIL", "INFO", "SKIPPED")}
    cnt = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    total = cert.timings.get("total")
    took = f" in {total:.1f} s" if total is not None else ""
    verdict = f"VERDICT: {cert.verdict} ({len(cert.properties)} properties: {cnt}){took}"
    if cert.failures:
        verdict += " -- failed: " + ", ".join(p.name for p in cert.failures)
    out.append(verdict)
    out += _banner(cert)
    return "\n".join(out) + "\n"


def _proof_link(page: str, base: Union[str, os.PathLike[str], None]) -> str:
    """The link to a theorem page ``proofs/NN-name.md`` from a Markdown file in folder ``base``:
    relative to that folder when the pages exist in this source tree, else ``page`` unchanged
    (relative to the repository root)."""
    if base is None or not page.startswith("proofs/"):
        return page
    target = Path(__file__).resolve().parents[2] / page
    if not target.is_file():
        return page
    try:
        return Path(os.path.relpath(target, Path(base).resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return target.as_uri()


def render_markdown(cert: CertificateView, base: Union[str, os.PathLike[str], None] = None) -> str:
    """The report as Markdown: verdict, model, one table row per property citing its theorem page.

    ``base``: the folder the Markdown is written to; the links to the proof pages are made relative
    to it (default: relative to the repository root)."""
    lines = _md_verdict(cert, base) + _md_model(cert) + _md_properties(cert, base) + _md_stability(cert)
    layers = cert.data.get("layers") or []
    if layers:
        lines.append("## Per-layer Lipschitz bounds (certified, every input size)")
        lines.append("")
        lines.append("| layer | type | bound |")
        lines.append("|---|---|---|")
        for r in layers:
            lines.append(f"| `{r['name']}` | {r['type']} | {_num(r['bound'])} |")
        lines.append("")
    if cert.timings:
        lines.append("## Timings")
        lines.append("")
        lines.append(", ".join(f"{k} {v:.2f} s" for k, v in cert.timings.items()))
        lines.append("")
    return "\n".join(lines)


def _md_verdict(cert: CertificateView, base: Union[str, os.PathLike[str], None]) -> list[str]:
    lines: list[str] = []
    bad = cert.soundness_failures
    lines.append(f"# injcert certificate: {cert.verdict}")
    lines.append("")
    if bad:
        lines.append("> **SOUNDNESS FAILURE** in " + ", ".join(f"`{p.name}`" for p in bad)
                     + ": a measurement contradicts a certified bound. This is a bug in injcert, not a property "
                     "of the model.")
        lines.append("")
    if cert.failures:
        lines.append("**Failed:** " + "; ".join(f"`{p.name}` — {p.summary}" for p in cert.failures))
        lines.append("")
    lines.append(f"What a PASS proves is stated in [proofs/08-certificate.md]({_proof_link('proofs/08-certificate.md', base)}).")
    lines.append("")
    return lines


def _md_model(cert: CertificateView) -> list[str]:
    m, c = cert.model, cert.config
    lines = ["## Model", "", "| | |", "|---|---|"]
    for k in ("path", "sha256", "architecture", "class", "parameters", "dtype", "lipschitz_budget", "t_max",
              "input_shape", "device"):
        if m.get(k) is not None:
            lines.append(f"| {k} | `{m[k]}` |")
    lines.append(f"| method | `{c.method}`, {c.steps} {c.grid} steps |")
    lines.append(f"| empirical samples | {c.samples} held-out patches ({c.patch_size}×{c.patch_size}), seed {c.seed} |")
    lines.append("")
    return lines


def _md_properties(cert: CertificateView, base: Union[str, os.PathLike[str], None]) -> list[str]:
    lines = ["## Properties", "", "| status | property | kind | value | bound | theorem | summary |",
             "|---|---|---|---|---|---|---|"]
    for p in cert.properties:
        status = f"**{p.status}**" if p.status == "FAIL" else p.status
        summary = p.summary.replace("|", "\\|")
        if p.soundness_failure:
            summary = "**SOUNDNESS FAILURE** " + summary
        lines.append(f"| {status} | `{p.name}` | {p.kind} | {_num(p.value)} | {_num(p.bound)} | "
                     f"[{p.theorem}]({_proof_link(p.theorem, base)}) | {summary} |")
    lines.append("")
    return lines


def _md_stability(cert: CertificateView) -> list[str]:
    """The stability constants of ``flow_bilipschitz`` (and the measured ratios), if it was evaluated."""
    try:
        flow = cert["flow_bilipschitz"].details
    except KeyError:
        flow = {}
    if not flow:
        return []
    lines = ["## Stability constants (all certified)", ""]
    formula = ("\\int_0^{\\varsigma_{\\max}} \\alpha L(t(\\varsigma))\\,d\\varsigma" if "pieces" in flow.get("formula", "")
               else "L\\,\\mathrm{asinh}(\\varsigma_{\\max})")
    lines.append(f"- Exact flow over $[0, {cert.model.get('t_max')}]$: $\\Lambda = {formula}"
                 f" = {flow['Lambda']:.6g}$, bi-Lipschitz constants $e^{{\\pm\\Lambda}}$ = "
                 f"{flow['lower_text']} / {flow['upper_text']}"
                 + (" (astronomically loose, but proven)." if flow.get("loose") else "."))
    ln = flow.get("lognorm")
    if ln:
        lines.append(f"- Tighter, one-sided (logarithmic norm with the exact linear part, "
                     f"{ln['linear_part']}): $e^{{{ln['Lambda_minus']:.4g}}}$ = {ln['lower_text']} "
                     f"$\\le \\|\\Phi x - \\Phi y\\|/\\|x - y\\| \\le$ $e^{{{ln['Lambda_plus']:.4g}}}$ = {ln['upper_text']}.")
    emp = {p.name: p for p in cert.properties}
    if "injectivity_empirical" in emp and "growth_empirical" in emp:
        lines.append(f"- Measured on held-out pairs (discrete Euler map): distance ratios from "
                     f"{emp['injectivity_empirical'].value:.4g} to {emp['growth_empirical'].value:.4g}.")
    sr = flow.get("short_range", {})
    if sr:
        lines.append(f"- Shorter range $[0, {sr['t_max']}]$: $\\Lambda = {sr['Lambda']:.6g}$, "
                     f"$e^{{\\Lambda}}$ = {sr['upper_text']}.")
    de = flow.get("discrete_euler", {})
    if de:
        lines.append(f"- Discrete Euler/DDIM map: $\\prod_k(1-h_kL_k)$ = {de['lower_text']}, "
                     f"$\\prod_k(1+h_kL_k)$ = {de['upper_text']}"
                     + ("" if de.get("certified_injective") else " (no lower constant: some $h_kL_k \\ge 1$)") + ".")
    per = flow.get("per_step_Lambda") or []
    if per:
        lines.append(f"- Per-step exponents $\\Lambda_k$: max {max(per):.4g}, min {min(per):.4g}.")
    lines.append("")
    return lines


def write_figures(cert: CertificateView, folder: Union[str, os.PathLike[str]]) -> list[Path]:
    """Per-layer bounds, per-step margins, round-trip error vs steps and log-dets with intervals (PNG)."""
    import matplotlib  # heavy (seconds to import): only when figures are written

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    d = cert.data
    figures = (("lipschitz_layers.png", _fig_layers), ("step_margins.png", _fig_margins),
               ("round_trip.png", _fig_round_trip), ("logdet.png", _fig_logdet))
    for name, draw in figures:
        fig = draw(plt, cert, d)
        if fig is None:  # no data for this figure
            continue
        path = out / name
        fig.tight_layout()
        save_figure(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _fig_layers(plt: Any, cert: CertificateView, d: dict[str, Any]) -> Any:
    layers = d.get("layers") or []
    if not layers:
        return None
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(layers))))
    names = [r["name"] for r in layers]
    ax.barh(range(len(layers)), [r["bound"] for r in layers], color="tab:blue")
    ax.set_yticks(range(len(layers)), names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("certified Lipschitz bound")
    lip = cert["lipschitz_bound"].value
    ax.set_title(f"per-layer bounds (total L = {_num(lip)})")
    return fig


def _fig_margins(plt: Any, cert: CertificateView, d: dict[str, Any]) -> Any:
    if not d.get("margins"):
        return None
    # the same numbers and words as the table: "max h_k L_k = ... (step k)", L_k = alpha(s_k) L(t_k)
    qs = list(d["margins"])
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ks = list(range(len(qs)))
    kmax = max(ks, key=lambda k: qs[k])
    ax.plot(ks, qs, "o-", ms=3, label="$h_k L_k$, $L_k = \\alpha(\\varsigma_k)\\,L(t_k)$ (certified)")
    ax.plot([kmax], [qs[kmax]], "o", ms=7, mfc="none", color="k", label=f"max {_num(qs[kmax])} at step {kmax}")
    ax.axhline(1.0, color="tab:red", ls="--", label="1: Euler step injective below")
    if max(qs) / max(min(qs), 1e-300) > 50:
        ax.set_yscale("log")
    ax.set_xlabel("step k")
    ax.set_ylabel("$h_k L_k$")
    bad = sum(q >= 1.0 for q in qs)
    ax.set_title(f"per-step margins $h_k L_k$: max {_num(qs[kmax])} (step {kmax}), "
                 + (f"{bad} of {len(qs)} steps ≥ 1" if bad else "all < 1"), fontsize=10)
    ax.legend(fontsize=7)
    return fig


def _fig_round_trip(plt: Any, cert: CertificateView, d: dict[str, Any]) -> Any:
    study = d.get("round_trip_study")
    if not study:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, style in (("ddim", "s-"), ("fixed_point", "o-"), ("reversible", "^-")):
        pts = [(n, v) for n, v in zip(study["steps"], study[key]) if v is not None]
        if pts:
            ys = [max(v, 1e-17) for _, v in pts]
            ax.loglog([n for n, _ in pts], ys, style, label=key + (" (0 plotted at 1e-17)" if key == "reversible" else ""))
    ax.set_xlabel("steps")
    ax.set_ylabel("round-trip error")
    ax.set_title("round-trip error vs steps")
    ax.legend()
    return fig


def _fig_logdet(plt: Any, cert: CertificateView, d: dict[str, Any]) -> Any:
    if not d.get("logdet_exact"):
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    _plot_logdet_steps(a1, d)
    ks = list(range(len(d["logdet_exact"])))
    cum = [sum(d["logdet_exact"][: k + 1]) for k in ks]
    a2.plot(d["grid"][1:], cum, "k-", label="exact, Euler map (cumulative)")
    if d.get("hutchpp_per_step"):
        hc = [sum(d["hutchpp_per_step"][: k + 1]) for k in range(len(d["hutchpp_per_step"]))]
        scale = d.get("logdet_dim", 1) / max(d.get("hutchpp_dim", 1), 1)
        a2.plot(d["hutchpp_grid"][1:], [v * scale for v in hc], "b--",
                label=f"Hutch++ trace integral × d/D (±{d.get('hutchpp_se', 0) * scale:.2g}), other input")
    a2.set_xscale("symlog", linthresh=1e-2)
    a2.set_xlabel("$\\varsigma$")
    a2.set_title("cumulative log-det")
    a2.legend(fontsize=7)
    return fig


def _plot_logdet_steps(a1: Any, d: dict[str, Any]) -> None:
    """Per-step exact log-dets inside their certified intervals (infinite ends drawn as arrows)."""
    ks = list(range(len(d["logdet_exact"])))
    lo_raw, hi_raw = list(d["logdet_lo"]), list(d["logdet_hi"])
    finite = [v for v in lo_raw + hi_raw + list(d["logdet_exact"]) + list(d["logdet_trace"]) if math.isfinite(v)]
    span = (max(finite) - min(finite)) if finite else 1.0
    floor = (min(finite) if finite else -1.0) - 0.15 * span - 1.0  # where a -inf end is drawn
    ceil = (max(finite) if finite else 1.0) + 0.15 * span + 1.0
    lo = [v if math.isfinite(v) else floor for v in lo_raw]
    hi = [v if math.isfinite(v) else ceil for v in hi_raw]
    a1.fill_between(ks, lo, hi, alpha=0.3, color="tab:blue", lw=0, label="certified interval")
    k_inf = [k for k in ks if not math.isfinite(lo_raw[k])]
    k_sup = [k for k in ks if not math.isfinite(hi_raw[k])]
    if k_inf:  # the lower end is -inf there: hatched down to the axis and arrows past it
        a1.fill_between(ks, floor, [hi[k] if k in k_inf else floor for k in ks], facecolor="none",
                        edgecolor="tab:blue", hatch="//", lw=0, step=None)
        a1.plot(k_inf, [floor] * len(k_inf), "v", color="tab:blue", ms=7, clip_on=False,
                label=f"lower end $-\\infty$ ({len(k_inf)} steps with $h_k L_k \\geq 1$)")
    if k_sup:
        a1.plot(k_sup, [ceil] * len(k_sup), "^", color="tab:blue", ms=7, clip_on=False,
                label=f"upper end $+\\infty$ ({len(k_sup)} steps)")
    a1.set_ylim(floor, ceil)
    a1.plot(ks, d["logdet_exact"], "k.-", ms=3, label="exact log|det(I+hJ)|")
    a1.plot(ks, d["logdet_trace"], "g--", lw=1, label="h tr J")
    a1.set_xlabel("step k")
    a1.set_title(f"per-step log-det (d = {d.get('logdet_dim')})")
    a1.legend(fontsize=7, loc="upper left", framealpha=0.9)
