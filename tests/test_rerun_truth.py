"""What run.json and a rerun say must stay true when pairs fail, stop, change inputs or settings, or
when the pair's images carry another modality index (the review cases of the merged predict path)."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

from l2r_submit.core import dataset, disp_files
from l2r_submit.registration import predict
from l2r_submit.registration.instance import IOConfig
from l2r_submit.registration.search import SearchConfig

from fault_helpers import FIELDS, PAIRS, ckpt, error_lines, flip_crc, image, invoke, predict_args  # noqa: F401


def test_evaluate_after_predict_scores_a_failed_pair_as_zero_not_its_old_file(tiny_dataset, ckpt, tmp_path):
    out = tmp_path / "out"
    assert invoke(*predict_args(tiny_dataset, out, ckpt)).exit_code == 0
    flip_crc(image(tiny_dataset, "0003"))  # both pairs with 0003 now fail; their io-iters 0 fields stay
    res = invoke(*predict_args(tiny_dataset, out, ckpt)[:-2], "--io-iters", "1", "--evaluate")
    assert res.exit_code == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["partial"] is True
    assert sorted(metrics["zero_filled"]) == sorted([PAIRS[1], PAIRS[2]])
    assert any(line.startswith("warning: partial result") for line in error_lines(res))


def test_an_image_replaced_at_the_same_path_is_redone(tiny_dataset, ckpt, tmp_path):
    out = tmp_path / "out"
    assert invoke(*predict_args(tiny_dataset, out, ckpt)).exit_code == 0
    shutil.copyfile(image(tiny_dataset, "0003"), image(tiny_dataset, "0002"))  # same path, other image
    res = invoke(*predict_args(tiny_dataset, out, ckpt))
    assert res.exit_code == 0 and "2 pairs done, 1 skipped" in res.output  # the two pairs with 0002
    entries = json.loads((out / "run.json").read_text())["pairs"]
    assert entries[PAIRS[0]]["redone"].startswith("made from other images")


def test_an_image_replaced_with_its_size_and_mtime_put_back_is_redone(tiny_dataset, ckpt, tmp_path):
    """Inputs were recorded by size and mtime only: another image of the same size, its mtime restored
    (cp -p, touch -r), was taken for the old one and the stale field kept, also by the quick rerun."""
    import gzip
    import os

    import nibabel as nib
    import numpy as np

    path = image(tiny_dataset, "0002")
    img = nib.load(path)
    voxels = np.asarray(img.dataobj)

    def write_stored(array):  # gzip level 0: the file's size depends on the array's size only
        raw = nib.Nifti1Image(array, img.affine, img.header).to_bytes()
        path.write_bytes(gzip.compress(raw, compresslevel=0, mtime=0))

    write_stored(voxels)
    out = tmp_path / "out"
    args = predict_args(tiny_dataset, out, ckpt, "--pairs", "0001_0002")
    assert invoke(*args).exit_code == 0
    st = path.stat()
    write_stored(np.ascontiguousarray(voxels[::-1]))  # another image, same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    res = invoke(*args)
    assert res.exit_code == 0 and "1 pairs done, 0 skipped" in res.output, res.output
    assert "note: 1 pairs redone, e.g. because made from other images" in res.output  # it was silent
    entry = json.loads((out / "run.json").read_text())["pairs"][PAIRS[0]]
    assert entry["redone"].startswith("made from other images")
    # the same bytes at another inode and ctime (a copied data folder): hashed, found equal, kept; the full
    # path records the new status once, so the next rerun is quick again (it hashed the image every time)
    shutil.copy2(path, tmp_path / "copy.nii.gz")
    os.replace(tmp_path / "copy.nii.gz", path)
    res = invoke(*args)
    assert res.exit_code == 0 and "0 pairs done, 1 skipped" in res.output, res.output
    assert "checked without loading torch" not in res.output
    assert "checked without loading torch" in invoke(*args).output


def test_settings_of_a_stage_that_does_not_run_force_no_redo(tiny_dataset, ckpt, tmp_path):
    out = tmp_path / "out"
    assert invoke(*predict_args(tiny_dataset, out, ckpt)).exit_code == 0  # network only
    # the CLI refuses options of stages that do not run; the Python API takes them, and skips the pairs
    # (the CLI keeps freed memory, the API by default does not: no redo for that either)
    cfg = predict.PredictConfig(dataset.load(tiny_dataset), out, checkpoint=ckpt, io=IOConfig(0, similarity="mse"),
                                search=SearchConfig(hw=2), device="cpu", progress=False)
    assert {e["status"] for e in predict.run(cfg)["pairs"].values()} == {"skipped (outputs exist)"}
    # a record made before keep_freed_memory left the settings (it carries the key) is kept too
    manifest = json.loads((out / "run.json").read_text())
    for entry in manifest["pairs"].values():
        entry["settings"]["keep_freed_memory"] = True
    (out / "run.json").write_text(json.dumps(manifest))
    assert {e["status"] for e in predict.run(cfg)["pairs"].values()} == {"skipped (outputs exist)"}
    entry = json.loads((out / "run.json").read_text())["pairs"][PAIRS[0]]
    assert entry["settings"]["stages"] == ["network"] and "io" not in entry["settings"]
    assert "search" not in entry["settings"] and "package_version" in entry["settings"]
    # the run's own settings name only what ran too (they listed io, search and affine for a network-only run)
    top = json.loads((out / "run.json").read_text())["settings"]
    assert top["stages"] == ["network"] and top["network"] is True
    assert not {"io", "search", "affine"} & set(top)
    cfg = predict.PredictConfig(dataset.load(tiny_dataset), out, checkpoint=ckpt, io=IOConfig(1, similarity="mse"),
                                network=False, device="cpu", progress=False, overwrite=True, pairs=[PAIRS[0]])
    predict.run(cfg)
    top = json.loads((out / "run.json").read_text())["settings"]
    assert top["stages"] == ["adam"] and top["network"] is False and top["io"]["iters"] == 1
    assert not {"search", "affine"} & set(top)


def test_a_write_failure_keeps_the_records_of_pairs_already_done(tiny_dataset, ckpt, tmp_path, monkeypatch):
    out = tmp_path / "out"
    cfg = predict.PredictConfig(dataset.load(tiny_dataset), out, checkpoint=ckpt, io=IOConfig(0), device="cpu",
                                progress=False)
    first = predict.run(cfg)
    (out / FIELDS[0]).unlink()  # only the first pair needs redoing

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / FIELDS[0]))

    monkeypatch.setattr(disp_files, "write_disp", full)
    second = predict.run(cfg)
    assert second["pairs"][PAIRS[0]]["status"] == "failed"
    assert [second["pairs"][k]["status"] for k in PAIRS[1:]] == ["skipped (outputs exist)"] * 2  # not "not tried"
    saved = json.loads((out / "run.json").read_text())["pairs"]
    assert saved[PAIRS[1]]["files"] == first["pairs"][PAIRS[1]]["files"]


def test_the_python_api_refuses_an_unknown_stage_before_any_work(tiny_dataset, ckpt, tmp_path):
    cfg = predict.PredictConfig(dataset.load(tiny_dataset), tmp_path / "out", checkpoint=ckpt, stages=("Adam",),
                                device="cpu", progress=False)
    with pytest.raises(ValueError, match="stages"):
        predict.run(cfg)
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_pair_of_another_modality_index_is_written_under_its_planned_name(tiny_dataset, ckpt, tmp_path):
    root = tiny_dataset.parent
    for folder in ("imagesTr", "labelsTr"):
        shutil.copyfile(root / folder / "AbdomenCTCT_0002_0000.nii.gz", root / folder / "AbdomenCTCT_0002_0001.nii.gz")
    data = json.loads(tiny_dataset.read_text())
    data["registration_val"] = [{"fixed": "./imagesTr/AbdomenCTCT_0001_0000.nii.gz",
                                 "moving": "./imagesTr/AbdomenCTCT_0002_0001.nii.gz"}]
    other = root / "mm.json"
    other.write_text(json.dumps(data))
    out = tmp_path / "out"
    res = invoke(*predict_args(other, out, ckpt))
    assert res.exit_code == 0, res.output
    assert (out / "disp_0001_0000_0002_0001.nii.gz").is_file()
    assert not (out / "disp_0001_0000_0002_0000.nii.gz").exists()
    assert "0 pairs done, 1 skipped" in invoke(*predict_args(other, out, ckpt)).output


def test_an_unreadable_run_json_is_set_aside_with_a_note_not_dropped_silently(tiny_dataset, ckpt, tmp_path):
    out = tmp_path / "out"
    assert invoke(*predict_args(tiny_dataset, out, ckpt)).exit_code == 0
    text = (out / "run.json").read_text()
    (out / "run.json").write_text(text[:300])  # truncated: it held every pair's record
    res = invoke(*predict_args(tiny_dataset, out, ckpt, "--pairs", "0001_0002"))
    assert res.exit_code == 0, res.output
    notes = [line for line in error_lines(res) if "not a readable run record" in line]
    kept = list(out.glob("run.json.unreadable-*"))
    assert len(notes) == 1 and len(kept) == 1 and kept[0].read_text() == text[:300]
    assert notes[0] == (f"note: {out / 'run.json'}: not a readable run record (truncated or not a run.json); kept "
                        f"as {kept[0].name}, the pairs only it recorded are redone")
    assert json.loads((out / "run.json").read_text())["pairs"][PAIRS[0]]["status"] == "done"
    (out / "run.json").write_text("{")  # damaged again: the first copy is not overwritten
    assert invoke(*predict_args(tiny_dataset, out, ckpt, "--pairs", "0001_0002")).exit_code == 0
    assert len(list(out.glob("run.json.unreadable-*"))) == 2


def test_a_field_redone_in_another_format_replaces_the_earlier_file(tiny_dataset, ckpt, tmp_path):
    """The .nii.gz stayed beside the new .npz, unrecorded, and l2r evaluate then refused the pair
    ('two candidate fields')."""
    out = tmp_path / "out"
    args = predict_args(tiny_dataset, out, ckpt, "--pairs", "0001_0002")
    assert invoke(*args).exit_code == 0 and (out / FIELDS[0]).is_file()
    res = invoke(*args, "--format", "npz")
    assert res.exit_code == 0, res.output
    npz = FIELDS[0].replace(".nii.gz", ".npz")
    assert (out / npz).is_file() and not (out / FIELDS[0]).exists()
    entry = json.loads((out / "run.json").read_text())["pairs"][PAIRS[0]]
    assert entry["outputs"] == [npz] and entry["replaced"] == [FIELDS[0]]
    assert error_lines(res) == [  # the README's promise: a note names the settings that differed (none was said)
        'note: 1 pairs redone, their fields were made with other settings: fmt "nii.gz" -> "npz"',
        f"note: 1 earlier field files removed, each replaced by its pair's field under this run's format and names "
        f"(e.g. {FIELDS[0]}; run.json lists them under 'replaced')"]
    res = invoke("evaluate", tiny_dataset, out, "--quiet", "--missing", "zero")
    assert "two candidate" not in res.output and res.exit_code == 0, res.output
