"""What an evaluation scores: one entry of an evaluation config's ``evaluation_methods`` (output name,
metric kind, labels), the default set of the AbdomenCTCT task, and the check of ``evaluation_methods``
as the official evaluator reads it; the labels a dataset JSON scores.
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


def reads_labels(specs: tuple[MetricSpec, ...]) -> bool:
    """Whether any metric reads label maps (Dice, HD95): not for a label-free task, scored on SDlogJ alone."""
    return any(s.metric in ("dice", "hd95") for s in specs)


def default_metrics(labels: tuple[int, ...]) -> tuple[MetricSpec, ...]:
    """SDlogJ, and Dice and HD95 of ``labels`` when there are any (a label-free task: SDlogJ only)."""
    if not labels:
        return (MetricSpec("LogJacDetStd", "sdlogj"),)
    return (MetricSpec("LogJacDetStd", "sdlogj"), MetricSpec("DSC", "dice", labels),
            MetricSpec("HD95", "hd95", labels))


def labels_of_dataset(data: dict, path: Path) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The labels to score: the non-zero keys of the dataset JSON's ``labels``.

    ``labels`` is ``{"1": "spleen", ...}`` or, per modality, ``{"0": {"1": "spleen", ...}}`` (the
    AbdomenCTCT file); per-modality sets are joined. Without ``labels`` the AbdomenCTCT set 1..13
    is used and a note says so.

    ``labels`` holding no non-zero key (``{}``, as Learn2Reg's label-free lung tasks have) means no label
    to score: SDlogJ alone.

    Raises:
        ValueError: ``labels`` that is not an object of integer keys, or a negative key.
    """
    if "labels" not in data:
        return L2R_LABELS, ("no 'labels' key: scoring the AbdomenCTCT labels 1..13",)
    table = data["labels"]
    if isinstance(table, dict) and table and all(isinstance(v, dict) for v in table.values()):
        keys = [k for sub in table.values() for k in sub]
    elif isinstance(table, dict):
        keys = list(table)
    else:
        raise ValueError(f"{path}: labels: expected an object {{\"1\": \"name\", ...}}, got {type(table).__name__}")
    try:
        values = sorted({int(k) for k in keys})
    except ValueError:
        raise ValueError(f"{path}: labels: keys must be integers, got {sorted(map(str, keys))}") from None
    values = [v for v in values if v != 0]
    if not values:  # {} or background alone: a label-free task (Learn2Reg's LungCT, NLST), registered as any
        return (), ("'labels' names no organ: no Dice or HD95, only SDlogJ is scored",)
    if min(values) < 0:
        raise ValueError(f"{path}: labels: expected positive label keys beside 0, got {sorted(map(str, keys))}")
    return tuple(values), (f"labels scored: {', '.join(map(str, values))} (the non-zero keys of 'labels')",)
