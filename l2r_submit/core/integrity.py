"""The integrity report of a dataset (``l2r check``): every file that work would need, before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from . import io
from .dataset import Dataset
from .metric_specs import reads_labels


LABELLED_SPLITS = ("val", "eval")
"""Splits whose label maps must exist (they are scored); test labels are hidden by the organisers."""


def integrity_report(ds: Dataset, split: str | None = None, labels: bool = True, read: bool = False,
                     progress: Callable[[Path], None] | None = None) -> list[str]:
    """Problems that would stop work, one line each: unknown keys are only listed, missing files block.

    Checks the images of every split's pairs (only ``split``'s when given), the training images and
    labels, and the label maps of the splits that are scored (``val``, ``eval``), never the test labels;
    with ``masked_evaluation``, the fixed images' masks of the scored splits (a missing mask is a note: the
    evaluator then scores that pair's SDlogJ unmasked). With ``read``, every file that exists is also read
    in full, as predict and evaluate read it: a damaged file (gzip CRC or length, a truncated or malformed
    volume), an image of another shape than the dataset's or with NaN or inf values, a label map of another
    shape or with values that are not whole numbers, a mask of another shape; and a note for a label map
    that holds values other than 0 and the dataset's labels. ``progress`` is called with each file before
    it is read.

    Returns:
        Lines, each starting with ``error:`` or ``note:``.

    Raises:
        ValueError: ``split`` is not a split of this dataset (one line, naming the file).
    """
    lines = [f"note: unknown top-level key '{k}' ignored" for k in ds.unknown_keys]
    if split is not None:
        ds.pairs(split)  # raises on an unknown split
    if "eval" in ds.splits and not ds.splits["eval"]:  # an evaluation config exists to score its pairs
        lines.append(f"error: {ds.source}: eval_pairs is empty: nothing to score")
    names = [split] if split is not None else list(ds.splits)
    masks = labels and ds.masked
    labels = labels and reads_labels(ds.metrics)  # a label-free task needs no label map
    paths: dict[Path, str] = {}  # path -> what it is: image, label map or mask
    image_of: dict[Path, Path] = {}  # label map -> its image
    for name in names:
        for p in ds.splits[name]:
            for c in (p.fixed, p.moving):
                paths[c.image] = "image"
                if labels and name in LABELLED_SPLITS:
                    paths[c.label] = "label map"
                    image_of[c.label] = c.image
            if masks and name in LABELLED_SPLITS:
                try:
                    paths.setdefault(ds.mask_of(p.fixed), "mask")
                except ValueError as exc:  # a mask path that leaves the data folder
                    lines.append(f"error: {exc}")
    for c in ds.training:
        paths[c.image] = "image"
        if labels:
            paths[c.label] = "label map"
            image_of[c.label] = c.image
    known = {lab for spec in ds.metrics for lab in spec.labels}
    what = (f"the dataset's labels ({label_ranges(known)}): l2r evaluate ignores them and l2r train counts "
            "them as background") if known else ""
    return lines + file_problems(paths, ds.shape, image_of, read=read, labels=tuple(known) or None,
                                 labels_what=what, progress=progress)


def file_problems(paths: dict[Path, str], shape: tuple[int, ...], image_of: dict[Path, Path] | None = None,
                  headers: bool = False, read: bool = False, labels: tuple[int, ...] | None = None,
                  labels_what: str = "", progress: Callable[[Path], None] | None = None) -> list[str]:
    """The problems of some files of a dataset, one line each, in the order of ``paths``.

    ``paths`` maps each file to what it is (``image``, ``label map``, ``mask``; a missing mask is a note,
    any other missing or empty file an error). With ``headers``, the shape each existing file declares in its
    header is compared with ``shape`` (the voxels are not read: a fraction of a millisecond per file). With
    ``read``, each existing file is read in full instead (:func:`integrity_report`'s ``read``), and a label
    map that holds values other than 0 and ``labels`` gets a note: ``label values V are not among
    <labels_what>``. ``image_of`` maps a label map to its image, whose affine it is compared with.

    Returns:
        Lines, each starting with ``error:`` or ``note:``.
    """
    image_of = image_of or {}
    lines: list[str] = []
    affines: dict[Path, object] = {}
    for path, kind in paths.items():
        if not path.exists() and kind == "mask":
            lines.append(f"note: {path}: mask not found; SDlogJ of the pairs with this fixed image will be "
                         "unmasked, as the evaluator does")
        elif not path.exists():
            lines.append(f"error: missing file {path}")
        elif path.is_file() and path.stat().st_size == 0:
            lines.append(f"error: {path}: empty file")
        elif read:
            if progress is not None:
                progress(path)
            try:
                affines[path], present = _read_checked(path, kind, shape)
            except ValueError as exc:
                lines.append(f"error: {exc}")
                continue
            if present is not None and labels is not None:
                extra = sorted(set(present) - set(labels) - {0})
                if extra:
                    shown = ", ".join(map(str, extra[:8])) + (", ..." if len(extra) > 8 else "")
                    lines.append(f"note: {path}: label values {shown} are not among {labels_what}")
            image = image_of.get(path)
            if image in affines and not np.allclose(affines[path], affines[image], rtol=1e-3, atol=1e-2):
                lines.append(f"note: {path}: its affine differs from its image's ({image}): the metrics compare "
                             "voxel arrays, so check that this label map belongs to that image")
        elif headers:
            try:
                found = io.volume_shape(path)
                if found is not None:
                    io.check_shape(path, found, shape, kind)
            except ValueError as exc:
                lines.append(f"error: {exc}")
    return lines


def label_ranges(labels: set[int] | tuple[int, ...]) -> str:
    """``{1, 2, 3, 5}`` -> ``1..3, 5``: label ids as runs of consecutive values."""
    runs: list[list[int]] = []
    for value in sorted(labels):
        if runs and runs[-1][1] == value - 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}, {b}" if b == a + 1 else f"{a}..{b}" for a, b in runs)


def _read_checked(path: Path, kind: str, shape: tuple[int, ...]) -> tuple[np.ndarray, list[int] | None]:
    """Read one file as predict (an image) or evaluate (a label map, a mask) would, and check it.

    Returns:
        The file's affine, and for a label map the values it holds (None for other files).

    Raises:
        ValueError: what is wrong, one line naming the file.
    """
    if kind == "label map":
        vol = io.read_label_volume(path)
        io.check_label_shape(path, vol.array, shape)
        return vol.affine, _values(vol.array)
    if kind == "mask":
        vol = io.read_volume(path)
        io.check_label_shape(path, vol.array, shape, "mask")
    else:
        vol = io.read_volume(path, np.float32)
        io.check_image(path, vol.array, shape)
    return vol.affine, None


def _values(seg: np.ndarray) -> list[int]:
    """The distinct values of an integer array (a count when they are small and not negative, else a sort)."""
    if seg.size and seg.min() >= 0 and seg.max() < 1 << 16:
        return np.flatnonzero(np.bincount(seg.ravel())).tolist()
    return np.unique(seg).tolist()
