"""The segmenter's sanity check on test_data (issue 15): training scans, then Dice per validation scan.

Every test_data subject is in a val pair, so `l2r segment train test_data/AbdomenCTCT_dataset.json` alone
has nothing to train on. ``make`` writes a second dataset JSON of N smooth random deformations of the
real CT 0004 (the B-spline family of test_data's own synthetic pairs, training/augment.py; labels warped
with the evaluator's nearest rule), ids 0101.., which trains; test_data's six scans validate. ``score``
prints the Dice per organ and scan of a folder of predicted label maps (`l2r segment predict`).

What it can show: that the pipeline learns (organs of the patient it trained on, under deformation:
0001-0004) and how it does on anatomies it never saw (0005 painted, 0006 another real patient).
It cannot show the paper's accuracy: one training patient, a small CPU model, minutes of training.

    python scripts/segment_sanity.py make --out out/seg-sanity/train --n 8
    python scripts/segment_sanity.py score out/seg-sanity/pred
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = ROOT / "test_data"


def make(out: Path, n: int, max_disp: float, seed: int) -> None:
    import nibabel as nib
    import torch

    from l2r_submit.core import io
    from l2r_submit.training.augment import deform, random_control_points

    src = TEST_DATA / "imagesTr" / "AbdomenCTCT_0004_0000.nii.gz"
    vol = io.read_volume(src, np.float32)
    seg = io.read_labels(TEST_DATA / "labelsTr" / "AbdomenCTCT_0004_0000.nii.gz")
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n):
        name = f"AbdomenCTCT_{101 + i:04d}_0000.nii.gz"
        coarse = random_control_points(rng, max_disp, (4, 4, 5))
        image = deform(torch.from_numpy(vol.array)[None, None], coarse)[0, 0].round().numpy().astype(np.int16)
        labels = deform(torch.from_numpy(seg)[None, None], coarse, labels=True)[0, 0].numpy().astype(np.uint8)
        nib.save(nib.Nifti1Image(image, vol.affine), out / "imagesTr" / name)
        nib.save(nib.Nifti1Image(labels, vol.affine), out / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    data = json.loads((TEST_DATA / "AbdomenCTCT_dataset.json").read_text())
    data.update(name="segment_sanity_train", description=f"{n} deformations of test_data 0004 (max {max_disp} voxels)",
                numTraining=n, training=entries, numTest=0, test=[], numRegistration_val=0, registration_val=[],
                numRegistration_test=0, registration_test=[])
    (out / "dataset.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out / 'dataset.json'}: {n} training scans")


def score(pred: Path) -> None:
    from l2r_submit.core import io
    from l2r_submit.evaluation.metrics import dice

    names = json.loads((TEST_DATA / "AbdomenCTCT_dataset.json").read_text())["labels"]["0"]
    rows = {}
    for i in range(1, 7):
        name = f"AbdomenCTCT_{i:04d}_0000.nii.gz"
        truth = io.read_labels(TEST_DATA / "labelsTr" / name)
        guess = io.read_labels(pred / name)
        rows[f"{i:04d}"] = [dice(truth == k, guess == k) for k in range(1, 12)]
    print("organ".ljust(26) + "".join(s.rjust(7) for s in rows))
    for k in range(11):
        print(names[str(k + 1)].ljust(26) + "".join(f"{r[k]:7.3f}" for r in rows.values()))
    print("mean (organs present)".ljust(26) + "".join(f"{np.nanmean(r):7.3f}" for r in rows.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--n", type=int, default=8)
    m.add_argument("--max-disp", type=float, default=8.0)
    m.add_argument("--seed", type=int, default=15)
    s = sub.add_parser("score")
    s.add_argument("pred", type=Path)
    args = parser.parse_args()
    if args.cmd == "make":
        make(args.out, args.n, args.max_disp, args.seed)
    else:
        score(args.pred)


if __name__ == "__main__":
    main()
