"""One self-contained HTML page from a ``metrics.json``: what people look at before trusting a number.

The page holds the aggregate table under the official evaluator's names (``DSC``, ``HD95``,
``LogJacDetStd`` with ``mean``, ``std`` and ``30``; this tool's extras beside them, marked), per-organ box
plots of Dice and HD95 over the pairs (inline SVG), the per-pair table (sortable by any column, inline
JavaScript), failed and zero-filled pairs flagged, and the QC pictures of ``l2r predict --qc`` (inline
PNG, base64). Nothing is fetched: it opens from disk with no network.

Python API::

    from l2r_submit.evaluation import report
    report.write_report(json.loads(Path("metrics.json").read_text()), "report.html", qc_dir=Path("qc"))
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

from ..core import io
from ..core.contract import LABEL_NAMES
from ..core.dataset import qc_name

OFFICIAL = ("LogJacDetStd", "DSC", "HD95", "num_foldings")
"""Aggregate and case names the official evaluator writes (with the default evaluation config)."""

EXTRAS = {
    "SDlogJ_plain": "std(log J) over J > 0 (l2r_submit, not official)",
    "jac_nonpos_fraction": "fraction of voxels with J <= 0 (l2r_submit, not official)",
    "DSC30_ranking": "challenge ranking's DSC30: mean Dice over the 30% hardest (pair, label) entries "
                     "under the zero field (l2r_submit)",
}


def load_metrics(path: str | Path) -> dict:
    """Read a ``metrics.json`` of ``l2r evaluate`` or of the official evaluator.

    Raises:
        ValueError: missing or unreadable file, not JSON, or not shaped as a metrics.json
            (:func:`l2r_submit.evaluation.compare.check_metrics`; ``failed`` an object, ``zero_filled`` a list).
    """
    from .compare import check_metrics

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: metrics file not found")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read as JSON ({type(exc).__name__}: {exc})") from None
    check_metrics(metrics, str(path))
    for key, kind in (("failed", dict), ("zero_filled", list)):
        if metrics.get(key) is not None and not isinstance(metrics[key], kind):
            raise ValueError(f"{path}: '{key}': expected a JSON {'object' if kind is dict else 'array'}, "
                             f"got {type(metrics[key]).__name__}")
    return metrics


def report_file(metrics_json: str | Path, out: str | Path, qc_dir: Path | None = None) -> Path:
    """``l2r report``: check the inputs and the output path, then write the page of ``metrics_json``.

    Raises:
        ValueError: one line naming the file and the problem (missing or malformed metrics file, missing
            QC folder, output that cannot be written); nothing is written then.
    """
    from .evaluate import check_output

    if qc_dir is not None and not Path(qc_dir).is_dir():
        problem = "is a file; --qc names the folder of QC pictures" if Path(qc_dir).exists() else "QC folder not found"
        raise ValueError(f"{qc_dir}: {problem}")
    metrics = load_metrics(metrics_json)
    if Path(out).is_dir():
        raise ValueError(f"{out}: is a folder; --out names the HTML file to write")
    check_output(Path(out))
    try:
        return write_report(metrics, out, qc_dir)
    except (AttributeError, KeyError, TypeError) as exc:  # a value of another kind than evaluate writes
        raise ValueError(f"{metrics_json}: a metrics.json this report cannot read ({type(exc).__name__}: "
                         f"{io.one_line(exc, 200)})") from None
    except OSError as exc:
        raise ValueError(f"{out}: cannot be written ({exc.strerror or exc})") from None


def write_report(metrics: dict, out: str | Path, qc_dir: Path | None = None, title: str | None = None) -> Path:
    """Write the page atomically; returns its path.

    Raises:
        OSError: the page cannot be written.
    """
    text = build_report(metrics, qc_dir, title)
    return io.atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def build_report(metrics: dict, qc_dir: Path | None = None, title: str | None = None) -> str:
    """The HTML page of one ``metrics.json`` (dict), QC pictures from ``qc_dir`` when given."""
    cases: dict = metrics["cases"]
    failed: dict = metrics.get("failed", {}) or {}
    zero = set(metrics.get("zero_filled", []) or [])
    name = str(metrics.get("name", "metrics"))
    title = title or f"l2r_submit report: {name}"
    n_labels = max((len(c["DSC"]["detailed"]) for c in cases.values()
                    if isinstance(c.get("DSC", {}).get("detailed"), list)), default=0)
    labels = [LABEL_NAMES.get(i + 1, f"label {i + 1}") if n_labels == len(LABEL_NAMES) else f"entry {i + 1}"
              for i in range(n_labels)]
    parts = [f"<h1>{_e(title)}</h1>", _summary(metrics, cases, failed, zero), "<h2>Aggregates</h2>",
             _aggregate_table(metrics["aggregates"])]
    for metric, unit in (("DSC", "Dice"), ("HD95", "voxels")):
        if any(isinstance(c.get(metric, {}).get("detailed"), list) for c in cases.values()):
            parts += [f"<h2>{metric} per organ over pairs</h2>", _boxplots(cases, metric, labels, unit)]
    parts += ["<h2>Pairs</h2><p class='note'>Click a column title to sort.</p>", _pair_table(cases, failed, zero)]
    if qc_dir is not None:
        parts += ["<h2>QC pictures</h2>", _qc_section(list(cases) + [k for k in failed if k not in cases], qc_dir)]
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n<script>{_JS}</script></body></html>\n")


# ------------------------------------------------------------------------------------------ pieces


def _summary(metrics: dict, cases: dict, failed: dict, zero: set) -> str:
    items = [f"{len(cases)} pairs scored", f"{len(failed)} failed", f"{len(zero)} zero-filled (field missing "
             f"or prediction failed)", f"evaluator protocol {_e(metrics.get('protocol', '?'))}",
             f"eval_version {_e(metrics.get('eval_version', '?'))}"]
    warn = ""
    if metrics.get("partial") or failed or zero:
        warn = ("<p class='warn'>Partial result: failed pairs are left out of the aggregates and zero-filled "
                "pairs are scored as zero fields (see the flagged rows).</p>")
    return f"<p>{' &middot; '.join(items)}</p>{warn}"


def _aggregate_table(aggregates: dict) -> str:
    rows = []
    for key, agg in aggregates.items():
        note = "official" if key in OFFICIAL else EXTRAS.get(key, "")
        if "std" in agg:
            cells = "".join(f"<td>{_fmt(agg.get(k))}</td>" for k in ("mean", "std", "30"))
        else:
            cells = f"<td>{_fmt(agg.get('mean'))}</td><td colspan='2'>{agg.get('entries', '')} pair-label entries</td>"
        rows.append(f"<tr><th>{_e(key)}</th>{cells}<td class='note'>{_e(note)}</td></tr>")
    return ("<table class='agg'><thead><tr><th>name</th><th>mean</th><th>std</th><th>30</th><th></th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _pair_table(cases: dict, failed: dict, zero: set) -> str:
    names = [n for n in ("DSC", "HD95", "LogJacDetStd", "SDlogJ_plain", "jac_nonpos_fraction")
             if any(n in c for c in cases.values())]
    head = "".join(f"<th onclick='sortBy(this)'>{_e(n)}</th>" for n in ["case", *names, "vanished labels", "status"])
    rows = []
    for key, case in cases.items():
        status, cls = ("zero-filled", "zero") if key in zero else ("ok", "")
        cells = "".join(_num_cell(case.get(n, {}).get("mean")) for n in names)
        vanished = " ".join(map(str, case.get("vanished_labels", [])))
        rows.append(f"<tr class='{cls}'><td data-s='{_e(key)}'>{_e(key)}</td>{cells}"
                    f"<td data-s='{_e(vanished)}'>{_e(vanished)}</td><td data-s='{status}'>{status}</td></tr>")
    for key, err in failed.items():
        blank = "<td data-v='NaN'></td>" * len(names)
        rows.append(f"<tr class='failed'><td data-s='{_e(key)}'>{_e(key)}</td>{blank}<td data-s=''></td>"
                    f"<td data-s='failed'>FAILED: {_e(err)}</td></tr>")
    return (f"<table class='pairs' id='pairs'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _num_cell(value) -> str:
    v = _float(value)
    key = "NaN" if math.isnan(v) else ("Infinity" if v == math.inf else "-Infinity" if v == -math.inf else repr(v))
    return f"<td data-v='{key}'>{_fmt(v)}</td>"


def _qc_section(keys: list[str], qc_dir: Path) -> str:
    out = []
    for key in keys:
        path = Path(qc_dir) / qc_name(key)
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            out.append(f"<figure><img alt='QC {_e(key)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{_e(key)}</figcaption></figure>")
        else:
            out.append(f"<p class='note'>{_e(key)}: no QC picture ({_e(path.name)} not in {_e(str(qc_dir))})</p>")
    return "\n".join(out)


def _boxplots(cases: dict, metric: str, labels: list[str], unit: str) -> str:
    """Inline SVG: one box per organ (quartiles, median, whiskers at 1.5 IQR, outliers as dots); NaN
    entries (label absent) are left out, inf HD95 (label vanished) counted above the box."""
    columns = []
    for i in range(len(labels)):
        vals = [_float(c[metric]["detailed"][i]) for c in cases.values()
                if isinstance(c.get(metric, {}).get("detailed"), list) and i < len(c[metric]["detailed"])]
        columns.append(([v for v in vals if math.isfinite(v)], sum(1 for v in vals if math.isinf(v))))
    finite = [v for vals, _ in columns for v in vals]
    top = 1.0 if metric == "DSC" else _nice_max(max(finite, default=1.0))
    height, left, bottom, step = 330, 56, 120, 62
    right = left + step * len(labels)  # rotated organ names run on past the last box
    width = right + 120
    plot_h = height - bottom - 20

    def y(v: float) -> float:
        return 20 + plot_h * (1 - min(max(v / top, 0.0), 1.0))

    svg = [f"<svg width='{width}' height='{height}' role='img' "
           f"aria-label='{_e(metric)} per organ'>"]
    for t in np.linspace(0, top, 6):
        svg.append(f"<line x1='{left}' x2='{right}' y1='{y(t):.1f}' y2='{y(t):.1f}' class='grid'/>"
                   f"<text x='{left - 6}' y='{y(t) + 4:.1f}' text-anchor='end'>{t:.3g}</text>")
    svg.append(f"<text x='14' y='{20 + plot_h / 2:.0f}' transform='rotate(-90 14 {20 + plot_h / 2:.0f})' "
               f"text-anchor='middle'>{_e(metric)} ({_e(unit)})</text>")
    for n, ((vals, n_inf), label) in enumerate(zip(columns, labels)):
        cx = left + step * n + step / 2
        svg.append(f"<text transform='translate({cx:.0f},{height - bottom + 14}) rotate(40)'>{_e(label)}</text>")
        if n_inf:
            svg.append(f"<text x='{cx:.0f}' y='14' text-anchor='middle' class='inf'>{n_inf}&#215; inf</text>")
        if not vals:
            svg.append(f"<text x='{cx:.0f}' y='{y(top / 2):.0f}' text-anchor='middle' class='note'>n/a</text>")
            continue
        q1, med, q3 = (float(v) for v in np.percentile(vals, [25, 50, 75]))
        lo_lim, hi_lim = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
        inside = [v for v in vals if lo_lim <= v <= hi_lim]
        lo, hi = min(inside), max(inside)
        tip = (f"{label}: n={len(vals)}, median {med:.4g}, quartiles {q1:.4g}-{q3:.4g}, range "
               f"{min(vals):.4g}-{max(vals):.4g}" + (f", {n_inf} inf" if n_inf else ""))
        svg.append(f"<g><title>{_e(tip)}</title>"
                   f"<line x1='{cx:.1f}' x2='{cx:.1f}' y1='{y(hi):.1f}' y2='{y(lo):.1f}' class='whisker'/>"
                   f"<rect x='{cx - 16:.1f}' y='{y(q3):.1f}' width='32' height='{max(y(q1) - y(q3), 1):.1f}' class='box'/>"
                   f"<line x1='{cx - 16:.1f}' x2='{cx + 16:.1f}' y1='{y(med):.1f}' y2='{y(med):.1f}' class='median'/>")
        for v in vals:
            if not lo_lim <= v <= hi_lim:
                svg.append(f"<circle cx='{cx:.1f}' cy='{y(v):.1f}' r='2.5' class='outlier'/>")
        svg.append("</g>")
    svg.append("</svg>")
    return "<div class='plot'>" + "".join(svg) + "</div>"


# ------------------------------------------------------------------------------------------ helpers


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _fmt(value) -> str:
    v = _float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= v)


def _e(text) -> str:
    return html.escape(str(text), quote=True)


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left;white-space:nowrap}thead th{background:#eef;cursor:pointer}
table.agg thead th{cursor:default}.note{color:#666;font-size:90%;text-align:left}
tr.failed td{background:#fdd}tr.zero td{background:#ffe9c7}.warn{background:#fff3cd;padding:6px 10px}
svg text{font-size:11px;fill:#333}svg .grid{stroke:#e3e3e3}svg .box{fill:#9ecae1;stroke:#3182bd}
svg .median{stroke:#08306b;stroke-width:2}svg .whisker{stroke:#3182bd}svg .outlier{fill:#e6550d}
svg .inf{fill:#c00}figure{display:inline-block;margin:6px}img{max-width:900px;border:1px solid #ccc}
"""

_JS = """
function sortBy(th){
  var table=th.closest('table'),body=table.tBodies[0],col=th.cellIndex;
  var dir=th.dataset.dir==='asc'?'desc':'asc';
  for(var h of th.parentNode.children){delete h.dataset.dir;}
  th.dataset.dir=dir;
  var rows=Array.from(body.rows);
  function key(r){var c=r.cells[col];
    return c.dataset.v!==undefined?Number(c.dataset.v):(c.dataset.s!==undefined?c.dataset.s:c.textContent);}
  rows.sort(function(a,b){var x=key(a),y=key(b);
    if(typeof x==='number'&&isNaN(x))return 1;if(typeof y==='number'&&isNaN(y))return -1;
    var c=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));
    return dir==='asc'?c:-c;});
  rows.forEach(function(r){body.appendChild(r);});
}
"""
