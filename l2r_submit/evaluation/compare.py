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


def expected_from_metrics(metrics: dict, tolerance: dict[str, float] | None = None, where: str = "metrics") -> dict:
    """Expected results holding the measured numbers of ``metrics`` for the metrics in ``tolerance``.

    Raises:
        ValueError: a result that cannot be a reference, one line naming ``where``: a partial run (failed
            or zero-filled pairs), no pairs, or a NaN (any later NaN would match it).
    """
    tol = dict(tolerance or DEFAULT_TOLERANCE)
    left = {k: len(metrics[k]) for k in ("failed", "zero_filled") if metrics.get(k)}
    if metrics.get("partial") or left:
        said = ", ".join(f"{n} {k.replace('_', '-')}" for k, n in left.items()) or "marked partial"
        raise ValueError(f"{where}: a partial result ({said}) cannot be the expected results; score every pair")
    if not metrics["cases"]:
        raise ValueError(f"{where}: no pairs scored; nothing to expect")
    out = {
        "tolerance": tol,
        "aggregates": {name: metrics["aggregates"][name]["mean"] for name in tol if name in metrics["aggregates"]},
        "cases": {key: {name: case[name]["mean"] for name in tol if name in case}
                  for key, case in metrics["cases"].items()},
    }
    for here, values in [("aggregates", out["aggregates"])] + [(f"cases['{k}']", v) for k, v in out["cases"].items()]:
        for name, value in values.items():
            if isinstance(value, float) and math.isnan(value):
                raise ValueError(f"{where}: {here}.{name} is NaN; an expected value must be a number "
                                 "(a NaN would match any later NaN)")
    return out


def parse_tolerances(items: tuple[str, ...], metrics: dict) -> dict[str, float]:
    """:data:`DEFAULT_TOLERANCE` updated by ``--tol NAME=VALUE`` items.

    Raises:
        ValueError: not NAME=NUMBER, a value that is negative or not finite, or a NAME that is no metric of
            ``metrics`` (aggregates or cases); one line.
    """
    known = set(metrics["aggregates"]) | {name for case in metrics["cases"].values() for name, entry in case.items()
                                          if isinstance(entry, dict) and "mean" in entry}
    tolerance = dict(DEFAULT_TOLERANCE)
    for item in items:
        name, _, text = item.partition("=")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--tol {item}: expected NAME=NUMBER") from None
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--tol {item}: a tolerance must be a finite number >= 0")
        if name not in known:
            raise ValueError(f"--tol {item}: no metric '{name}' in the metrics (they have {', '.join(sorted(known))})")
        tolerance[name] = value
    return tolerance


def check_metrics(data: object, where: str) -> dict:
    """``data`` if it has the shape of a metrics.json (``aggregates`` and ``cases`` objects).

    Raises:
        ValueError: one line naming ``where`` and what is wrong (e.g. a run.json, or swapped arguments).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a metrics.json object, got a JSON {type(data).__name__}")
    if "tolerance" in data and "eval_version" not in data:
        raise ValueError(f"{where}: not a metrics.json: it looks like an expected-results file (are the "
                         "arguments swapped?)")
    if not (isinstance(data.get("aggregates"), dict) and isinstance(data.get("cases"), dict)):
        hint = ""
        if "tolerance" in data:
            hint = " (it looks like an expected-results file: are the arguments swapped?)"
        elif "pairs" in data and "settings" in data:
            hint = " (it looks like a predict run.json; pass the metrics.json that evaluate writes)"
        raise ValueError(f"{where}: not a metrics.json: no 'aggregates' and 'cases' objects{hint}")
    for key, case in data["cases"].items():
        if not isinstance(case, dict):
            raise ValueError(f"{where}: cases['{key}']: expected an object")
        for name, entry in case.items():
            if name != "vanished_labels" and not isinstance(entry, dict):
                raise ValueError(f"{where}: cases['{key}'].{name}: expected an object with 'mean', "
                                 f"got {type(entry).__name__}")
    for name, entry in data["aggregates"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: aggregates.{name}: expected an object with 'mean', got {type(entry).__name__}")
    return data


def check_expected(data: object, where: str) -> dict:
    """``data`` if it has the shape of an expected-results file (numbers under ``tolerance``,
    ``aggregates`` and ``cases``).

    Raises:
        ValueError: one line naming ``where`` and what is wrong.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an expected-results object, got a JSON {type(data).__name__}")
    aggs = data.get("aggregates")
    if "eval_version" in data or (isinstance(aggs, dict) and any(isinstance(v, dict) for v in aggs.values())):
        raise ValueError(f"{where}: this is a metrics.json, not an expected-results file "
                         f"(are the arguments swapped? make one with l2r compare METRICS EXPECTED --write)")
    if not ({"aggregates", "cases"} & data.keys()):
        raise ValueError(f"{where}: not an expected-results file: no 'aggregates' or 'cases'")

    def numbers(obj: object, here: str) -> None:
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: {here}: expected an object of metric names to numbers")
        for name, value in obj.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}: {here}.{name}: expected a number, got {value!r}")

    numbers(data.get("tolerance", {}), "tolerance")
    numbers(data.get("aggregates", {}), "aggregates")
    cases = data.get("cases", {})
    if not isinstance(cases, dict):
        raise ValueError(f"{where}: cases: expected an object of case keys")
    for key, wanted in cases.items():
        numbers(wanted, f"cases['{key}']")
    if not data.get("aggregates") and not any(cases.values()):
        raise ValueError(f"{where}: expects no value at all, so any metrics would pass; make one with "
                         "l2r compare METRICS EXPECTED --write")
    return data


def _close(got: float, want: float, tol: float) -> bool:
    if math.isinf(want) or math.isnan(want):
        return got == want or (math.isnan(got) and math.isnan(want))
    return abs(got - want) <= tol


def compare(metrics: dict, expected: dict) -> list[str]:
    """Readable differences, one line each (empty when everything is within tolerance)."""
    problems = []
    left = {k: len(metrics[k]) for k in ("failed", "zero_filled") if metrics.get(k)}
    if metrics.get("partial") or left:  # a failed or zero-filled pair is not the method's result
        said = ", ".join(f"{n} {k.replace('_', '-')}" for k, n in left.items()) or "marked partial"
        problems.append(f"the metrics are a partial result ({said} pairs): not every pair was registered and "
                        "scored")
    tol = expected.get("tolerance", DEFAULT_TOLERANCE)
    rows = [("mean", name, _mean(metrics["aggregates"].get(name)), want)
            for name, want in expected.get("aggregates", {}).items()]
    for key, wanted in expected.get("cases", {}).items():
        case = metrics["cases"].get(key)
        if case is None:
            problems.append(f"{key}: missing from the metrics (expected {', '.join(wanted)})")
            continue
        rows += [(key, name, _mean(case.get(name)), want) for name, want in wanted.items()]
    for where, name, got, want in rows:
        if got is None or isinstance(got, bool) or not isinstance(got, (int, float)):
            problems.append(f"{where} {name}: missing, expected {want:.4f}")
        elif not _close(float(got), float(want), float(tol.get(name, 0.0))):
            problems.append(f"{where} {name}: got {got:.4f}, expected {want:.4f} +/- {tol.get(name, 0.0)} "
                            f"(off by {float(got) - float(want):+.4f})")
    return problems


def _mean(entry: object) -> object:
    return entry.get("mean") if isinstance(entry, dict) else None
