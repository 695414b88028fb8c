"""Compare a metrics.json with expected results, for reproduction CI.

Expected-results file::

    {"tolerance": {"DSC": 0.02, ...},                  # absolute, per metric
     "aggregates": {"DSC": 0.61, ...},                 # expected means over pairs
     "cases": {"0001_0000<--0004_0000": {"DSC": 0.8, ...}}}

Made from a measured metrics.json by :func:`expected_from_metrics` (``l2r compare --write``).
"""

from __future__ import annotations

import math

DEFAULT_TOLERANCE = {"DSC": 0.02, "HD95": 1.0, "LogJacDetStd": 0.01}


def expected_from_metrics(metrics: dict, tolerance: dict[str, float] | None = None) -> dict:
    """Expected results holding the measured numbers of ``metrics`` for the metrics in ``tolerance``."""
    tol = dict(tolerance or DEFAULT_TOLERANCE)
    return {
        "tolerance": tol,
        "aggregates": {name: metrics["aggregates"][name]["mean"] for name in tol if name in metrics["aggregates"]},
        "cases": {key: {name: case[name]["mean"] for name in tol if name in case}
                  for key, case in metrics["cases"].items()},
    }


def _close(got: float, want: float, tol: float) -> bool:
    if math.isinf(want) or math.isnan(want):
        return got == want or (math.isnan(got) and math.isnan(want))
    return abs(got - want) <= tol


def compare(metrics: dict, expected: dict) -> list[str]:
    """Readable differences, one line each (empty when everything is within tolerance)."""
    problems = []
    tol = expected.get("tolerance", DEFAULT_TOLERANCE)
    rows = [("mean", name, metrics["aggregates"].get(name, {}).get("mean"), want)
            for name, want in expected.get("aggregates", {}).items()]
    for key, wanted in expected.get("cases", {}).items():
        case = metrics["cases"].get(key)
        if case is None:
            problems.append(f"{key}: missing from the metrics (expected {', '.join(wanted)})")
            continue
        rows += [(key, name, case.get(name, {}).get("mean"), want) for name, want in wanted.items()]
    for where, name, got, want in rows:
        if got is None:
            problems.append(f"{where} {name}: missing, expected {want:.4f}")
        elif not _close(float(got), float(want), float(tol.get(name, 0.0))):
            problems.append(f"{where} {name}: got {got:.4f}, expected {want:.4f} +/- {tol.get(name, 0.0)} "
                            f"(off by {float(got) - float(want):+.4f})")
    return problems
