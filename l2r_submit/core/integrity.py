"""The integrity report of a dataset (``l2r check``): every file that work would need, before any work."""

from __future__ import annotations

from pathlib import Path

from .dataset import Dataset


LABELLED_SPLITS = ("val", "eval")
"""Splits whose label maps must exist (they are scored); test labels are hidden by the organisers."""


def integrity_report(ds: Dataset, split: str | None = None, labels: bool = True) -> list[str]:
    """Problems that would stop work, one line each: unknown keys are only listed, missing files block.

    Checks the images of every split's pairs (only ``split``'s when given), the training images and
    labels, and the label maps of the splits that are scored (``val``, ``eval``), never the test labels.

    Returns:
        Lines, each starting with ``error:`` or ``note:``.

    Raises:
        ValueError: ``split`` is not a split of this dataset (one line, naming the file).
    """
    lines = [f"note: unknown top-level key '{k}' ignored" for k in ds.unknown_keys]
    if split is not None:
        ds.pairs(split)  # raises on an unknown split
    names = [split] if split is not None else list(ds.splits)
    paths: dict[Path, None] = {}
    for name in names:
        for p in ds.splits[name]:
            for c in (p.fixed, p.moving):
                paths[c.image] = None
                if labels and name in LABELLED_SPLITS:
                    paths[c.label] = None
    for c in ds.training:
        paths[c.image] = None
        if labels:
            paths[c.label] = None
    for path in paths:
        if not path.exists():
            lines.append(f"error: missing file {path}")
    return lines
