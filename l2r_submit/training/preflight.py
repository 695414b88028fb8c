"""The files a training run will read, checked before it starts: the checks of ``l2r check --read``
(:func:`l2r_submit.core.integrity.file_problems`) on the run's own files.

Without them a missing label map was a ``KeyError`` traceback in the first batches, or, with batch size 1,
a run that trained those pairs without their Dice term; a missing image or a label map of another shape
stopped the run when the DataLoader reached it, with a torch traceback naming no file; a val label map of
another shape stopped it at the first validation (under ``torchrun``, the other rank then died in gloo); an
image with NaN voxels trained the network into NaN weights.

Two passes: the headers of every file first (does it exist, is it empty, the shape it declares; well under
a millisecond per file), so that a missing or misshapen file is reported at once, then every file read in
full (an image holds no NaN or inf and its gzip stream is whole; a label map holds whole numbers). Under
``torchrun`` each process reads its share of the files and the problems are gathered, so every process stops
with the same line.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from ..core import integrity
from ..core.dataset import Case, Dataset
from .distributed import Dist

RECORD_NAME = "files_read.json"
"""In the run folder: the files read in full and found sound, each with its size and modification time, so
that ``--resume`` reads again only what changed (a recipe-sized dataset took about 100 s to read)."""

MAX_THREADS = 8
"""Files read at once by one process: 2 threads read 1.7x as fast as 1 on a 2-core machine; each holds a
decompressed volume (about 50 MB at 192x160x256), so a many-core machine does not hold dozens."""


def run_files(ds: Dataset, cases: list[Case], label_of: Callable[[Case], Path | None] | None) -> dict[Path, str]:
    """Every file a run reads, with what it is (``image``, ``label map``).

    The images of ``cases`` (the training cases; pass ``[]`` when the items come from elsewhere) and their
    label maps (``label_of(case)``; None: the case has none, or the run trains without labels), then the
    images of the val pairs and, when any val label map exists, all of them (validation scores a pair only
    when both of its label maps exist: a missing one would leave its pairs out of the val Dice silently).
    """
    files: dict[Path, str] = {}
    for case in cases:
        files[case.image] = "image"
        label = label_of(case) if label_of is not None else None
        if label is not None:
            files[label] = "label map"
    val = [c for p in ds.pairs("val") for c in (p.fixed, p.moving)] if "val" in ds.splits else []
    for case in val:
        files.setdefault(case.image, "image")
    if any(c.label.exists() for c in val):
        for case in val:
            files.setdefault(case.label, "label map")
    return files


def trained_labels(ds: Dataset, n_classes: int) -> tuple[int, ...]:
    """The label ids a run trains: the dataset's labels (those it scores) below ``n_classes``."""
    return tuple(lab for lab in _scored(ds) if lab < n_classes)


def _stamp(path: Path, kind: str) -> list:
    st = path.stat()
    return [kind, st.st_size, st.st_mtime_ns]


def _read_record(record: Path | None, context: dict) -> dict[str, dict]:
    """The files an earlier start of this run read in full (path -> ``{"stamp", "notes"}``), when it was made
    under the same ``context`` (shape, labels); {} when there is none or it cannot be used."""
    if record is None or not record.is_file():
        return {}
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}  # unreadable: everything is read again, and the record rewritten
    if not isinstance(data, dict) or data.get("context") != context or not isinstance(data.get("files"), dict):
        return {}
    return {path: entry for path, entry in data["files"].items()  # an entry of another form: read again
            if isinstance(entry, dict) and isinstance(entry.get("notes", []), list)}


def check_files(files: dict[Path, str], ds: Dataset, n_classes: int, dist: Dist = Dist(),
                progress: bool = False, threads: int = 1, record: Path | None = None) -> list[str]:
    """Check ``files`` (:func:`run_files`) as ``l2r check --read`` would: headers first, then full reads.
    ``record``: a file (:data:`RECORD_NAME` in the run folder) listing the files read in full before with
    their size and modification time; a file listed with the same ones is not read again (its headers are
    still checked), and the record is rewritten (by the main process) after every sound check.

    A label map holding values other than 0 and the labels trained (:func:`trained_labels`) gets a note:
    those voxels count as background. ``progress``: a bar on stderr while the files are read (rank 0).
    ``threads``: files read at once by this process (decompression and NumPy release the GIL; at most
    :data:`MAX_THREADS`, each holding a volume).

    Returns:
        The notes (``note: ...`` lines), the same on every process.

    Raises:
        ValueError: the first problem, one line naming the file (for a shape, both shapes), with how many
            more there are.
    """
    _raise_first(integrity.file_problems(files, ds.shape, headers=True), ds)
    labels = trained_labels(ds, n_classes)
    cut = f", the dataset's below loss.n_classes {n_classes}" if labels != _scored(ds) else ""
    what = (f"the labels trained ({integrity.label_ranges(labels)}{cut}): their voxels count as background, as "
            "l2r evaluate ignores values outside the labels it scores")
    context = {"shape": list(ds.shape), "labels": list(labels), "scored": list(_scored(ds))}
    earlier = _read_record(record, context)
    stamps = {path: _stamp(path, kind) for path, kind in files.items()}
    fresh = [path for path in files if earlier.get(str(path), {}).get("stamp") != stamps[path]]
    mine = [(i, path) for i, path in enumerate(fresh) if i % dist.world_size == dist.rank]
    bar = None
    if progress and dist.is_main and mine:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), desc="reading the run's files", file=sys.stderr, leave=False)

    def read(path: Path) -> list[str]:
        return integrity.file_problems({path: files[path]}, ds.shape, read=True, labels=labels, labels_what=what)

    found: list[tuple[int, list[str]]] = []
    with ThreadPoolExecutor(max(1, min(threads, MAX_THREADS))) as pool:
        for (i, _), lines in zip(mine, pool.map(read, [path for _, path in mine])):
            found.append((i, lines))
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    per_file = {fresh[i]: part for rank in dist.gather(found) for i, part in rank}
    lines = [line for path in fresh for line in per_file.get(path, [])]
    _raise_first(lines, ds)
    notes = {path: [line for line in per_file.get(path, []) if line.startswith("note:")] for path in fresh}
    for path in files:
        if path not in notes:  # read before, unchanged: its notes as they were
            notes[path] = list(earlier[str(path)].get("notes", []))
    if record is not None and dist.is_main:
        from ..core.io import atomic_write

        text = json.dumps({"context": context, "files": {str(p): {"stamp": stamps[p], "notes": notes[p]}
                                                         for p in files}}, indent=1)
        try:
            atomic_write(record, lambda tmp: Path(tmp).write_text(text))
        except OSError:
            pass  # only a saving of time is lost: the next start reads every file again
    return [line for path in files for line in notes[path]]


def _scored(ds: Dataset) -> tuple[int, ...]:
    return tuple(sorted({lab for spec in ds.metrics for lab in spec.labels}))


def _raise_first(lines: list[str], ds: Dataset) -> None:
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error:")]
    if errors:
        more = (f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''}: `l2r check --read "
                f"{ds.source}` lists them)") if len(errors) > 1 else ""
        raise ValueError(f"{errors[0]}{more}")
