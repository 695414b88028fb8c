"""Seconds per pair of the evaluator (1 worker) against the plain official computation.

Full 192 x 160 x 256 volumes of test_data/, labels 1-13, a smooth random field per pair (max 6
voxels). Each side gets its label maps as it reads them (ours: C-ordered int32 from io.read_labels;
plain: nibabel get_fdata() float64, as the official evaluator holds them); file reading is not timed. Prints the per-pair
times, the speed-up, and whether every per-label Dice/HD95 and the SDlogJ are identical.

    python benchmarks/evaluate_bench.py [--repeats 2]
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import click
import nibabel as nib
import numpy as np

from l2r_submit import dataset, io, reference, scoring
from l2r_submit.synthetic import smooth_random_disp

ROOT = Path(__file__).resolve().parents[1]


@click.command()
@click.option("--repeats", default=2, show_default=True, help="Timed runs per pair (the best is kept).")
def main(repeats: int) -> None:
    ds = dataset.load(ROOT / "test_data" / "AbdomenCTCT_dataset.json")
    labels = tuple(range(1, 14))
    ours_t, plain_t, identical = [], [], True
    for n, pair in enumerate(ds.pairs("val")):
        fixed = io.read_labels(pair.fixed.label)
        moving = io.read_labels(pair.moving.label)
        fixed_plain = nib.load(pair.fixed.label).get_fdata()
        moving_plain = nib.load(pair.moving.label).get_fdata()
        disp = smooth_random_disp(100 + n, ds.shape, 6.0)
        best_ours = best_plain = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            case = scoring.score_case(fixed, moving, disp, dataset.DEFAULT_METRICS)
            best_ours = min(best_ours, time.perf_counter() - t)
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = reference.plain_case(fixed_plain, moving_plain, disp, labels)
            best_plain = min(best_plain, time.perf_counter() - t)
        same = all(np.array_equal(np.asarray(case[k]["detailed"]), np.asarray(ref[k][1]), equal_nan=True)
                   for k in ("DSC", "HD95")) and case["LogJacDetStd"]["mean"] == ref["LogJacDetStd"][0]
        identical &= same
        ours_t.append(best_ours)
        plain_t.append(best_plain)
        print(f"{pair.key}: ours {best_ours:6.2f} s   plain {best_plain:6.2f} s   "
              f"x{best_plain / best_ours:4.1f}   identical={same}   "
              f"DSC {case['DSC']['mean']:.4f} HD95 {case['HD95']['mean']:.3f} SDlogJ {case['LogJacDetStd']['mean']:.5f}")
    print(f"mean seconds per pair: ours {np.mean(ours_t):.2f}, plain {np.mean(plain_t):.2f}, "
          f"speed-up x{np.mean(plain_t) / np.mean(ours_t):.1f}, all values identical: {identical}")


if __name__ == "__main__":
    main()
