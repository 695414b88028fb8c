"""What an evaluation scores: one entry of an evaluation config's ``evaluation_methods`` (output name,
metric kind, labels), the default set of the AbdomenCTCT task, and the check of ``evaluation_methods``
as the official evaluator reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .contract import L2R_LABELS


@dataclass(frozen=True)
class MetricSpec:
    """One entry of ``evaluation_methods``: output name, metric kind, labels (for dice/hd95)."""

    name: str
    metric: str
    labels: tuple[int, ...] = ()


DEFAULT_METRICS = (
    MetricSpec("LogJacDetStd", "sdlogj"),
    MetricSpec("DSC", "dice", L2R_LABELS),
    MetricSpec("HD95", "hd95", L2R_LABELS),
)


def parse_methods(path: Path, entries: object) -> tuple[MetricSpec, ...]:
    """``evaluation_methods`` checked as the evaluator uses it: a list of objects with a unique string
    ``name``, a supported ``metric`` and, for dice/hd95, a non-empty list of positive integer labels.

    Raises:
        ValueError: the first structural problem, naming the file and the entry.
    """
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: evaluation_methods: expected a non-empty list of objects, got {entries!r}")
    methods = []
    for n, m in enumerate(entries):
        here = f"{path}: evaluation_methods[{n}]"
        if not isinstance(m, dict) or not {"name", "metric"} <= m.keys():
            raise ValueError(f"{here}: expected an object with 'name' and 'metric'")
        if not isinstance(m["name"], str) or not m["name"]:
            raise ValueError(f"{here}: name must be a non-empty string, got {m['name']!r}")
        if m["metric"] not in ("dice", "hd95", "sdlogj"):
            raise ValueError(f"{here}: metric {m['metric']!r} is not supported (supported: dice, hd95, sdlogj)")
        labels: tuple[int, ...] = ()
        if m["metric"] in ("dice", "hd95"):
            raw = m.get("labels")
            if not (isinstance(raw, list) and raw and all(type(v) is int and v > 0 for v in raw)):
                raise ValueError(f"{here}: labels must be a non-empty list of positive integers, got {raw!r}")
            labels = tuple(raw)
        methods.append(MetricSpec(m["name"], m["metric"], labels))
    names = [m.name for m in methods]
    if len(set(names)) != len(names):  # the evaluator refuses this too (28985b7, 2024-08-01)
        raise ValueError(f"{path}: evaluation_methods: names must be unique, got {names}")
    return tuple(methods)
