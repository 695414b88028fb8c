import json

import numpy as np
import pytest

from l2r_submit.core import dataset, dataset_2020, integrity, io


def test_load_test_data(repo_root):
    ds = dataset.load(repo_root / "test_data" / "AbdomenCTCT_dataset.json")
    assert ds.shape == (192, 160, 256)
    assert [p.key for p in ds.pairs("val")][0] == "0001_0000<--0004_0000"
    assert ds.pairs() == ds.pairs("val")
    assert len(ds.pairs("test")) == 2
    assert ds.missing_files() == []
    assert ds.pairs("val")[0].fixed.label.name == "AbdomenCTCT_0001_0000.nii.gz"
    assert ds.pairs("val")[0].fixed.label.parent.name == "labelsTr"


def test_case_ids_from_fixed_positions(tmp_path):
    case = dataset.case_from_path(tmp_path, "./imagesTs/AbdomenCTCT_0031_0001.nii.gz", "x")
    assert (case.id, case.modality) == ("0031", "0001")
    assert case.label == tmp_path / "labelsTs" / "AbdomenCTCT_0031_0001.nii.gz"
    with pytest.raises(ValueError, match="cannot read case id"):
        dataset.case_from_path(tmp_path, "./imagesTr/case1.nii.gz", "x")


def _write(tmp_path, data):
    path = tmp_path / "d.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_malformed_json(tmp_path):
    with pytest.raises(ValueError, match=r"d.json: malformed JSON at line 1, column"):
        dataset.load(_write(tmp_path, '{"name": '))


def test_a_json_this_user_may_not_read_is_one_line(tmp_path, monkeypatch):
    """A folder on the way that the user may not enter (a container's --user): pathlib's PermissionError went
    up as a traceback."""
    from pathlib import Path

    path = tmp_path / "AbdomenCTCT_dataset.json"
    path.write_text("{}")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_dir", denied)
    with pytest.raises(ValueError, match=rf"^{path}: cannot be read \(Permission denied\)$"):
        dataset.load(path)


def test_missing_keys_listed_together(tmp_path):
    with pytest.raises(ValueError, match="missing required keys: tensorImageShape, training, registration_val"):
        dataset.load(_write(tmp_path, {"name": "x"}))


def _minimal(pairs):
    return {"name": "x", "tensorImageShape": {"0": [4, 4, 4]}, "training": [],
            "registration_val": pairs, "registration_test": []}


@pytest.mark.parametrize("path, msg", [
    ("../outside/AbdomenCTCT_0001_0000.nii.gz", "escapes the data folder"),
    ("/etc/AbdomenCTCT_0001_0000.nii.gz", "absolute path"),
    ("./imagesTr/../../AbdomenCTCT_0001_0000.nii.gz", "escapes the data folder"),
])
def test_paths_must_stay_inside_root(tmp_path, path, msg):
    pairs = [{"fixed": path, "moving": "./imagesTr/AbdomenCTCT_0002_0000.nii.gz"}]
    with pytest.raises(ValueError, match=msg):
        dataset.load(_write(tmp_path, _minimal(pairs)))


def test_unknown_pair_keys_rejected_unknown_top_level_reported(tmp_path):
    pairs = [{"fixed": "./imagesTr/AbdomenCTCT_0001_0000.nii.gz",
              "moving": "./imagesTr/AbdomenCTCT_0002_0000.nii.gz", "weight": 1}]
    with pytest.raises(ValueError, match=r"registration_val\[0\]: .*unknown keys \['weight'\]"):
        dataset.load(_write(tmp_path, _minimal(pairs)))
    ds = dataset.load(_write(tmp_path, {**_minimal([]), "colour": "blue"}))
    assert integrity.integrity_report(ds) == ["note: unknown top-level key 'colour' ignored"]


def test_integrity_report_lists_missing_files(tiny_dataset):
    (tiny_dataset.parent / "labelsTr" / "AbdomenCTCT_0002_0000.nii.gz").unlink()
    ds = dataset.load(tiny_dataset)
    report = integrity.integrity_report(ds, "val")
    assert report == [f"error: missing file {tiny_dataset.parent / 'labelsTr' / 'AbdomenCTCT_0002_0000.nii.gz'}"]


def test_integrity_report_reads_every_file_with_read(tiny_dataset):
    """Damaged files that predict or evaluate would refuse: an empty one is caught without reading, the
    others only when read (``l2r check --read``)."""
    import gzip

    from conftest import TINY_SHAPE

    root = tiny_dataset.parent
    empty = root / "imagesTr" / "AbdomenCTCT_0001_0000.nii.gz"
    empty.write_bytes(b"")
    cut = root / "imagesTr" / "AbdomenCTCT_0002_0000.nii.gz"
    raw = gzip.decompress(cut.read_bytes())
    cut.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # a valid gzip of half the volume
    nan = root / "imagesTr" / "AbdomenCTCT_0003_0000.nii.gz"
    io.write_volume(nan, np.full(TINY_SHAPE, np.nan, np.float32), np.eye(4))
    short = root / "labelsTr" / "AbdomenCTCT_0002_0000.nii.gz"
    io.write_label_map(np.zeros(TINY_SHAPE[:2] + (5,), np.uint8), np.eye(4), short)
    ds = dataset.load(tiny_dataset)
    assert integrity.integrity_report(ds, "val") == [f"error: {empty}: empty file"]
    report = integrity.integrity_report(ds, "val", read=True)
    assert report[0] == f"error: {empty}: empty file" and len(report) == 4, report
    assert f"error: {cut}: cannot be read" in report[1] and "\n" not in report[1]
    assert report[2] == f"error: {short}: label map of shape (24, 20, 5), expected (24, 20, 28) (the dataset's shape)"
    assert report[3] == f"error: {nan}: image holds NaN or inf values"
    from conftest import invoke

    res = invoke("check", tiny_dataset, "--split", "val", "--read")
    assert res.exit_code == 2 and f"error: {nan}: image holds NaN or inf values" in res.output
    assert "4 problems found" in res.output


def test_eval_config(tmp_path):
    cfg = {"task_name": "AbdomenCTCT", "expected_shape": [4, 4, 4, 3],
           "evaluation_methods": [{"name": "DSC", "metric": "dice", "labels": [1, 2]},
                                  {"name": "LogJacDetStd", "metric": "sdlogj"}],
           "eval_pairs": [{"fixed": "./imagesTr/AbdomenCTCT_0001_0000.nii.gz",
                           "moving": "./imagesTr/AbdomenCTCT_0004_0000.nii.gz"}]}
    ds = dataset.load(_write(tmp_path, cfg), root=tmp_path)
    assert ds.name == "AbdomenCTCT" and ds.shape == (4, 4, 4)
    assert [m.name for m in ds.metrics] == ["DSC", "LogJacDetStd"]
    assert ds.metrics[0].labels == (1, 2)
    assert [p.key for p in ds.pairs()] == ["0001_0000<--0004_0000"]
    cfg["evaluation_methods"].append({"name": "TRE", "metric": "tre"})
    with pytest.raises(ValueError, match="metric 'tre' is not supported"):
        dataset.load(_write(tmp_path, cfg))


def test_2020_layout(tmp_path):
    (tmp_path / "pairs_val.csv").write_text("fixed,moving\n1,4\n2,21\n")
    ds = dataset_2020.load_2020(tmp_path, tmp_path / "pairs_val.csv")
    assert [p.key for p in ds.pairs("val")] == ["0001_0000<--0004_0000", "0002_0000<--0021_0000"]
    assert ds.pairs("val")[0].fixed.image == tmp_path / "Training/img/img0001.nii.gz"
    assert ds.pairs("val")[0].moving.label == tmp_path / "Training/label/label0004.nii.gz"
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected columns 'fixed,moving'"):
        dataset_2020.load_2020(tmp_path, tmp_path / "bad.csv")


def test_test_data_real_inter_patient_pairs(repo_root):
    """0006 (a second real CT) is paired with 0004 both ways, and lies in 0004's orientation.

    The reference is anatomy, not our code: in both patients the liver is on the right of the spleen (array axis 0
    runs towards the patient's right), the stomach lies in front of the aorta (axis 1 runs anterior) and the
    adrenals sit above the kidneys (axis 2 runs superior); the two scans overlap only in part.
    """
    ds = dataset.load(repo_root / "test_data" / "AbdomenCTCT_dataset.json")
    keys = [p.key for p in ds.pairs("val")]
    assert keys[:4] == ["0001_0000<--0004_0000", "0002_0000<--0004_0000", "0003_0000<--0004_0000",
                        "0004_0000<--0005_0000"]  # the old pairs keep their order
    assert keys[4:] == ["0004_0000<--0006_0000", "0006_0000<--0004_0000"]
    labels = {}
    for case in ds.training:
        if case.id in ("0004", "0006"):
            image = io.read_volume(case.image)
            assert image.array.dtype == np.int16 and image.array.shape == ds.shape
            labels[case.id] = io.read_labels(case.label)

    def centre(lab, ids):
        return np.array([ix.mean() for ix in np.nonzero(np.isin(lab, ids))])

    for lab in labels.values():
        assert centre(lab, [6])[0] > centre(lab, [1])[0] + 40  # liver right of spleen
        assert centre(lab, [7])[1] > centre(lab, [8])[1] + 5  # stomach anterior to aorta
        assert centre(lab, [12, 13])[2] > centre(lab, [2, 3])[2]  # adrenals above kidneys
    both = (labels["0004"] > 0) & (labels["0006"] > 0)
    assert 0 < both.sum() < min((labels["0004"] > 0).sum(), (labels["0006"] > 0).sum())


def _with_training_entry(tiny_dataset, **extra):
    data = json.loads(tiny_dataset.read_text())
    data["training"][1].update(extra)
    tiny_dataset.write_text(json.dumps(data))
    return tiny_dataset


def test_annotated_list_is_read_and_none_means_every_label(tiny_dataset):
    ds = dataset.load(_with_training_entry(tiny_dataset, annotated=[6, 1]))
    assert ds.training[0].annotated is None
    assert ds.training[1].annotated == (1, 6)


@pytest.mark.parametrize("value, problem", [
    ("6", "annotated: expected a list"),
    ([6, 14], "annotated[1]: 14 is not a label id"),
    ([6, "1"], "annotated[1]: '1' is not a label id"),
    ([0], "annotated[0]: 0 is not a label id"),
    ([6, 6], "repeated"),
])
def test_bad_annotated_list_is_refused_in_one_line(tiny_dataset, value, problem):
    with pytest.raises(ValueError) as err:
        dataset.load(_with_training_entry(tiny_dataset, annotated=value))
    message = str(err.value)
    assert problem in message and str(tiny_dataset) in message and "training[1]" in message
    assert "\n" not in message


def test_test_list_images_are_read(tiny_dataset):
    data = json.loads(tiny_dataset.read_text())
    data["test"] = [{"image": "./imagesTs/AbdomenCTCT_0031_0000.nii.gz"}]
    tiny_dataset.write_text(json.dumps(data))
    ds = dataset.load(tiny_dataset)
    assert [c.id for c in ds.test_images] == ["0031"]


@pytest.mark.parametrize("value", [5, "", ["CT"], {}, {"0": 5}, {"0": "CT", "1": " "}])
def test_a_malformed_modality_is_refused_not_read_as_ct(tiny_dataset, value):
    """A modality that is not a name (or names by channel) fell back to CT silently, CT window included."""
    data = json.loads(tiny_dataset.read_text())
    data["modality"] = value
    tiny_dataset.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"modality: expected a name or names by channel") as err:
        dataset.load(tiny_dataset)
    assert str(tiny_dataset) in str(err.value) and "\n" not in str(err.value)
    for good in ("MR", {"0": "MR"}, None):
        data["modality"] = good
        tiny_dataset.write_text(json.dumps(data))
        assert dataset.load(tiny_dataset).modality == (good if isinstance(good, str) else "MR" if good else "CT")


def test_a_pair_listed_twice_is_noted_once_per_split(tiny_dataset):
    data = json.loads(tiny_dataset.read_text())
    data["registration_val"] += data["registration_val"][:1] * 2
    tiny_dataset.write_text(json.dumps(data))
    ds = dataset.load(tiny_dataset)
    assert len(ds.splits["val"]) == 5  # as listed; predict and evaluate take each pair once
    assert [n for n in ds.notes if "more than once" in n] == [
        "val: 1 pairs listed more than once (first: 0001_0000<--0002_0000); each is registered and scored once"]


def test_check_read_notes_a_label_map_whose_affine_is_not_its_images(tiny_dataset):
    import nibabel as nib

    label = tiny_dataset.parent / "labelsTr" / "AbdomenCTCT_0001_0000.nii.gz"
    img = nib.load(label)
    flipped = img.affine.copy()
    flipped[0, 0] *= -1  # another orientation: a label map of another image, or flipped by a converter
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), flipped), label)
    report = integrity.integrity_report(dataset.load(tiny_dataset), read=True)
    notes = [line for line in report if "affine differs" in line]
    assert len(notes) == 1 and notes[0].startswith(f"note: {label}: its affine differs from its image's")
    assert not any(line.startswith("error") for line in report)
