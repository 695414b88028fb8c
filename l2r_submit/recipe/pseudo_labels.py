"""Pseudo-labels: the segmenter's label map of every case of one or more datasets (``l2r segment predict``).

One label map per case of every dataset's ``training`` and ``test`` lists, named ``OUT/<the case's image
file name>`` (what :func:`l2r_submit.training.data.folder_labels` looks up), uint8, challenge ids (the
segmenter's class k is challenge label k; the paper's segmenter has classes 0..11, so 12 and 13 are
never predicted), with the image's affine. Whole-volume inference, one pass per case (no sliding
window: the paper's segmenter sees the whole 192x160x256 volume, as the authors predicted), the argmax
of the class scores (:func:`l2r_submit.nets.segnet.segment`).

Each file is written atomically and recorded in ``OUT/pseudo_labels.json`` (the checkpoint's sha256; per
file, its image's path, size and mtime and the label map's size and sha256; ``made_before``: the names of
every file an earlier run wrote, whatever its checkpoint). A rerun skips a file only
when that record says it was made by the same checkpoint from the same image and the file still holds
what was written (a killed run is resumed by running it again); any other file of a case is made again,
and ``overwrite`` makes every one again. A file the record does not list is never replaced without
``overwrite``, and an input of the run (an image or a true label map) never. A case that fails
(unreadable image, ...) is reported in one line and the others go on.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core import io
from ..core.dataset import Case, Dataset
from ..core.folders import check_writable, clean_stale_tmp
from ..registration.run_record import sha256

RECORD = "pseudo_labels.json"


@dataclass
class Summary:
    """What a prediction run did: file names written and skipped, and (name, one-line problem) failed."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    redone: int = 0  # files that existed but were not recorded as made by this checkpoint from this image

    @property
    def exit_code(self) -> int:
        """0 when every case has its label map, 1 when some failed."""
        return 1 if self.failed else 0


def cases_to_predict(datasets: Sequence[Dataset]) -> list[Case]:
    """Every case of the datasets' training and test lists, once per image file name, in order.

    Raises:
        ValueError: two different images with the same file name (their label maps would collide).
    """
    seen: dict[str, Case] = {}
    for ds in datasets:
        for case in [*ds.training, *ds.test_images]:
            other = seen.get(case.image.name)
            if other is not None and other.image.resolve() != case.image.resolve():
                raise ValueError(f"{case.image}: same file name as {other.image}; their pseudo-labels would "
                                 "be one file (give the images unique names)")
            seen.setdefault(case.image.name, case)
    return list(seen.values())


def _image_stamp(case: Case) -> dict:
    st = case.image.stat()
    return {"image": str(case.image.absolute()), "image_size": st.st_size, "image_mtime_ns": st.st_mtime_ns}


def _kept(record: dict, name: str, case: Case, out_dir: Path) -> bool:
    """The label map ``name`` is as :func:`predict` recorded it, from ``case``'s image as it is now."""
    entry = record.get("files", {}).get(name)
    path = out_dir / name
    try:
        return (isinstance(entry, dict) and path.is_file() and {k: entry.get(k) for k in _image_stamp(case)}
                == _image_stamp(case) and entry.get("size") == path.stat().st_size
                and entry.get("sha256") == sha256(path))
    except OSError:
        return False


def check_replaceable(cases: Sequence[Case], out_dir: Path, ours: set[str], overwrite: bool) -> None:
    """Before any case: no label map may replace an input of the run (``--out`` naming the folder of the
    images or of the true labels, whose file names are the same), and without ``overwrite`` no file that
    ``pseudo_labels.json`` does not list (``ours``: made by an earlier ``segment predict``, whatever its
    checkpoint) may be replaced.

    Raises:
        ValueError: one line naming the first such file and what it is.
    """
    def inode(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_dev, st.st_ino

    inputs = {inode(p): p for c in cases for p in (c.image, c.label) if p is not None}
    inputs.pop(None, None)
    existing = [c.image.name for c in cases if inode(out_dir / c.image.name) is not None]
    for name in existing:
        source = inputs.get(inode(out_dir / name))
        if source is not None:
            raise ValueError(f"{out_dir / name}: --out would overwrite an input of this run ({source}); write "
                             "the pseudo-labels to a folder of their own")
    foreign = [name for name in existing if name not in ours]
    if foreign and not overwrite:
        raise ValueError(f"{out_dir}: {len(foreign)} files that {RECORD} does not list as made by l2r segment "
                         f"predict would be replaced (first: {foreign[0]}); write to a folder of their own, or pass "
                         "--overwrite to replace them")


def recorded(out_dir: Path) -> int:
    """How many label maps ``out_dir``'s record lists as written (0 without a readable record)."""
    try:
        files = json.loads((out_dir / RECORD).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return 0
    return sum(isinstance(e, dict) and "sha256" in e for e in files.values()) if isinstance(files, dict) else 0


def _save_record(out_dir: Path, record: dict) -> None:
    text = json.dumps(record, indent=2) + "\n"
    io.atomic_write(out_dir / RECORD, lambda tmp: Path(tmp).write_text(text))


def predict(checkpoint: str | os.PathLike, datasets: Sequence[Dataset], out_dir: Path, device: str = "auto",
            threads: int | None = None, progress: bool = True, overwrite: bool = False) -> Summary:
    """Write the pseudo-labels of every case (see the module docstring).

    Raises:
        ValueError: an unreadable checkpoint, colliding image names, an unwritable ``out_dir``, a file it
            must not replace (:func:`check_replaceable`), before any case is done.
    """
    import torch

    from ..core import runtime
    from ..nets import seg_checkpoint, segnet

    cases = cases_to_predict(datasets)
    runtime.configure_threads(threads)
    dev = runtime.resolve_device(device)
    net, _ = seg_checkpoint.load(checkpoint, map_location=dev)
    check_writable(out_dir, "--out")
    clean_stale_tmp(out_dir)
    summary = Summary()
    ckpt_sha = sha256(Path(checkpoint))
    try:
        record = json.loads((out_dir / RECORD).read_text())
    except (OSError, ValueError):
        record = {}
    record = record if isinstance(record, dict) else {}
    earlier = [n for key in ("files", "made_before") if isinstance(record.get(key), (dict, list)) for n in record[key]]
    ours = {n for n in earlier if isinstance(n, str)}  # every file a segment predict wrote here, any checkpoint
    check_replaceable(cases, out_dir, ours, overwrite)
    if record.get("checkpoint_sha256") != ckpt_sha:
        record = {}  # another checkpoint's (or no) record: nothing in the folder is known to be this one's
    record = {"checkpoint": str(checkpoint), "checkpoint_sha256": ckpt_sha,
              "files": record.get("files", {}) if isinstance(record.get("files"), dict) else {},
              "made_before": sorted(ours)}  # kept across checkpoints: they stay ours to replace
    keep = {c.image.name for c in cases if not overwrite and _kept(record, c.image.name, c, out_dir)}
    todo = [c for c in cases if c.image.name not in keep]
    summary.skipped = [c.image.name for c in cases if c.image.name in keep]
    summary.redone = sum((out_dir / c.image.name).exists() for c in todo)
    from tqdm import tqdm

    for case in tqdm(todo, desc="pseudo-labels", file=sys.stderr, disable=not progress):
        name = case.image.name
        try:
            vol = io.read_volume(case.image, np.float32)
            with torch.inference_mode():
                labels = segnet.segment(net, torch.from_numpy(vol.array)[None, None].to(dev))[0]
            record["files"][name] = {**_image_stamp(case), "writing": True}  # listed first: a stop between the
            _save_record(out_dir, record)  # file's rename and the record leaves a file the record calls ours
            path = io.write_label_map(labels.cpu().numpy().astype(np.uint8), vol.affine, out_dir / name)
            record["files"][name] = {**_image_stamp(case), "size": path.stat().st_size, "sha256": sha256(path)}
            _save_record(out_dir, record)
        except (ValueError, OSError, RuntimeError) as exc:
            line = io.one_line(exc, 300) or type(exc).__name__
            summary.failed.append((name, line))
            print(f"error: {name}: {line}", file=sys.stderr)
            continue
        summary.written.append(name)
    return summary
