"""The Learn2Reg 2020 layout of the abdominal CT task (before the dataset JSON): ``Training/img/img0001.nii.gz``,
``Training/label/label0001.nii.gz`` and a CSV of pairs, loaded as a :class:`~l2r_submit.core.dataset.Dataset`."""

from __future__ import annotations

import csv
import io as _io
import os
from pathlib import Path

from .contract import L2R_SHAPE
from .dataset import Case, Dataset, Pair, inside_root


def load_2020(root: str | os.PathLike, pairs_csv: str | os.PathLike) -> Dataset:
    """The 2020 layout: ``Training/img/img0001.nii.gz``, ``Training/label/label0001.nii.gz``, and a CSV
    with columns ``fixed,moving`` (integer ids). Pairs land in split ``val``.

    Raises:
        ValueError: unreadable CSV, missing columns, non-integer ids.
    """
    root_path = Path(root)
    csv_path = Path(pairs_csv)
    if not root_path.is_dir():
        raise ValueError(f"{root_path}: data folder not found (the 2020 layout's root: Training/img, Training/label)")
    if not csv_path.is_file():
        raise ValueError(f"{csv_path}: file not found")
    try:
        text = csv_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{csv_path}: not UTF-8 text") from None
    with _io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if not {"fixed", "moving"} <= set(fields):
            raise ValueError(f"{csv_path}: expected columns 'fixed,moving', found {fields}")
        pairs = []
        for n, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            try:
                ids = [f"{int(row['fixed']):04d}", f"{int(row['moving']):04d}"]
            except ValueError:
                raise ValueError(f"{csv_path}: line {n}: ids must be integers, got {row}") from None
            cases = [Case(i, "0000", inside_root(root_path, f"Training/img/img{i}.nii.gz", str(csv_path)),
                          inside_root(root_path, f"Training/label/label{i}.nii.gz", str(csv_path))) for i in ids]
            pairs.append(Pair(*cases))
    return Dataset(root=root_path, name="CT_abdominal_2020", shape=L2R_SHAPE,
                   splits={"val": pairs, "test": []}, source=csv_path)
