"""``l2r recipe paper`` end to end on tiny data, CPU: two fake cohorts made from a real scan of ../shared/data
(an MSD Task09 Spleen folder annotating the spleen only, a KiTS19 folder annotating the kidneys only), a
challenge dataset from test_data's scans; tiny networks, 1 epoch per training step, small crops. Every
artefact must be there (prepared cohorts, the merged dataset, the segmenter, a pseudo-label per case, the
pretrained and fine-tuned registration runs, markers, the log) and a second run must skip every step.
Only the paper's noisy-label row is run (``--rows noisy``), to keep CI's time: the unsupervised row is the
same ``l2r train`` command with another preset, checked by tests/test_recipe_plan.py without running it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from conftest import invoke
from l2r_submit.core import dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CROP_START, CROP_STOP = (8, 14, 56), (111, 95, 112)  # ct_patient_a's abdomen (3 mm voxels)
STEPS = ["prepare-msd_spleen", "prepare-kits19", "merge", "segment-train", "pseudo-labels", "pretrain-noisy",
         "finetune-noisy"]


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


def _fake_cohorts(root: Path) -> dict[str, Path]:
    """An MSD Spleen folder (spleen labelled) and a KiTS19 folder (kidneys labelled, 1 = kidney), each one
    case: the abdomen of ct_patient_a with its TotalSegmentator labels (1 spleen, 2 and 3 the kidneys); where
    ../shared/data is not on the machine, the same patient as test_data's 0004 (2 mm, challenge ids: the same
    three)."""
    if (SHARED / "ct_patient_a").is_dir():
        ct = nib.load(SHARED / "ct_patient_a" / "ct.nii.gz")
        seg = nib.load(SHARED / "ct_patient_a" / "totalseg_labels.nii.gz")
        start, stop = CROP_START, CROP_STOP
    else:
        ct = nib.load(REPO / "test_data" / "imagesTr" / "AbdomenCTCT_0004_0000.nii.gz")
        seg = nib.load(REPO / "test_data" / "labelsTr" / "AbdomenCTCT_0004_0000.nii.gz")
        start, stop = (0, 0, 0), ct.shape
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    image = np.asarray(ct.dataobj).astype(np.int16)[box]
    labels = np.asarray(seg.dataobj).astype(np.uint8)[box]
    affine = ct.affine.copy()
    affine[:3, 3] = ct.affine[:3, :3] @ np.array(start) + ct.affine[:3, 3]
    spleen = root / "Task09_Spleen"
    _save(spleen / "imagesTr" / "spleen_7.nii.gz", image, affine)
    _save(spleen / "labelsTr" / "spleen_7.nii.gz", (labels == 1).astype(np.uint8), affine)
    (spleen / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "spleen"}, "training": [
        {"image": "./imagesTr/spleen_7.nii.gz", "label": "./labelsTr/spleen_7.nii.gz"}]}))
    kits = root / "kits19" / "data" / "case_00003"
    _save(kits / "imaging.nii.gz", image, affine)
    _save(kits / "segmentation.nii.gz", np.isin(labels, (2, 3)).astype(np.uint8), affine)
    return {"msd_spleen": spleen, "kits19": root / "kits19"}


def _challenge(root: Path) -> Path:
    """A challenge dataset of test_data's scans: 0001 (the reference, first) and 0005 train; 0004 <- 0006,
    two real patients, is the one val pair (its subjects also validate the segmenter)."""
    ids = ["0001", "0005", "0004", "0006"]
    data = json.loads((REPO / "test_data" / "AbdomenCTCT_dataset.json").read_text())
    for i in ids:
        for kind in ("imagesTr", "labelsTr"):
            (root / kind).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / "test_data" / kind / f"AbdomenCTCT_{i}_0000.nii.gz",
                            root / kind / f"AbdomenCTCT_{i}_0000.nii.gz")
    data.update(training=[{"image": f"./imagesTr/AbdomenCTCT_{i}_0000.nii.gz",
                           "label": f"./labelsTr/AbdomenCTCT_{i}_0000.nii.gz"} for i in ids],
                numTraining=len(ids), numRegistration_val=1, numRegistration_test=0, registration_test=[],
                registration_val=[{"fixed": "./imagesTr/AbdomenCTCT_0004_0000.nii.gz",
                                   "moving": "./imagesTr/AbdomenCTCT_0006_0000.nii.gz"}])
    path = root / "AbdomenCTCT_dataset.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def test_recipe_end_to_end_then_a_second_run_skips_every_step(tmp_path):
    cohorts = _fake_cohorts(tmp_path / "downloads")
    challenge = _challenge(tmp_path / "AbdomenCTCT")
    out = tmp_path / "runs" / "paper"
    given = [a for k, v in cohorts.items() for a in ("--cohort", f"{k}={v}")]
    args = ["recipe", "paper", "--data", challenge.parent, *given,
            "--out", out, "--model", "tiny", "--epochs", "all=1", "--crop", "all=32,32,32", "--workers", "0",
            "--rows", "noisy", "--device", "cpu", "--quiet"]
    t0 = time.perf_counter()
    first = invoke(*args)
    seconds = time.perf_counter() - t0
    assert first.exit_code == 0, first.output[-4000:]
    print(f"end-to-end recipe: {seconds:.1f} s")

    # prepared cohorts: each annotates only its organs
    for layout, annotated in (("msd_spleen", [[1]]), ("kits19", [[2, 3]])):
        raw = json.loads((out / "data" / "cohorts" / layout / "dataset.json").read_text())
        assert [e["annotated"] for e in raw["training"]] == annotated
        assert (out / "data" / "cohorts" / layout / "integrity.json").is_file()
    merged = dataset.load(out / "data" / "pretrain_dataset.json")
    names = [c.image.name for c in merged.training]
    assert names == ["AbdomenCTCT_0001_0000.nii.gz", "AbdomenCTCT_0005_0000.nii.gz", "AbdomenCTCT_0004_0000.nii.gz",
                     "AbdomenCTCT_0006_0000.nii.gz", "msd_spleen_0007_0000.nii.gz", "kits19_00003_0000.nii.gz"]
    assert [(p.fixed.id, p.moving.id) for p in merged.pairs("val")] == [("0004", "0006")]
    # the segmenter and a pseudo-label map per case, on the image's grid, challenge ids
    assert all((out / "segmenter" / f).is_file() for f in ("best.pt", "last.pt", "log.jsonl", "config.json"))
    for case in merged.training:
        pseudo = nib.load(out / "pseudo_labels" / case.image.name)
        assert pseudo.shape == (192, 160, 256) and pseudo.get_data_dtype() == np.uint8
        np.testing.assert_allclose(pseudo.affine, nib.load(case.image).affine)
        assert set(np.unique(np.asarray(pseudo.dataobj))) <= set(range(12))
    # the registration runs: pretrainings on the merged dataset, fine-tunings on the challenge's from them
    for run in ("pretrain_noisy", "finetune_noisy"):
        assert all((out / run / f).is_file() for f in ("best.pt", "last.pt", "log.jsonl", "log.csv", "config.json"))
        rows = [json.loads(line) for line in (out / run / "log.jsonl").read_text().splitlines()]
        assert len(rows) == 1 and "DSC" in rows[0]
    pretrain = json.loads((out / "pretrain_noisy" / "config.json").read_text())
    assert pretrain["labels"] == "folder" and pretrain["labels_dir"] == str(out / "pseudo_labels")
    assert pretrain["init"] is None
    finetune = json.loads((out / "finetune_noisy" / "config.json").read_text())
    assert finetune["init"] == str(out / "pretrain_noisy" / "best.pt") and finetune["labels"] == "dataset"
    assert not (out / "pretrain_unsupervised").exists()
    markers = {s: out / "steps" / f"{s}.done.json" for s in STEPS}
    assert all(m.is_file() for m in markers.values())

    # a second run does nothing: every step skipped, no marker nor checkpoint rewritten
    stamps = {p: p.stat().st_mtime_ns for p in [*markers.values(), *out.glob("*/best.pt")]}
    t0 = time.perf_counter()
    again = invoke(*args)
    print(f"second run: {time.perf_counter() - t0:.1f} s")
    assert again.exit_code == 0, again.output[-4000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert [line.split("] ")[1] for line in again.output.splitlines() if line.endswith(": done, skipped")] == [
        f"{s}: done, skipped" for s in STEPS]
    log = (out / "recipe.log").read_text()
    assert log.count("done, skipped") == len(STEPS) and log.count("recipe: every step done") == 2
