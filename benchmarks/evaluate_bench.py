"""Seconds per pair of the evaluator (1 worker) against the official computation, two ways.

Default: the computation alone. Full 192 x 160 x 256 volumes of test_data/, labels 1-13, a smooth random
field per pair (max 6 voxels). Each side gets its label maps as it reads them (ours: C-ordered int32 from
io.read_labels; plain: nibabel get_fdata() float64, as the official evaluator holds them); file reading is
not timed. Prints the per-pair times, the speed-up, and whether every per-label Dice/HD95 and the SDlogJ
are identical.

``--whole``: the whole command as a process, as organisers feel it. A folder of ``--pairs`` fields
(``.nii.gz`` written by disp_files.write_disp, pairs i < j of test_data's subjects) and an official evaluation
config are made once in ``--work`` (kept, so a second run reuses them); then ``l2r evaluate --workers 1``
and the official computation each run as a process over that folder, wall clock from start to exit
(start-up, imports, reading and decompressing, scoring, writing), best of ``--repeats``. The official side
is MDL-UzL/L2R's own ``evaluation.py`` when ``--l2r-git`` names a git copy of it (run unchanged, as
scripts/crosscheck_official.py runs it); without it, the official formula (l2r_submit.evaluation.reference, files read
with nibabel's get_fdata as the evaluator reads them) in a process of its own. Every case value of the two
metrics.json files is compared.

    python benchmarks/evaluate_bench.py [--repeats 2]
    python benchmarks/evaluate_bench.py --whole [--pairs 8] [--l2r-git PATH/L2R/.git] [--work DIR] [--repeats 1]
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from l2r_submit.core import dataset, disp_files, io
from l2r_submit.evaluation import reference, scoring  # noqa: E402
from l2r_submit.training.synthetic import smooth_random_disp  # noqa: E402

LABELS = tuple(range(1, 14))


@click.command()
@click.option("--repeats", default=2, show_default=True, help="Timed runs per pair or per process (the best is kept).")
@click.option("--whole", is_flag=True, help="Time the whole command as a process (see above).")
@click.option("--pairs", "n_pairs", default=8, show_default=True, help="--whole: fields in the folder.")
@click.option("--l2r-git", type=click.Path(exists=True, path_type=Path), default=None,
              help="--whole: git dir of a MDL-UzL/L2R copy; its evaluation.py is the official side.")
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/l2r-evaluate-bench"), show_default=True,
              help="--whole: folder for the data, fields and outputs (reused when present).")
@click.option("--plain-run", nargs=4, type=click.Path(path_type=Path), default=None, hidden=True,
              help="Internal: CFG DATA FIELDS OUT, the official formula as a process.")
def main(repeats: int, whole: bool, n_pairs: int, l2r_git: Path | None, work: Path,
         plain_run: tuple[Path, Path, Path, Path] | None) -> None:
    if plain_run:
        _plain_run(*plain_run)
    elif whole:
        _whole(repeats, n_pairs, l2r_git, work)
    else:
        _computation(repeats)


def _computation(repeats: int) -> None:
    import nibabel as nib

    ds = dataset.load(ROOT / "test_data" / "AbdomenCTCT_dataset.json")
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
                ref = reference.plain_case(fixed_plain, moving_plain, disp, LABELS)
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


# ---------------------------------------------------------------------------------- whole command


def _prepare(work: Path, n_pairs: int) -> tuple[Path, Path, Path]:
    """Data folder (test_data's images and labels), evaluation config and fields of ``n_pairs`` pairs."""
    src = dataset.load(ROOT / "test_data" / "AbdomenCTCT_dataset.json")
    data, fields = work / "data", work / f"fields-{n_pairs}"
    for sub in ("imagesTr", "labelsTr"):
        if not (data / sub).is_dir():
            shutil.copytree(src.root / sub, data / sub)
    ids = sorted({c.id for p in src.pairs("val") for c in (p.fixed, p.moving)})
    pairs = [(a, b) for n, a in enumerate(ids) for b in ids[n + 1:]]
    if n_pairs > len(pairs):
        raise click.UsageError(f"--pairs: test_data has {len(pairs)} pairs i < j, {n_pairs} asked for")
    pairs = pairs[:n_pairs]
    cfg = {"task_name": "AbdomenCTCT_bench",
           "evaluation_methods": [{"name": "LogJacDetStd", "metric": "sdlogj"},
                                  {"name": "DSC", "metric": "dice", "labels": list(LABELS)},
                                  {"name": "HD95", "metric": "hd95", "labels": list(LABELS)}],
           "expected_shape": [*src.shape, 3],
           "eval_pairs": [{"fixed": f"./imagesTr/AbdomenCTCT_{a}_0000.nii.gz",
                           "moving": f"./imagesTr/AbdomenCTCT_{b}_0000.nii.gz"} for a, b in pairs]}
    cfg_path = work / f"config-{n_pairs}.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    for n, (a, b) in enumerate(pairs):
        if not (fields / f"disp_{a}_0000_{b}_0000.nii.gz").is_file():
            print(f"writing field {n + 1}/{len(pairs)}", flush=True)
            disp_files.write_disp(smooth_random_disp(n, src.shape, 6.0), fields, a, b)
    return data, cfg_path, fields


def _timed(cmd: list[str], cwd: Path, env: dict, repeats: int) -> tuple[float, float]:
    """Best wall-clock seconds of ``repeats`` runs of ``cmd``, and the CPU seconds (user + system) of that run.

    CPU seconds are shown beside the wall clock because a shared machine stretches the wall clock of a
    single-threaded process by its load while leaving its CPU time nearly as it is.
    """
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best = min(best, (wall, cpu))
    return best


def _whole(repeats: int, n_pairs: int, l2r_git: Path | None, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    data, cfg, fields = _prepare(work, n_pairs)
    ours_json, theirs_json = work / "ours.json", work / "official.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ours = _timed([sys.executable, "-m", "l2r_submit", "evaluate", str(cfg), str(fields), "--data-root", str(data),
                   "--workers", "1", "--quiet", "--out", str(ours_json)], ROOT, env, repeats)
    if l2r_git is not None:
        from crosscheck_official import COMMITS, official_tree

        tree = official_tree(l2r_git, COMMITS["2025"], work / "official")
        label = f"official evaluation.py ({COMMITS['2025']})"
        theirs = _timed([sys.executable, "evaluation.py", "-i", str(fields), "-d", str(data), "-o", str(theirs_json),
                         "-c", str(cfg)], tree, {**os.environ, "PYTHONPATH": str(tree)}, repeats)
    else:
        label = "official formula (l2r_submit.evaluation.reference)"
        theirs = _timed([sys.executable, str(Path(__file__).resolve()), "--plain-run", str(cfg), str(data),
                         str(fields), str(theirs_json)], ROOT, env, repeats)
    a, b = json.loads(ours_json.read_text()), json.loads(theirs_json.read_text())
    same = all(np.array_equal(np.asarray(a["cases"][k][m]["detailed"], float),
                              np.asarray(case[m]["detailed"], float), equal_nan=True)
               for k, case in b["cases"].items() for m in ("DSC", "HD95", "LogJacDetStd"))
    print(f"{n_pairs} pairs, whole process, 1 worker (best of {repeats}; wall clock, and CPU seconds user + system):")
    print(f"  {'l2r evaluate --workers 1':<40s}{ours[0]:7.2f} s wall ({ours[0] / n_pairs:.2f} s/pair)  "
          f"{ours[1]:7.2f} s CPU ({ours[1] / n_pairs:.2f} s/pair)")
    print(f"  {label:<40s}{theirs[0]:7.2f} s wall ({theirs[0] / n_pairs:.2f} s/pair)  "
          f"{theirs[1]:7.2f} s CPU ({theirs[1] / n_pairs:.2f} s/pair)")
    print(f"  speed-up x{theirs[0] / ours[0]:.1f} wall, x{theirs[1] / ours[1]:.1f} CPU; "
          f"every case's DSC, HD95 and LogJacDetStd identical: {same}")


def _plain_run(cfg_path: Path, data: Path, fields: Path, out: Path) -> None:
    """The official formula over a folder, reading files as the evaluator does; writes its case values."""
    import nibabel as nib

    cfg = json.loads(Path(cfg_path).read_text())
    cases = {}
    for pair in cfg["eval_pairs"]:
        f, m = pair["fixed"], pair["moving"]
        key = f"{f[-16:-12]}_{f[-11:-7]}<--{m[-16:-12]}_{m[-11:-7]}"
        disp = nib.load(str(fields / f"disp_{f[-16:-12]}_{f[-11:-7]}_{m[-16:-12]}_{m[-11:-7]}.nii.gz")).get_fdata()
        fixed = nib.load(str(data / f.replace("images", "labels"))).get_fdata()
        moving = nib.load(str(data / m.replace("images", "labels"))).get_fdata()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = reference.plain_case(fixed, moving, disp.transpose(3, 0, 1, 2), LABELS)
        cases[key] = {name: {"mean": v[0], "detailed": v[1] if name != "LogJacDetStd" else v[0]}
                      for name, v in ref.items()}
    Path(out).write_text(json.dumps({"cases": cases}, allow_nan=True))


if __name__ == "__main__":
    main()
