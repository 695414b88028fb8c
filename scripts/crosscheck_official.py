"""Score the same fields with the official Learn2Reg evaluator (each version, its own code) and with
``l2r evaluate --protocol VERSION``, and report every difference.

The official code is read from a git copy of MDL-UzL/L2R (``git clone https://github.com/MDL-UzL/L2R``)
and run unchanged in a subprocess; only ``evalutils.exceptions.ValidationError`` is stubbed (the one
import of grand-challenge's evalutils it needs) and NumPy 2's removed aliases ``np.NAN``/``np.Inf`` are
restored (same values). Nothing of it is copied into this package.

    python scripts/crosscheck_official.py --l2r-git /path/to/L2R/.git --dataset test_data/AbdomenCTCT_dataset.json

Exit code 0 when every case value and aggregate agrees to 1e-9 (relative), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from l2r_submit.core import dataset, disp_files  # noqa: E402
from l2r_submit.training.synthetic import smooth_random_disp  # noqa: E402

COMMITS = {"2025": "8847509", "2024": "28985b7", "2022": "56f96d5"}


def official_tree(git_dir: Path, commit: str, dest: Path) -> Path:
    """evaluation.py and utils.py of ``commit`` in ``dest``, plus a stub of evalutils."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("evaluation.py", "utils.py"):
        text = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{commit}:evaluation/{name}"],
                              check=True, capture_output=True, text=True).stdout
        (dest / name).write_text(text)
    stub = dest / "evalutils"
    stub.mkdir(exist_ok=True)
    (stub / "__init__.py").write_text("")
    (stub / "exceptions.py").write_text("class ValidationError(Exception):\n    pass\n")
    # the evaluator (and surface-distance) use np.NAN / np.Inf, removed in NumPy 2: restore the aliases
    (dest / "sitecustomize.py").write_text("import numpy\nnumpy.NAN = numpy.nan\nnumpy.Inf = numpy.inf\n")
    return dest


def make_config(ds: dataset.Dataset, masked: bool) -> dict:
    methods = [{"name": "LogJacDetStd", "metric": "sdlogj"}]
    for spec in ds.metrics:
        if spec.metric in ("dice", "hd95"):
            methods.append({"name": spec.name, "metric": spec.metric, "labels": list(spec.labels)})
    pairs = [{"fixed": "./" + str(p.fixed.image.relative_to(ds.root)),
              "moving": "./" + str(p.moving.image.relative_to(ds.root))} for p in ds.pairs("val")]
    cfg = {"task_name": ds.name, "evaluation_methods": methods, "expected_shape": [*ds.shape, 3], "eval_pairs": pairs}
    if masked:
        cfg["masked_evaluation"] = True
    return cfg


def compare(ours: dict, theirs: dict, where: str) -> list[str]:
    problems = []

    def close(a: float, b: float) -> bool:
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))

    for name, agg in theirs["aggregates"].items():
        mine = ours["aggregates"].get(name)
        if mine is None:
            problems.append(f"{where}: aggregate {name} missing from ours")
            continue
        for k in ("mean", "std", "30"):
            if not close(mine[k], agg[k]):
                problems.append(f"{where}: aggregate {name}.{k}: ours {mine[k]!r}, official {agg[k]!r}")
    extra = {k for k in ours["aggregates"] if not k.endswith("_ranking")} - set(theirs["aggregates"])
    extra -= {"SDlogJ_plain", "jac_nonpos_fraction"}  # our documented extras
    if extra:
        problems.append(f"{where}: aggregates only we report: {sorted(extra)}")
    for key, case in theirs["cases"].items():
        for name, entry in case.items():
            mine = ours["cases"].get(key, {}).get(name)
            if mine is None:
                problems.append(f"{where}: {key} {name} missing from ours")
                continue
            a = np.atleast_1d(np.asarray(mine["detailed"], dtype=float))
            b = np.atleast_1d(np.asarray(entry["detailed"], dtype=float))
            if a.shape != b.shape or not all(close(x, y) for x, y in zip(a, b)) or not close(mine["mean"], entry["mean"]):
                problems.append(f"{where}: {key} {name}: ours {mine['mean']!r}, official {entry['mean']!r}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--l2r-git", type=Path, required=True, help="git dir of a MDL-UzL/L2R copy")
    ap.add_argument("--dataset", type=Path, default=REPO / "test_data" / "AbdomenCTCT_dataset.json")
    ap.add_argument("--versions", default="2025,2024,2022")
    ap.add_argument("--max-disp", type=float, default=4.0)
    args = ap.parse_args()
    ds = dataset.load(args.dataset)
    work = Path(tempfile.mkdtemp(prefix="l2r-crosscheck-"))
    problems: list[str] = []
    try:
        data = work / "data"  # the dataset's folders plus masksTr (fixed label > 0) for the masked run
        data.mkdir()
        for sub in ("imagesTr", "labelsTr"):  # copies: l2r refuses paths that leave the data folder
            shutil.copytree(ds.root / sub, data / sub)
        (data / "masksTr").mkdir()
        for p in ds.pairs("val"):
            lab = np.asanyarray(nib.load(p.fixed.label).dataobj)
            nib.save(nib.Nifti1Image((lab > 0).astype(np.uint8), np.eye(4)),
                     data / "masksTr" / p.fixed.image.name)
        for version in args.versions.split(","):
            tree = official_tree(args.l2r_git, COMMITS[version], work / f"official-{version}")
            names = "long" if version == "2025" else "short"
            fields = work / f"fields-{names}"
            if not fields.exists():
                for n, p in enumerate(ds.pairs("val")):
                    disp_files.write_disp(smooth_random_disp(n, ds.shape, args.max_disp), fields, p.fixed.id, p.moving.id,
                                  "nii.gz", names)
            for masked in (False, True):
                cfg_path = work / f"cfg-{version}-{masked}.json"
                cfg_path.write_text(json.dumps(make_config(ds, masked)))
                theirs_path, ours_path = work / f"official-{version}-{masked}.json", work / f"ours-{version}-{masked}.json"
                env = {**os.environ, "PYTHONPATH": str(tree)}
                subprocess.run([sys.executable, "evaluation.py", "-i", str(fields), "-d", str(data), "-o",
                                str(theirs_path), "-c", str(cfg_path)], cwd=tree, env=env, check=True,
                               stdout=subprocess.DEVNULL)
                subprocess.run([sys.executable, "-m", "l2r_submit", "evaluate", str(cfg_path), str(fields),
                                "--data-root", str(data), "--protocol", version, "--out", str(ours_path),
                                "--quiet"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True,
                               stdout=subprocess.DEVNULL)
                theirs = json.loads(theirs_path.read_text())
                ours = json.loads(ours_path.read_text())
                found = compare(ours, theirs, f"{version} masked={masked}")
                problems += found
                sd = theirs["aggregates"]["LogJacDetStd"]
                print(f"{version} ({COMMITS[version]}) masked={masked}: {len(theirs['cases'])} cases, "
                      f"official DSC {theirs['aggregates']['DSC']['mean']:.6f}, SDlogJ {sd['mean']:.6f} "
                      f"(30: {sd['30']:.6f}); {len(found)} differences", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for line in problems:
        print("DIFF", line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
