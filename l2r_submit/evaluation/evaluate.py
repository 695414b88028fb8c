"""Evaluate a folder of displacement fields: find files, score pairs in parallel, write the outputs.

Python API::

    from l2r_submit.core import dataset
    from l2r_submit.evaluation import evaluate
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

from ..core import disp_files, io, versions
from ..core.dataset import Dataset, Pair
from ..core.metric_specs import reads_labels
from ..core.selection import select_pairs
from . import scoring
from .label_maps import LabelCache, read_labels

EVAL_VERSION = "2.0"


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate.

    Attributes:
        dataset: pairs, shape and metric specs.
        disp_dir: folder of ``disp_*`` files.
        split: ``val``/``test``/``eval``; None picks as :meth:`Dataset.pairs` does.
        protocol: the official evaluator version whose rules apply (:mod:`l2r_submit.core.versions`):
            ``2025`` (current), ``2024``, ``2022`` or ``2020``.
        missing: ``error`` stops before any work when a field is missing; ``zero`` scores it as a zero field.
        workers: parallel processes (1 = in this process).
        progress: show a progress bar on stderr.
        only: score only these pairs of the split (case keys, or ``FFFF_MMMM`` as ``--pairs`` names them);
            None: all of them.
        zero: pairs scored as zero fields whatever file exists for them, and listed as zero-filled (for
            ``predict --evaluate``: the pairs whose prediction failed in this run, so an earlier run's file
            left in the folder is not taken for this run's result).
    """

    dataset: Dataset
    disp_dir: Path
    split: str | None = None
    protocol: str = versions.DEFAULT
    missing: str = "error"
    workers: int = 1
    progress: bool = True
    only: tuple[str, ...] | None = None
    zero: tuple[str, ...] = ()


@dataclass
class EvalResult:
    """Official metrics dict (``name``, ``aggregates``, ``cases``, ``eval_version``) plus bookkeeping."""

    metrics: dict
    failed: dict[str, str] = field(default_factory=dict)
    zero_filled: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_disp(disp_dir: Path, pair: Pair, protocol: str) -> Path | None:
    """The field file the evaluator version ``protocol`` reads for a pair, or None.

    Raises:
        ValueError: two different files are candidates for the pair (e.g. a stale ``.npz`` beside a
            ``.nii.gz``): the evaluator would silently take the first; we name both instead.
    """
    found = versions.get(protocol).candidates(disp_dir, pair.fixed.id, pair.fixed.modality,
                                              pair.moving.id, pair.moving.modality)
    distinct = [p for n, p in enumerate(found) if not any(_same_file(p, q) for q in found[:n])]
    if len(distinct) > 1:
        raise ValueError(f"{pair.key}: two candidate fields, {distinct[0]} and {distinct[1]}; "
                         f"remove the stale one")
    return found[0] if found else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def missing_hint(disp_dir: Path, pair: Pair, protocol: str) -> str:
    """What a missing field is called under ``protocol``, and which other version would find a file."""
    version = versions.get(protocol)
    want = "/".join(s + e for s in version.stems(pair.fixed.id, pair.fixed.modality, pair.moving.id,
                                                    pair.moving.modality) for e in version.exts)
    for other in versions.NAMES:
        if other == protocol:
            continue
        found = versions.get(other).candidates(disp_dir, pair.fixed.id, pair.fixed.modality,
                                               pair.moving.id, pair.moving.modality)
        if found:
            return f"{want} (found {found[0].name}, which --protocol {other} reads)"
    return want


def input_files(ds: Dataset, disp_dir: Path, pairs_csv: Path | None = None) -> list[Path]:
    """The files an evaluation may read, which its outputs must not replace: the dataset JSON or config,
    the pairs CSV, every label map and image the dataset names, the masks of a masked evaluation, and every
    field file (``disp_*.nii.gz``, ``disp_*.npz``) in ``disp_dir``."""
    files = [p for p in (ds.source, pairs_csv) if p is not None]
    files += [path for pairs in ds.splits.values() for p in pairs for c in (p.fixed, p.moving)
              for path in (c.image, c.label)]
    if ds.masked:
        files += [m for pairs in ds.splits.values() for p in pairs if isinstance(m := _mask(ds, p), Path)]
    if disp_dir.is_dir():
        files += sorted(p for p in disp_dir.glob("disp_*") if p.is_file() and p.name.endswith((".nii.gz", ".npz")))
    return files


def _mask(ds: Dataset, pair: Pair) -> Path | ValueError:
    """The fixed image's mask path (masked evaluation), or the error that fails only this pair (a path
    that leaves the data folder)."""
    try:
        return ds.mask_of(pair.fixed)
    except ValueError as exc:
        return exc


def check_output(path: Path) -> None:
    """Refuse an output path that cannot take a file, before any scoring.

    Raises:
        ValueError: ``path`` is a folder, its parent is a file, or the folder is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; --out names the metrics.json file to write")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{path}: cannot be created ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: cannot be written (no write permission in {parent})")


def _score_pair(pair: Pair, disp_path: Path | None, shape: tuple, specs: tuple, protocol: str,
                mask_path: Path | ValueError | None, labels: LabelCache | None = None) -> tuple[dict, list[str]]:
    notes: list[str] = []
    if disp_path is None:
        disp = np.zeros((3, *shape), np.float32)
    else:
        disp = disp_files.read_disp(disp_path, shape, protocol)
    evaluated = {lab for s in specs for lab in s.labels}
    if not reads_labels(specs):  # SDlogJ alone (a label-free task): no label map is read
        empty = np.zeros(shape, np.int32)
        return scoring.score_case(empty, empty, disp, specs, _read_mask(mask_path, shape, pair, notes)), notes
    read = labels.get if labels is not None else read_labels
    fixed_seg, fixed_present = read(pair.fixed.label)
    moving_seg, moving_present = read(pair.moving.label)
    for path, seg in ((pair.fixed.label, fixed_seg), (pair.moving.label, moving_seg)):
        io.check_label_shape(path, seg, shape)  # named here: scoring only knows which side
    if evaluated and not evaluated & set(fixed_present) & set(moving_present):
        empty = [str(p) for p, present in ((pair.fixed.label, fixed_present), (pair.moving.label, moving_present))
                 if not evaluated & set(present)]
        notes.append(f"{pair.key}: no evaluated label is present in both label maps"
                     + (f" (none in {' nor '.join(empty)})" if empty else "")
                     + "; its DSC and HD95 are NaN, as the evaluator gives them")
    for path, present in ((pair.fixed.label, fixed_present), (pair.moving.label, moving_present)):
        if evaluated:
            extra = sorted(set(present) - evaluated - {0})
            if extra:
                shown = ", ".join(map(str, extra[:8])) + (", ..." if len(extra) > 8 else "")
                notes.append(f"{path}: labels {shown} are not evaluated and were ignored")
    return scoring.score_case(fixed_seg, moving_seg, disp, specs, _read_mask(mask_path, shape, pair, notes)), notes


def _read_mask(mask_path: Path | ValueError | None, shape: tuple, pair: Pair, notes: list[str]) -> np.ndarray | None:
    """The fixed image's mask of a masked evaluation (None: unmasked, with a note when the file is missing)."""
    if isinstance(mask_path, ValueError):
        raise mask_path
    if mask_path is None:
        return None
    if not mask_path.is_file():  # the evaluator prints a note and scores SDlogJ unmasked
        notes.append(f"{mask_path}: mask not found; SDlogJ of {pair.key} is unmasked, as the evaluator does")
        return None
    mask = io.read_volume(mask_path).array
    io.check_label_shape(mask_path, mask, shape, "mask")  # masked_evaluation
    return mask


def _job(args: tuple) -> tuple[str, dict | None, str | None, list[str]]:
    pair = args[0]
    try:
        case, notes = _score_pair(*args)
        return pair.key, case, None, notes
    except MemoryError:
        return pair.key, None, "out of memory", []
    except ValueError as exc:
        return pair.key, None, io.one_line(exc), []
    except Exception as exc:  # any fault while scoring one pair fails that pair only
        return pair.key, None, f"cannot be scored ({type(exc).__name__}: {io.one_line(exc)})", []


def run(cfg: EvalConfig) -> EvalResult:
    """Evaluate every pair of the split (or the pairs in ``cfg.only``).

    Raises:
        ValueError: before any work: a pair of ``cfg.only`` not in the split; listing in one message
            every missing label file, or every missing field when ``missing='error'``, or every pair with
            two candidate fields. Per-pair problems
            (bad shape, dtype, NaNs, unreadable files) do not raise: the pair is recorded in
            ``EvalResult.failed`` and left out of the aggregates, and ``metrics["partial"]`` is true.
    """
    ds = cfg.dataset
    version = versions.get(cfg.protocol)
    disp_dir = Path(cfg.disp_dir)
    if not disp_dir.is_dir():
        raise ValueError(f"{disp_dir}: displacement folder not found")
    pairs = ds.pairs(cfg.split)
    if cfg.only is not None:  # named as --pairs names them (FFFF_0000<--MMMM_0000 or FFFF_MMMM); split order kept
        wanted = {p.key for p in select_pairs(ds, cfg.split, cfg.only)}
        pairs = [p for p in pairs if p.key in wanted]
    if not pairs:
        which = [cfg.split] if cfg.split else list(ds.splits)
        raise ValueError(f"{ds.source}: no pairs to score ({', '.join(which)}: empty)")
    missing_labels = ds.missing_files(pairs, images=False, labels=True) if reads_labels(ds.metrics) else []
    if missing_labels:
        raise ValueError("missing label files: " + ", ".join(map(str, missing_labels)))
    found: dict[str, Path | None] = {}
    ambiguous = []
    for p in pairs:
        if p.key in cfg.zero:
            found[p.key] = None
            continue
        try:
            found[p.key] = find_disp(disp_dir, p, version.name)
        except ValueError as exc:
            ambiguous.append(str(exc))
    if ambiguous:
        raise ValueError(f"{disp_dir}: " + "; ".join(ambiguous))
    absent = [k for k, v in found.items() if v is None]
    if absent and cfg.missing != "zero":
        names = [missing_hint(disp_dir, p, version.name) for p in pairs if found[p.key] is None]
        raise ValueError(f"{disp_dir}: {len(absent)} of {len(pairs)} displacement fields missing under "
                         f"evaluator version {version.name}: {', '.join(names)} "
                         f"(use --missing zero to score them as zero fields)")
    jobs = [(p, found[p.key], ds.shape, ds.metrics, version.name, _mask(ds, p) if ds.masked else None)
            for p in pairs]
    cases: dict[str, dict] = {}
    failed: dict[str, str] = {}
    notes: list[str] = []
    for key, case, err, pair_notes in _progress(_results(jobs, cfg.workers), len(jobs), cfg.progress):
        notes += [n for n in pair_notes if n not in notes]
        if err is None:
            cases[key] = case
        else:
            failed[key] = err
    cases = {p.key: cases[p.key] for p in pairs if p.key in cases}  # pair order, whatever the finish order
    failed = {p.key: failed[p.key] for p in pairs if p.key in failed}
    metrics = {
        "name": ds.name,
        "aggregates": scoring.aggregate(cases, ds.metrics, version.name),
        "cases": cases,
        "eval_version": EVAL_VERSION,
        "protocol": version.name,
        "partial": bool(failed or absent),
        "failed": failed,
        "zero_filled": absent,
    }
    return EvalResult(metrics, failed, absent, notes)


def _results(jobs: list, workers: int) -> Iterator[tuple]:
    if workers <= 1 or len(jobs) == 1:  # in this process: each label map is read once
        cache = LabelCache([job[0] for job in jobs])
        yield from (_job((*job, cache)) for job in jobs)
        return
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = [pool.submit(_job, job) for job in jobs]
        for job, fut in zip(jobs, futures):
            try:
                yield fut.result()
            except BrokenProcessPool:  # a worker died (e.g. killed for memory): that pair fails
                yield job[0].key, None, "the worker process scoring this pair died", []


def partial_line(result: EvalResult) -> str | None:
    """One stderr line when the aggregates cover fewer pairs than asked for, or were zero-filled."""
    if not result.metrics.get("partial"):
        return None
    total = len(result.metrics["cases"]) + len(result.failed)
    parts = []
    if result.failed:
        parts.append(f"{len(result.failed)} of {total} pairs failed and are not in the aggregates")
    if result.zero_filled:
        parts.append(f"{len(result.zero_filled)} of {total} scored as zero fields")
    said = "; ".join(parts) or "the aggregates do not cover every pair"
    return f"warning: partial result: {said} (listed in metrics.json)"


def _progress(it: Iterator, total: int, enabled: bool) -> Iterator:
    from tqdm import tqdm

    return tqdm(it, total=total, desc="evaluate", unit="pair", file=sys.stderr, disable=not enabled)


# ----------------------------------------------------------------------------------------- outputs


def write_outputs(result: EvalResult, json_path: str | os.PathLike, csv_path: str | os.PathLike | None = None) -> None:
    """Write ``metrics.json`` (official schema, inf/NaN as JSON Infinity/NaN) and a per-pair CSV, atomically."""
    text = json.dumps(result.metrics, indent=4, allow_nan=True)
    io.atomic_write(json_path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    if csv_path is not None:
        write_csv(result, csv_path)


def write_csv(result: EvalResult, csv_path: str | os.PathLike) -> None:
    """The per-pair CSV (:func:`csv_table`), atomically."""
    table = csv_table(result.metrics)
    io.atomic_write(csv_path, lambda tmp: Path(tmp).write_text(table, encoding="utf-8"))


def csv_table(metrics: dict) -> str:
    """One row per pair: case key, every scalar metric, vanished labels."""
    cases = metrics["cases"]
    names = [k for k in next(iter(cases.values()), {}) if isinstance(cases[next(iter(cases))][k], dict)]
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")  # not the csv module's default \r\n
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
