"""Evaluate a folder of displacement fields: find files, score pairs in parallel, write the outputs.

Python API::

    from l2r_submit import dataset, evaluate
    ds = dataset.load("test_data/AbdomenCTCT_dataset.json")
    result = evaluate.run(evaluate.EvalConfig(ds, "out/", split="val"))
    evaluate.write_outputs(result, "metrics.json")
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from . import io, scoring
from .dataset import Dataset, Pair

EVAL_VERSION = "2.0"


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate.

    Attributes:
        dataset: pairs, shape and metric specs.
        disp_dir: folder of ``disp_*`` files.
        split: ``val``/``test``/``eval``; None picks as :meth:`Dataset.pairs` does.
        protocol: ``2022`` (current evaluator) or ``2020`` (2020 npz, ddof 1, 0.3 quantiles).
        missing: ``error`` stops before any work when a field is missing; ``zero`` scores it as a zero field.
        workers: parallel processes (1 = in this process).
        progress: show a progress bar on stderr.
    """

    dataset: Dataset
    disp_dir: Path
    split: str | None = None
    protocol: str = "2022"
    missing: str = "error"
    workers: int = 1
    progress: bool = True


@dataclass
class EvalResult:
    """Official metrics dict (``name``, ``aggregates``, ``cases``, ``eval_version``) plus bookkeeping."""

    metrics: dict
    failed: dict[str, str] = field(default_factory=dict)
    zero_filled: list[str] = field(default_factory=list)


def find_disp(disp_dir: Path, pair: Pair, protocol: str) -> Path | None:
    """The field file of a pair: long name first, then the short one; .npz before .nii.gz (2020: .npz only)."""
    exts = (".npz",) if protocol == "2020" else (".npz", ".nii.gz")
    for stem in io.disp_names(pair.fixed.id, pair.moving.id, "both", pair.fixed.modality, pair.moving.modality):
        for ext in exts:
            path = disp_dir / (stem + ext)
            if path.is_file():
                return path
    return None


def _score_pair(pair: Pair, disp_path: Path | None, shape: tuple, specs: tuple, protocol: str) -> dict:
    if disp_path is None:
        disp = np.zeros((3, *shape), np.float32)
    else:
        disp = io.read_disp(disp_path, shape, protocol)
    fixed_seg = io.read_labels(pair.fixed.label)
    moving_seg = io.read_labels(pair.moving.label)
    return scoring.score_case(fixed_seg, moving_seg, disp, specs)


def _job(args: tuple) -> tuple[str, dict | None, str | None]:
    pair = args[0]
    try:
        return pair.key, _score_pair(*args), None
    except ValueError as exc:
        return pair.key, None, str(exc)
    except MemoryError:
        return pair.key, None, "out of memory"


def run(cfg: EvalConfig) -> EvalResult:
    """Evaluate every pair of the split.

    Raises:
        ValueError: before any work, listing in one message every missing label file, or every missing
            field when ``missing='error'``. Per-pair problems (bad shape, dtype, NaNs) do not raise: the
            pair is recorded in ``EvalResult.failed`` and left out of the aggregates.
    """
    ds = cfg.dataset
    disp_dir = Path(cfg.disp_dir)
    if not disp_dir.is_dir():
        raise ValueError(f"{disp_dir}: displacement folder not found")
    pairs = ds.pairs(cfg.split)
    if not pairs:
        raise ValueError(f"{ds.source}: no pairs in split '{cfg.split or 'default'}'")
    missing_labels = ds.missing_files(pairs, images=False, labels=True)
    if missing_labels:
        raise ValueError("missing label files: " + ", ".join(map(str, missing_labels)))
    found = {p.key: find_disp(disp_dir, p, cfg.protocol) for p in pairs}
    absent = [k for k, v in found.items() if v is None]
    if absent and cfg.missing != "zero":
        names = [io.disp_names(p.fixed.id, p.moving.id, "long")[0] for p in pairs if found[p.key] is None]
        raise ValueError(f"{disp_dir}: {len(absent)} of {len(pairs)} displacement fields missing: "
                         f"{', '.join(names)} (use --missing zero to score them as zero fields)")
    jobs = [(p, found[p.key], ds.shape, ds.metrics, cfg.protocol) for p in pairs]
    cases: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for key, case, err in _progress(_results(jobs, cfg.workers), len(jobs), cfg.progress):
        if err is None:
            cases[key] = case
        else:
            failed[key] = err
    cases = {p.key: cases[p.key] for p in pairs if p.key in cases}  # pair order, whatever the finish order
    metrics = {
        "name": ds.name,
        "aggregates": scoring.aggregate(cases, ds.metrics, cfg.protocol),
        "cases": cases,
        "eval_version": EVAL_VERSION,
        "protocol": cfg.protocol,
        "failed": failed,
        "zero_filled": absent,
    }
    return EvalResult(metrics, failed, absent)


def _results(jobs: list, workers: int) -> Iterator[tuple]:
    if workers <= 1 or len(jobs) == 1:
        yield from map(_job, jobs)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        yield from pool.map(_job, jobs)


def _progress(it: Iterator, total: int, enabled: bool) -> Iterator:
    from tqdm import tqdm

    return tqdm(it, total=total, desc="evaluate", unit="pair", file=sys.stderr, disable=not enabled)


# ----------------------------------------------------------------------------------------- outputs


def write_outputs(result: EvalResult, json_path: str | os.PathLike, csv_path: str | os.PathLike | None = None) -> None:
    """Write ``metrics.json`` (official schema, inf/NaN as JSON Infinity/NaN) and a per-pair CSV, atomically."""
    text = json.dumps(result.metrics, indent=4, allow_nan=True)
    io.atomic_write(json_path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    if csv_path is not None:
        table = csv_table(result.metrics)
        io.atomic_write(csv_path, lambda tmp: Path(tmp).write_text(table, encoding="utf-8"))


def csv_table(metrics: dict) -> str:
    """One row per pair: case key, every scalar metric, vanished labels."""
    cases = metrics["cases"]
    names = [k for k in next(iter(cases.values()), {}) if isinstance(cases[next(iter(cases))][k], dict)]
    buf = _io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", *names, "vanished_labels"])
    for key, case in cases.items():
        writer.writerow([key, *[f"{case[n]['mean']:.6f}" for n in names],
                         " ".join(map(str, case.get("vanished_labels", [])))])
    for key, err in metrics.get("failed", {}).items():
        writer.writerow([key, *["" for _ in names], f"FAILED: {err}"])
    return buf.getvalue()


def summary_table(metrics: dict) -> str:
    """A short human-readable table of the aggregates."""
    lines = [f"{'metric':<22}{'mean':>12}{'std':>12}{'30':>12}"]
    for name, agg in metrics["aggregates"].items():
        if "std" in agg:
            lines.append(f"{name:<22}{_fmt(agg['mean'])}{_fmt(agg['std'])}{_fmt(agg['30'])}")
        else:
            lines.append(f"{name:<22}{_fmt(agg['mean'])}   ({agg['entries']} pair-label entries)")
    vanished = {k: c["vanished_labels"] for k, c in metrics["cases"].items() if c.get("vanished_labels")}
    for key, labels in vanished.items():
        lines.append(f"note: {key}: labels {labels} vanished after warping, so HD95 is inf")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:>12.4f}" if math.isfinite(x) else f"{x!s:>12}"
