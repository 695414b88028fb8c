"""Time of the checks ``l2r train`` makes before training (:mod:`l2r_submit.training.preflight`).

Default: the README's small run on ``test_data`` (``--final-submission``: its 6 images and 6 label maps).
``--cases N``: a dataset of N training cases as large as the paper's recipe (~1,100 images). Each case is a
hard link to one CT-like image made from ``test_data``'s first image with Gaussian noise of 60 HU added (about
11 MB as ``.nii.gz``, as a real abdominal CT; the smooth ``test_data`` images compress to 3 MB) and to its
label map, so the folder takes 11 MB whatever N. The files are read from the page cache after the first
round: this times the CPU work (decompression, checks), not a cold disk.

Last, the same check at a second start of a run (``--resume``): with the run folder's record of the files
read (:data:`l2r_submit.training.preflight.RECORD_NAME`), only the headers and the record are read.

    python benchmarks/preflight_bench.py [--cases 1100] [--threads 1,2] [--repeats 2]
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from l2r_submit.core import dataset, integrity, io
from l2r_submit.training import preflight, train

ROOT = Path(__file__).resolve().parents[1]


def big_dataset(folder: Path, n: int) -> Path:
    """A dataset JSON of ``n`` training cases (hard links to one noisy image and one label map), 1 val pair."""
    source = ROOT / "test_data" / "imagesTr" / "AbdomenCTCT_0001_0000.nii.gz"
    vol = io.read_volume(source)
    noisy = vol.array.astype(np.float32) + np.random.default_rng(0).normal(0, 60, vol.array.shape)
    io.write_volume(folder / "image.nii.gz", noisy.round().astype(np.int16), vol.affine)
    label = io.read_label_volume(str(source).replace("images", "labels"))
    io.write_label_map(label.array, label.affine, folder / "label.nii.gz")
    training = []
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir()
    for i in range(1, n + 1):
        name = f"AbdomenCTCT_{i:04d}_0000.nii.gz"
        os.link(folder / "image.nii.gz", folder / "imagesTr" / name)
        os.link(folder / "label.nii.gz", folder / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    pair = {"fixed": "./imagesTr/AbdomenCTCT_0001_0000.nii.gz", "moving": "./imagesTr/AbdomenCTCT_0002_0000.nii.gz"}
    spec = {"name": "bench", "tensorImageShape": {"0": list(vol.array.shape)}, "training": training,
            "registration_val": [pair], "registration_test": []}
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder / "dataset.json"


@click.command()
@click.option("--cases", type=int, default=0, help="Training cases of a generated dataset (0: test_data).")
@click.option("--threads", default="1,2", help="Files read at once, comma-separated settings.")
@click.option("--repeats", type=int, default=2)
def main(cases: int, threads: str, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = big_dataset(Path(tmp), cases) if cases else ROOT / "test_data" / "AbdomenCTCT_dataset.json"
        ds = dataset.load(path)
        files = preflight.run_files(ds, train.training_cases(ds, False), lambda c: c.label)
        for _ in range(repeats):
            t = time.perf_counter()
            integrity.file_problems(files, ds.shape, headers=True)
            print(f"{len(files)} files, headers only: {time.perf_counter() - t:.2f} s")
            for n in (int(v) for v in threads.split(",")):
                t = time.perf_counter()
                preflight.check_files(files, ds, 14, threads=n)
                print(f"{len(files)} files, headers and full reads, {n} thread(s): {time.perf_counter() - t:.2f} s")
        record = Path(tmp) / preflight.RECORD_NAME  # a run folder's record: what a --resume finds there
        preflight.check_files(files, ds, 14, threads=1, record=record)
        t = time.perf_counter()
        preflight.check_files(files, ds, 14, threads=1, record=record)
        print(f"{len(files)} files, a second start of the run (--resume: nothing changed, nothing read again): "
              f"{time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
