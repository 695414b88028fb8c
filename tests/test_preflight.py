"""The files a training run reads are checked before it starts (l2r_submit.training.preflight): a missing or
misshapen training or val file, an image with NaN voxels, label values the dataset does not score."""

from __future__ import annotations

import json


import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from l2r_submit.cli import main
from l2r_submit.core import dataset, integrity
from l2r_submit.training import data, preflight, train

from conftest import write_one_val_pair_dataset


@pytest.fixture
def ds_json(tmp_path):
    """Four subjects, one val pair (0001, 0002): 0003 and 0004 train."""
    return write_one_val_pair_dataset(tmp_path / "data")


def _label(ds_json, case):
    return ds_json.parent / "labelsTr" / f"AbdomenCTCT_{case}_0000.nii.gz"


def _image(ds_json, case):
    return ds_json.parent / "imagesTr" / f"AbdomenCTCT_{case}_0000.nii.gz"


def _rewrite(path, change):
    img = nib.load(path)
    nib.save(nib.Nifti1Image(change(np.asarray(img.dataobj)), img.affine), path)


def _check(ds_json, n_classes=5):
    ds = dataset.load(ds_json)
    files = preflight.run_files(ds, train.training_cases(ds, True), lambda c: c.label)
    return preflight.check_files(files, ds, n_classes)


def test_the_run_files_are_the_training_cases_and_the_val_pairs(ds_json):
    ds = dataset.load(ds_json)
    files = preflight.run_files(ds, train.training_cases(ds, True), lambda c: c.label)
    assert files == {_image(ds_json, "0003"): "image", _label(ds_json, "0003"): "label map",
                     _image(ds_json, "0004"): "image", _label(ds_json, "0004"): "label map",
                     _image(ds_json, "0001"): "image", _image(ds_json, "0002"): "image",
                     _label(ds_json, "0001"): "label map", _label(ds_json, "0002"): "label map"}
    assert _check(ds_json) == []
    # without val label maps at all, validation selects on the val loss: not an error
    for case in ("0001", "0002"):
        _label(ds_json, case).unlink()
    assert _label(ds_json, "0001") not in preflight.run_files(ds, [], None)
    assert _check(ds_json) == []


@pytest.mark.parametrize("case, damage, message", [
    # a training label map missing: a KeyError traceback (batch 2) or training without its Dice (batch 1)
    ("0003", lambda lab, img: lab.unlink(), "missing file {lab}"),
    # a training image missing: found when the DataLoader reached it, mid-epoch
    ("0004", lambda lab, img: img.unlink(), "missing file {img}"),
    # a training label map of another shape: a torch 'stack expects each tensor to be equal size' traceback
    ("0003", lambda lab, img: _rewrite(lab, lambda a: a[:, :, :20]),
     "{lab}: label map of shape (24, 20, 20), expected (24, 20, 28) (the dataset's shape)"),
    # a val label map of another shape: found at the first validation, naming no file
    ("0002", lambda lab, img: _rewrite(lab, lambda a: a[:, :, :20]),
     "{lab}: label map of shape (24, 20, 20), expected (24, 20, 28) (the dataset's shape)"),
    ("0001", lambda lab, img: _rewrite(img, lambda a: a[:20]),
     "{img}: image of shape (20, 20, 28), expected (24, 20, 28) (the dataset's shape)"),
    # an image with a NaN voxel: NaN training, NaN weights in last.pt, then an IndexError in validation
    ("0004", lambda lab, img: _rewrite(img, lambda a: np.where(a > a.mean(), np.nan, a).astype(np.float32)),
     "{img}: image holds NaN or inf values"),
    ("0003", lambda lab, img: lab.write_bytes(b""), "{lab}: empty file"),
])
def test_a_bad_run_file_is_one_line_naming_it(ds_json, case, damage, message):
    lab, img = _label(ds_json, case), _image(ds_json, case)
    damage(lab, img)
    with pytest.raises(ValueError) as err:
        assert _check(ds_json) == []
    assert str(err.value) == message.format(lab=lab, img=img)


def test_a_missing_val_label_map_is_an_error_when_the_others_exist(ds_json):
    """Validation scored only the pairs whose two label maps exist: the val Dice left the pair out silently."""
    _label(ds_json, "0002").unlink()
    with pytest.raises(ValueError, match=f"^missing file {_label(ds_json, '0002')}$"):
        assert _check(ds_json) == []


def test_several_problems_name_the_first_and_count_the_others(ds_json):
    _label(ds_json, "0003").unlink()
    _label(ds_json, "0004").unlink()
    _rewrite(_label(ds_json, "0001"), lambda a: a[:, :, :20])
    with pytest.raises(ValueError) as err:
        assert _check(ds_json) == []
    assert str(err.value) == (f"missing file {_label(ds_json, '0003')} (2 more problems: `l2r check --read "
                              f"{ds_json}` lists them)")


def test_the_headers_are_checked_before_any_file_is_read(ds_json, monkeypatch):
    """A missing file is reported at once, not after every other file was read in full."""
    _image(ds_json, "0002").unlink()
    monkeypatch.setattr(integrity, "_read_checked", lambda *a: pytest.fail("a file was read"))
    with pytest.raises(ValueError, match="missing file"):
        assert _check(ds_json) == []


def test_label_values_outside_the_labels_trained_are_background_with_a_note(ds_json):
    """300 was trained as the last class and -1 as background, without a word (losses.one_hot clamps); l2r
    evaluate ignores values outside the labels it scores. Now both are background, with a note per file."""
    lab = _label(ds_json, "0003")
    _rewrite(lab, lambda a: np.where(a == 1, 300, np.where(a == 2, -1, a.astype(np.int16))))
    notes = _check(ds_json)
    assert notes == [f"note: {lab}: label values -1, 300 are not among the labels trained (1..4, the dataset's "
                     "below loss.n_classes 5): their voxels count as background, as l2r evaluate ignores values "
                     "outside the labels it scores"]
    seg = np.array([[[0, 1, 2, 3, 4, 5, 300, -1]]], np.int32)
    assert data.keep_classes(seg, (1, 2, 3, 4)).tolist() == [[[0, 1, 2, 3, 4, 0, 0, 0]]]
    assert data.keep_classes(seg, (2, 4)).tolist() == [[[0, 0, 2, 0, 4, 0, 0, 0]]]
    ds = dataset.load(ds_json)
    cases = train.training_cases(ds, True)
    items = data.PairDataset(cases, [(0, 1)], None, 0, 0, data.dataset_labels, 1, classes=(1, 2, 3, 4))
    moving = items[0]["moving_seg"][0].numpy()
    assert set(np.unique(moving)) <= {0, 3, 4} and (moving == 0).sum() > (np.asarray(nib.load(lab).dataobj) == 0).sum()
    # l2r check --read says the same of the file (it said ok)
    res = CliRunner().invoke(main, ["check", str(ds_json), "--read"])
    assert res.exit_code == 0
    assert (f"note: {lab}: label values -1, 300 are not among the dataset's labels (1..13): l2r evaluate ignores "
            "them and l2r train counts them as background") in res.output


def _train_args(ds_json, out, *extra):
    return ["train", str(ds_json), "--out", str(out), "--model", "tiny", "--epochs", "1", "--crop", "16,16,16",
            "--workers", "0", "--device", "cpu", "--set", "loss.n_classes=5", "--quiet", *extra]


@pytest.mark.parametrize("batch", ["1", "2"])
def test_train_refuses_a_missing_label_map_before_training(ds_json, tmp_path, monkeypatch, batch):
    """Batch 2: a KeyError traceback after training started; batch 1: exit 0, those pairs trained without
    their Dice term. Now one line, exit 2, before config.json."""
    _label(ds_json, "0003").unlink()
    monkeypatch.setattr(train.trainer, "fit", lambda *a, **k: pytest.fail("training started"))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, _train_args(ds_json, out, "--batch-size", batch))
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().splitlines() == [f"error: missing file {_label(ds_json, '0003')}"]
    assert not out.exists()


def test_train_notes_label_values_it_trains_as_background(ds_json, tmp_path):
    lab = _label(ds_json, "0004")
    _rewrite(lab, lambda a: np.where(a == 1, 300, a.astype(np.int16)))
    res = CliRunner().invoke(main, _train_args(ds_json, tmp_path / "run"))
    assert res.exit_code == 0, res.output
    assert res.stderr.count(f"note: {lab}: label values 300 are not among the labels trained (1..4") == 1


def test_volume_shape_reads_the_header_only(tmp_path):
    """The shape read_volume would give, without the voxels: a damaged stream behind a good header passes."""
    import gzip

    import SimpleITK as sitk

    from l2r_submit.core import io

    vol = np.zeros((6, 5, 4), np.int16)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(vol[..., None], np.eye(4)), tmp_path / "b.nii")  # a trailing axis of 1
    sitk.WriteImage(sitk.GetImageFromArray(vol.transpose(2, 1, 0)), str(tmp_path / "c.mha"))
    for name in ("a.nii.gz", "b.nii", "c.mha"):
        assert io.volume_shape(tmp_path / name) == io.read_volume(tmp_path / name).array.shape == (6, 5, 4), name
    raw = gzip.decompress((tmp_path / "a.nii.gz").read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw[:400]))  # the header and a few voxels
    assert io.volume_shape(tmp_path / "cut.nii.gz") == (6, 5, 4)
    nib.save(nib.Nifti1Image(np.zeros((3, 3), np.int16), np.eye(4)), tmp_path / "flat.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a volume")
    for name, message in (("flat.nii.gz", "expected a 3-D volume, got shape (3, 3)"),
                          ("junk.nii.gz", "cannot be read"), ("gone.nii.gz", "file not found")):
        with pytest.raises(ValueError) as err:
            io.volume_shape(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: {message}")


def test_a_second_start_reads_again_only_the_files_that_changed(ds_json, tmp_path, monkeypatch):
    """--resume read every file in full again (about 100 s for a recipe-sized dataset). The record keeps
    each sound file's size and modification time: unchanged files are not read again and keep their
    notes; a changed one is read, and a damaged one is still refused."""
    ds = dataset.load(ds_json)
    files = preflight.run_files(ds, train.training_cases(ds, True), lambda c: c.label)
    lab = _label(ds_json, "0003")
    _rewrite(lab, lambda a: np.where(a == 1, 300, a.astype(np.int16)))
    record = tmp_path / "run" / preflight.RECORD_NAME
    record.parent.mkdir()
    first = preflight.check_files(files, ds, 5, record=record)
    assert len(first) == 1 and str(lab) in first[0] and record.is_file()
    read = []
    real = integrity._read_checked
    monkeypatch.setattr(integrity, "_read_checked", lambda path, *a: read.append(path) or real(path, *a))
    assert preflight.check_files(files, ds, 5, record=record) == first and read == []  # the note is kept
    image = _image(ds_json, "0004")
    _rewrite(image, lambda a: np.where(a > 0, np.nan, a).astype(np.float32))  # changed, and damaged
    with pytest.raises(ValueError, match="AbdomenCTCT_0004_0000.nii.gz"):
        preflight.check_files(files, ds, 5, record=record)
    assert read == [image]
    _rewrite(image, lambda a: np.nan_to_num(a, nan=0.0))  # mended: read once more, then recorded
    read.clear()
    assert preflight.check_files(files, ds, 5, record=record) == first and read == [image]
    read.clear()
    again = preflight.check_files(files, ds, 9, record=record)  # other labels trained: every file read again
    assert len(again) == 1 and "(1..8," in again[0] and len(read) == len(files)
    # an edited or truncated record is no reason to stop: an entry it cannot use is read again
    data = json.loads(record.read_text())
    data["files"][str(image)] = "edited by hand"
    record.write_text(json.dumps(data))
    read.clear()
    assert len(preflight.check_files(files, ds, 9, record=record)) == 1 and read == [image]
