"""Pseudo-labels: the segmenter's label map of every case of one or more datasets (``l2r segment predict``).

One label map per case of every dataset's ``training`` and ``test`` lists, named ``OUT/<the case's image
file name>`` (what :func:`l2r_submit.training.data.folder_labels` looks up), uint8, challenge ids (the
segmenter's class k is challenge label k; the paper's segmenter has classes 0..11, so 12 and 13 are
never predicted), with the image's affine. Whole-volume inference, one pass per case (no sliding
window: the paper's segmenter sees the whole 192x160x256 volume, as the authors predicted), the argmax
of the class scores (:func:`l2r_submit.nets.segnet.segment`).

Each file is written atomically; a file that exists is skipped (a killed run is resumed by running it
again); a case that fails (unreadable image, ...) is reported in one line and the others go on.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core import io
from ..core.dataset import Case, Dataset
from ..core.folders import check_writable, clean_stale_tmp


@dataclass
class Summary:
    """What a prediction run did: file names written and skipped, and (name, one-line problem) failed."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

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


def predict(checkpoint: str | os.PathLike, datasets: Sequence[Dataset], out_dir: Path, device: str = "auto",
            threads: int | None = None, progress: bool = True) -> Summary:
    """Write the pseudo-labels of every case (see the module docstring).

    Raises:
        ValueError: an unreadable checkpoint, colliding image names, an unwritable ``out_dir`` (before any
            case is done).
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
    todo = [c for c in cases if not (out_dir / c.image.name).exists()]
    summary.skipped = [c.image.name for c in cases if (out_dir / c.image.name).exists()]
    from tqdm import tqdm

    for case in tqdm(todo, desc="pseudo-labels", file=sys.stderr, disable=not progress):
        name = case.image.name
        try:
            vol = io.read_volume(case.image, np.float32)
            with torch.inference_mode():
                labels = segnet.segment(net, torch.from_numpy(vol.array)[None, None].to(dev))[0]
            io.write_label_map(labels.cpu().numpy().astype(np.uint8), vol.affine, out_dir / name)
        except (ValueError, OSError, RuntimeError) as exc:
            line = io.one_line(exc, 300) or type(exc).__name__
            summary.failed.append((name, line))
            print(f"error: {name}: {line}", file=sys.stderr)
            continue
        summary.written.append(name)
    return summary
