"""ConvexAdam and our default `l2r predict`, side by side on the val pairs of test_data/, in one run.

ConvexAdam (Siebert, Hansen & Heinrich, MICCAI/WBIR 2021-22; IEEE TMI 2024) is the training-free method that
ranks first on AbdomenCTCT. It runs from the PyPI package `convexAdam` 0.2.0 (`convex_adam_pt`, the MIND-SSC
path) with the package's defaults: mind_r 1, mind_d 2, grid_sp 6, disp_hw 4 (coupled convex search of +/-24
voxels), ic True (inverse consistency), then 80 Adam iterations on a grid_sp_adam 2 grid with lambda_weight
1.25, selected_smooth 0, no masks; raw HU in, as its own `convex_adam()` reads them (nibabel get_fdata);
CPU (float32, which it switches to on CPU). Its field is (I, J, K, 3) in voxels, channel c along array axis c,
a pull map on the fixed grid: our convention as it is (checked below, on the synthetic pairs).

Each method runs in its own process (ConvexAdam in .venv-peer, made by benchmarks/setup_peer.sh; ours is
`l2r predict` with its defaults, as benchmarks/predict_bench.py runs it), whose peak RSS is reported; seconds
per pair include reading the images and writing the `.nii.gz` field for both. Both are scored by our
evaluator; end-point error (EPE, voxels) against the true fields of the synthetic pairs, over all voxels and
inside the fixed body (HU > -500). If ConvexAdam's EPE in the body is not below the zero field's, its field
was read with a wrong axis order or sign: the run says so and exits 1.

    bash benchmarks/setup_peer.sh            # once
    python benchmarks/peer_bench.py [--threads 2] [--pairs 0004_0006,0006_0004] [--json OUT] [--keep DIR]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy_bench import DATA, end_point_errors  # noqa: E402
from predict_bench import describe, run_predict  # noqa: E402

CONVEXADAM_CHILD = """
import json, resource, sys, time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from convexAdam.convex_adam_MIND import convex_adam_pt

from l2r_submit.core import dataset, disp_files

data, out, threads, keys = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
settings = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}  # e.g. {"lambda_weight": 0}: its search alone
torch.set_num_threads(threads)
pairs = {p.key: p for p in dataset.load(data).pairs("val")}
seconds = {}
for key in keys:
    pair = pairs[key]
    t0 = time.perf_counter()
    fixed = nib.load(pair.fixed.image).get_fdata()
    moving = nib.load(pair.moving.image).get_fdata()
    disp = convex_adam_pt(fixed, moving, device=torch.device("cpu"), **settings)  # (I, J, K, 3) float64, voxels
    disp_files.write_disp(np.moveaxis(disp, -1, 0).astype(np.float32), out, pair.fixed.id, pair.moving.id)
    seconds[key] = time.perf_counter() - t0
    print(f"convexadam {key}: {seconds[key]:.1f} s", file=sys.stderr, flush=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
(out / "seconds.json").write_text(json.dumps({"seconds": seconds, "peak_rss_kib": peak, "settings": settings}))
print("PEAK_RSS_KIB", peak, file=sys.stderr)
"""


def run_convexadam(python: Path, keys: list[str], out: Path, threads: int,
                   settings: dict | None = None) -> tuple[float, float]:
    """ConvexAdam over ``keys`` in one process; returns (seconds per pair, its peak RSS in GiB). ``settings``:
    keyword arguments of ``convex_adam_pt`` other than its defaults (e.g. ``{"lambda_weight": 0}``: no Adam
    stage, the search alone).

    A folder holding a finished run over the same pairs with the same settings (``seconds.json`` and every
    field) is reused, and the run says so: ConvexAdam takes minutes per pair on a CPU.
    """
    settings = settings or {}
    record = out / "seconds.json"
    if record.is_file():
        done = json.loads(record.read_text())
        if set(keys) <= set(done["seconds"]) and done.get("settings", {}) == settings:
            print(f"ConvexAdam: reusing the run recorded in {out}", file=sys.stderr, flush=True)
            return float(np.mean([done["seconds"][k] for k in keys])), done["peak_rss_kib"] / 2**20
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    cmd = [str(python), "-c", CONVEXADAM_CHILD, str(DATA), str(out), str(threads), ",".join(keys), json.dumps(settings)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"ConvexAdam failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    done = json.loads(record.read_text())
    return float(np.mean([done["seconds"][k] for k in keys])), done["peak_rss_kib"] / 2**20


def score(ds, out: Path, truth: dict) -> dict:
    """Our evaluator's per-pair figures, and EPE on the synthetic pairs among them."""
    from l2r_submit.evaluation import evaluate

    cases = evaluate.run(evaluate.EvalConfig(ds, out, "bench", progress=False)).metrics["cases"]
    epe = end_point_errors(out, truth, ds) if truth else {}
    return {k: {"DSC": c["DSC"]["mean"], "DSC_zero_field": c["DSC_zero_field"]["mean"], "HD95": c["HD95"]["mean"],
                "SDlogJ": c["LogJacDetStd"]["mean"], "jac_nonpos_fraction": c["jac_nonpos_fraction"]["mean"],
                **({"EPE_all": epe[k][0], "EPE_body": epe[k][2], "EPE_body_zero_field": epe[k][6]} if k in epe else {})}
            for k, c in cases.items()}


def bench_pairs(pairs: str | None, peer_python: Path):
    """The dataset of test_data/ with a "bench" split of the val pairs chosen (``pairs``: "FFFF_MMMM,..."; None:
    all), those pairs, and the true fields of the synthetic ones among them. Exits with one line when the
    peer environment is missing or a pair is not a val pair."""
    from l2r_submit.core import dataset

    if not peer_python.exists():
        raise SystemExit(f"{peer_python}: not found; run `bash benchmarks/setup_peer.sh` first")
    ds = dataset.load(DATA)
    chosen = ds.pairs("val")
    if pairs:
        wanted = [p.strip() for p in pairs.split(",")]
        chosen = [p for p in chosen if f"{p.fixed.id}_{p.moving.id}" in wanted]
        if len(chosen) != len(wanted):
            raise SystemExit(f"--pairs {pairs}: not all are val pairs of {DATA}")
    ds.splits["bench"] = chosen
    keys = {p.key for p in chosen}
    truth = {k: v for k, v in json.loads((ROOT / "test_data" / "truth.json").read_text()).items() if k in keys}
    return ds, chosen, truth


@click.command()
@click.option("--threads", default=2, show_default=True)
@click.option("--pairs", default=None, help="Comma list FFFF_MMMM of val pairs [default: all].")
@click.option("--peer-python", type=click.Path(path_type=Path), default=ROOT / ".venv-peer" / "bin" / "python",
              show_default=True, help="Python of the environment made by benchmarks/setup_peer.sh.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the figures here.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep both methods' fields in this folder (default: a temporary one); a ConvexAdam run "
                   "already recorded there for the same pairs is reused.")
def main(threads: int, pairs: str | None, peer_python: Path, json_out: Path | None, keep: Path | None) -> None:
    ds, chosen, truth = bench_pairs(pairs, peer_python)
    keys = [p.key for p in chosen]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = keep if keep is not None else Path(tmp)
        ours = work / "ours"
        if ours.exists():  # ours is always run afresh: a finished folder would only be skipped
            shutil.rmtree(ours)
        sec, rss = run_convexadam(peer_python, keys, work / "convexadam", threads)
        results["ConvexAdam"] = {"seconds_per_pair": sec, "peak_rss_gib": rss,
                                 "pairs": score(ds, work / "convexadam", truth)}
        pair_args = ["--pairs", ",".join(f"{p.fixed.id}_{p.moving.id}" for p in chosen)]
        manifest, rss, _, _ = run_predict(["--threads", str(threads), "--device", "cpu", *pair_args], ours)
        results["l2r predict"] = {"seconds_per_pair": describe(manifest)[1], "peak_rss_gib": rss,
                                  "pairs": score(ds, ours, truth)}
    report(results, keys, truth, threads)
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2) + "\n")
    ca = results["ConvexAdam"]["pairs"]
    if any(ca[k]["EPE_body"] >= ca[k]["EPE_body_zero_field"] for k in truth):
        raise SystemExit("convention check FAILED: ConvexAdam's field is no better than a zero field on a synthetic "
                         "pair (wrong axis order or sign?)")


def report(results: dict, keys: list[str], truth: dict, threads: int) -> None:
    """Print the method table and the per-pair Dice table."""
    print(f"CPU, {threads} threads, {len(keys)} val pairs of test_data/ (192x160x256); each method in its own "
          "process; seconds include reading and writing")
    print(f"{'method':>12} {'s/pair':>7} {'peakRSS':>8} {'Dice':>6} {'HD95':>6} {'SDlogJ':>7} {'J<=0 max':>9} "
          f"{'EPE all':>8} {'EPE body':>8}")
    for name, r in results.items():
        p = r["pairs"]
        epe = [np.mean([p[k][m] for k in truth]) if truth else float("nan") for m in ("EPE_all", "EPE_body")]
        print(f"{name:>12} {r['seconds_per_pair']:>7.1f} {r['peak_rss_gib']:>6.2f}Gi "
              f"{np.mean([p[k]['DSC'] for k in keys]):>6.3f} {np.mean([p[k]['HD95'] for k in keys]):>6.2f} "
              f"{np.mean([p[k]['SDlogJ'] for k in keys]):>7.4f} {max(p[k]['jac_nonpos_fraction'] for k in keys):>9.2e} "
              f"{epe[0]:>8.3f} {epe[1]:>8.3f}")
    first = next(iter(results.values()))["pairs"]
    print(f"{'zero field':>12} {'':>7} {'':>8} {np.mean([first[k]['DSC_zero_field'] for k in keys]):>6.3f}"
          + (f" {'':>6} {'':>7} {'':>9} {'':>8} {np.mean([first[k]['EPE_body_zero_field'] for k in truth]):>8.3f}"
             if truth else ""))
    names = list(results)
    print(f"{'pair':>22} {'zero':>6} " + " ".join(f"{n + ' Dice':>17} {'HD95':>6}" for n in names))
    for k in keys:
        print(f"{k:>22} {first[k]['DSC_zero_field']:>6.3f} "
              + " ".join(f"{results[n]['pairs'][k]['DSC']:>17.3f} {results[n]['pairs'][k]['HD95']:>6.2f}" for n in names))
    ours, peer = results["l2r predict"], results["ConvexAdam"]
    behind = [k for k in keys if ours["pairs"][k]["DSC"] < peer["pairs"][k]["DSC"]]
    print(f"ours / ConvexAdam seconds per pair: {ours['seconds_per_pair'] / peer['seconds_per_pair']:.2f} "
          f"(target <= 0.33); pairs where our Dice is below ConvexAdam's: {', '.join(behind) or 'none'}")
    if truth:
        ok = all(peer["pairs"][k]["EPE_body"] < peer["pairs"][k]["EPE_body_zero_field"] for k in truth)
        print(f"convention check (ConvexAdam's field read as ours): EPE in the body below the zero field's on every "
              f"synthetic pair: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
