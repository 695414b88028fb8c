"""``l2r cohort prepare`` on odd or wrong input: colliding case ids, reruns with other settings, bad label maps,
organs a case lacks, a label map as the reference, a cohort without images, bad headers and values, and an
output folder inside the source.

The cases are boxes of test_data's 0004 (2 mm, RAS), so each prepares in about a second; the answers are read
back with nibabel and numpy, not with the package.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import invoke

REPO = Path(__file__).resolve().parents[1]
REF_BOX = (slice(30, 126), slice(20, 116), slice(110, 174))  # holds spleen 1 and the kidneys, not the liver
SRC_BOX = (slice(20, 150), slice(10, 140), slice(95, 185))  # holds it all: the shift onto REF_BOX is (10, 10, 15)


@pytest.fixture(scope="module")
def scan() -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(REPO / "test_data" / "imagesTr" / "AbdomenCTCT_0004_0000.nii.gz")
    labels = nib.load(REPO / "test_data" / "labelsTr" / "AbdomenCTCT_0004_0000.nii.gz")
    return np.asarray(image.dataobj).astype(np.int16), np.asarray(labels.dataobj).astype(np.uint8)


def _affine(box, spacing: float = 2.0) -> np.ndarray:
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = [2.0 * s.start for s in box]  # where the box starts in the scan's world
    return affine


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


@pytest.fixture(scope="module")
def reference(scan, tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("ref") / "ref.nii.gz", scan[0][REF_BOX], _affine(REF_BOX))


def _prepare(*args) -> tuple[int, str]:
    result = invoke("cohort", "prepare", *[str(a) for a in args])
    return result.exit_code, result.output


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error")]


def _read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _cases(out: Path) -> dict:
    return json.loads((out / "integrity.json").read_text())["cases"]


def test_nnunet_names_keep_their_own_ids_and_colliding_files_are_refused(scan, reference, tmp_path):
    """spleen_1_0000 and spleen_2_0000 (nnU-Net's channel suffix) are cases 0001 and 0002, both written (the
    last number, 0000, made them one case that overwrote the other); two files giving one id are refused
    before anything is written, naming both, in the MSD and the TCIA layouts."""
    image, labels = scan
    src = tmp_path / "Task09_Spleen"
    for n in (1, 2):  # case 2 is 40 HU brighter: each written image shows which source it came from
        _save(src / "imagesTr" / f"spleen_{n}_0000.nii.gz", image[SRC_BOX] + 40 * (n - 1), _affine(SRC_BOX))
        _save(src / "labelsTr" / f"spleen_{n}_0000.nii.gz", (labels[SRC_BOX] == 1).astype(np.uint8),
              _affine(SRC_BOX))
    out = tmp_path / "out"
    code, output = _prepare("msd_spleen", src, "--out", out, "--reference", reference)
    assert code == 0, output
    written = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert written == ["msd_spleen_0001_0000.nii.gz", "msd_spleen_0002_0000.nii.gz"]
    np.testing.assert_array_equal(_read(out / "imagesTr" / written[0]), image[REF_BOX])
    np.testing.assert_array_equal(_read(out / "imagesTr" / written[1]), image[REF_BOX] + 40)
    assert len(json.loads((out / "dataset.json").read_text())["training"]) == 2

    clash = src / "imagesTr" / "spleen_1.nii.gz"  # spleen_1 again, without the suffix: also case 0001
    _save(clash, image[SRC_BOX], _affine(SRC_BOX))
    code, output = _prepare("msd_spleen", src, "--out", tmp_path / "out2", "--reference", reference)
    assert code == 2 and len(output.splitlines()) == 1, output
    assert "spleen_1_0000.nii.gz" in output and str(clash) in output and "0001" in output
    assert not (tmp_path / "out2").exists()

    tcia = tmp_path / "tcia"
    for name in ("PANCREAS_0001_0000.nii.gz", "PANCREAS_0002_0000.nii.gz", "PANCREAS_0002.nii.gz"):
        _save(tcia / "images" / name, image[SRC_BOX], _affine(SRC_BOX))
    code, output = _prepare("tcia_pancreas", tcia, "--out", tmp_path / "out3", "--reference", reference)
    assert code == 2 and len(output.splitlines()) == 1, output
    assert "PANCREAS_0002.nii.gz" in output and "PANCREAS_0002_0000.nii.gz" in output
    assert not (tmp_path / "out3").exists()


def test_a_rerun_with_another_reference_or_label_map_makes_the_cases_again(scan, reference, tmp_path):
    """Cases written with one reference and label map are not 'done already' for another: they are made again
    with a note, and integrity.json records with each case the reference (its sha256) and map it was made
    with; a rerun with the same settings still writes nothing."""
    image, labels = scan
    src = tmp_path / "src"
    _save(src / "imagesTr" / "c_0001_0000.nii.gz", image[SRC_BOX], _affine(SRC_BOX))
    _save(src / "labelsTr" / "c_0001.nii.gz", labels[SRC_BOX], _affine(SRC_BOX))
    out = tmp_path / "out"
    code, output = _prepare("nifti", src, "--out", out, "--reference", reference, "--label-map", "1=1,2=2")
    assert code == 0, output
    assert set(np.unique(_read(out / "labelsTr" / "src_0001_0000.nii.gz"))) == {0, 1, 2}

    other_box = tuple(slice(s.start + 6, s.stop + 6) for s in REF_BOX)
    other = _save(tmp_path / "other_ref.nii.gz", image[other_box], _affine(other_box))
    code, output = _prepare("nifti", src, "--out", out, "--reference", other, "--label-map", "1=1,2=2")
    assert code == 0, output
    assert "done already" not in output and "another reference" in output
    np.testing.assert_array_equal(_read(out / "imagesTr" / "src_0001_0000.nii.gz"), image[other_box])
    record = _cases(out)["src_0001"]
    assert record["settings"]["reference_sha256"] == hashlib.sha256(other.read_bytes()).hexdigest()
    assert any("made again" in note for note in record["notes"])

    code, output = _prepare("nifti", src, "--out", out, "--reference", other, "--label-map", "1=6")
    assert code == 0, output
    assert "another label map" in output
    written = _read(out / "labelsTr" / "src_0001_0000.nii.gz")
    np.testing.assert_array_equal(written, np.where(labels[other_box] == 1, 6, 0))
    assert _cases(out)["src_0001"]["annotated"] == [6]
    assert json.loads((out / "dataset.json").read_text())["training"][0]["annotated"] == [6]

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    code, output = _prepare("nifti", src, "--out", out, "--reference", other, "--label-map", "1=6")
    assert code == 0 and "done already" in output, output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps


@pytest.mark.parametrize("table,words", [("1=1,1=2", "given twice"), ("0=1", "source id 0")])
def test_a_repeated_or_background_source_id_in_the_label_map_is_refused(reference, tmp_path, table, words):
    code, output = _prepare("nifti", REPO / "test_data", "--out", tmp_path / "out", "--reference", reference,
                            "--label-map", table, "--limit", "1")
    assert code == 2 and len(output.splitlines()) == 1 and words in output, output
    assert not (tmp_path / "out").exists()


def test_annotated_lists_only_the_organs_the_written_label_map_holds(scan, reference, tmp_path):
    """Mapped organs a case's labels lack (an empty map; ids stored x100; the liver, outside the reference's
    box) are not annotated, with a note naming the case; 'annotated' equals the organs in the written file."""
    image, labels = scan
    src = tmp_path / "src"
    for n, lab in ((1, labels[SRC_BOX]), (2, np.zeros_like(labels[SRC_BOX])),
                   (3, labels[SRC_BOX].astype(np.int16) * 100)):
        _save(src / "imagesTr" / f"c_{n:04d}_0000.nii.gz", image[SRC_BOX], _affine(SRC_BOX))
        _save(src / "labelsTr" / f"c_{n:04d}.nii.gz", lab, _affine(SRC_BOX))
    out = tmp_path / "out"
    code, output = _prepare("nifti", src, "--out", out, "--reference", reference, "--label-map", "1=1,2=2,6=6")
    assert code == 0, output
    training = json.loads((out / "dataset.json").read_text())["training"]
    entries = {Path(e["label"]).name: e["annotated"] for e in training}
    for name, annotated in entries.items():
        held = sorted(int(v) for v in np.unique(_read(out / "labelsTr" / name)) if v)
        assert annotated == held, name
    assert entries == {"src_0001_0000.nii.gz": [1, 2], "src_0002_0000.nii.gz": [], "src_0003_0000.nii.gz": []}
    notes = [line for line in output.splitlines() if line.startswith("note: src_")]
    assert [line.split(":")[1].strip() for line in notes] == ["src_0001", "src_0002", "src_0003"]
    assert "[6]" in notes[0] and "outside the reference" in notes[0] and "not in its label map" in notes[1]


def test_a_label_map_as_reference_is_refused(scan, tmp_path):
    """A reference holding 0..13 (a label map) is refused before any work."""
    image, labels = scan
    as_ref = _save(tmp_path / "labels_ref.nii.gz", labels[REF_BOX], _affine(REF_BOX))
    src = tmp_path / "src"
    _save(src / "imagesTr" / "c_0001_0000.nii.gz", image[SRC_BOX], _affine(SRC_BOX))
    code, output = _prepare("nifti", src, "--out", tmp_path / "o1", "--reference", as_ref, "--label-map", "1=1")
    assert code == 2 and len(output.splitlines()) == 1 and str(as_ref) in output and "not a CT" in output
    assert not (tmp_path / "o1").exists()


def test_a_poor_alignment_gets_a_note(scan, reference, tmp_path):
    """A case whose header gives wrong voxel sizes (the right scan, 1 mm in its header: half its size) is
    written with a note on its low NCC, a good one without."""
    image, _ = scan
    src = tmp_path / "src"
    _save(src / "imagesTr" / "c_0001_0000.nii.gz", image[SRC_BOX], _affine(SRC_BOX))
    wrong = _affine(SRC_BOX)
    wrong[:3, :3] = np.eye(3)
    _save(src / "imagesTr" / "c_0002_0000.nii.gz", image[SRC_BOX], wrong)
    out = tmp_path / "out"
    code, output = _prepare("nifti", src, "--out", out, "--reference", reference, "--label-map", "1=1")
    assert code == 0, output
    cases = _cases(out)
    assert cases["src_0001"]["ncc"] > 0.9 and cases["src_0002"]["ncc"] < 0.4
    notes = [line for line in output.splitlines() if "NCC" in line and line.startswith("note:")]
    assert len(notes) == 1 and "src_0002" in notes[0]


def test_a_kits19_clone_without_images_is_an_error_and_skipped_cases_are_printed(scan, reference, tmp_path):
    image, labels = scan
    kits = tmp_path / "kits19" / "data"
    for case in ("case_00000", "case_00001"):
        _save(kits / case / "segmentation.nii.gz", np.isin(labels[SRC_BOX], (2, 3)).astype(np.uint8), _affine(SRC_BOX))
    code, output = _prepare("kits19", tmp_path / "kits19", "--out", tmp_path / "out", "--reference", reference)
    assert code == 2 and len(output.splitlines()) == 1 and "get_imaging" in output, output
    assert not (tmp_path / "out").exists()
    _save(kits / "case_00001" / "imaging.nii.gz", image[SRC_BOX], _affine(SRC_BOX))
    code, output = _prepare("kits19", tmp_path / "kits19", "--out", tmp_path / "out", "--reference", reference)
    assert code == 0, output
    assert f"kits19_00000: skipped: no imaging.nii.gz in {kits / 'case_00000'}" in output


def test_a_singular_affine_is_named(scan, reference, tmp_path):
    image, _ = scan
    src = tmp_path / "src"
    header = nib.Nifti1Image(image[SRC_BOX], _affine(SRC_BOX)).header
    header.set_qform(None, code=0)
    header["srow_z"] = [0, 0, 0, 190]  # the sform written by hand (nibabel refuses to make it): axis 2 is flat
    flat = src / "imagesTr" / "c_0001_0000.nii.gz"
    flat.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(image[SRC_BOX], None, header=header), flat)
    assert np.linalg.det(nib.load(flat).affine[:3, :3]) == 0.0  # nibabel reads it back singular
    code, output = _prepare("nifti", src, "--out", tmp_path / "out", "--reference", reference, "--label-map", "1=1")
    assert code == 1 and "Traceback" not in output, output
    [error] = _errors(output)
    assert str(flat) in error and "singular" in error and "axis 2" in error


def test_non_finite_voxels_are_named(scan, reference, tmp_path):
    image, _ = scan
    values = image[SRC_BOX].astype(np.float32)
    values[:, :, :5] = np.nan
    nan = _save(tmp_path / "src" / "imagesTr" / "c_0001_0000.nii.gz", values, _affine(SRC_BOX))
    code, output = _prepare("nifti", tmp_path / "src", "--out", tmp_path / "out", "--reference", reference,
                            "--label-map", "1=1")
    assert code == 1 and "Traceback" not in output, output
    [error] = _errors(output)
    assert str(nan) in error and "non-finite" in error and str(int(np.isnan(values).sum())) in error


def test_out_in_the_source_folder_is_refused(scan, reference, tmp_path):
    image, _ = scan
    src = tmp_path / "src"
    _save(src / "imagesTr" / "c_0001_0000.nii.gz", image[SRC_BOX], _affine(SRC_BOX))
    before = sorted(src.rglob("*"))
    for out in (src, src / "prepared", src / "imagesTr"):
        code, output = _prepare("nifti", src, "--out", out, "--reference", reference, "--label-map", "1=1")
        assert code == 2 and len(output.splitlines()) == 1 and "--out" in output, output
        assert sorted(src.rglob("*")) == before


def test_sigterm_stops_with_one_line_and_the_cases_written_are_kept(scan, reference, tmp_path, monkeypatch):
    """SIGTERM killed cohort prepare without a word, Ctrl-C was click's 'Aborted!' with exit 1 (the exit code
    of 'some cases failed')."""
    import os
    import signal

    from l2r_submit.recipe import prepare

    src = tmp_path / "src"
    for n in (1, 2):
        _save(src / "imagesTr" / f"case_{n:03d}.nii.gz", scan[0][SRC_BOX], _affine(SRC_BOX))
        _save(src / "labelsTr" / f"case_{n:03d}.nii.gz", scan[1][SRC_BOX], _affine(SRC_BOX))
    write, calls = prepare.write_volume, []

    def write_then_stopped(*args, **kwargs):
        calls.append(1)
        path = write(*args, **kwargs)
        if len(calls) == 2:  # the first case's image and label map are written
            os.kill(os.getpid(), signal.SIGTERM)
        return path

    monkeypatch.setattr(prepare, "write_volume", write_then_stopped)
    out = tmp_path / "out"
    code, output = _prepare("nifti", src, "--out", out, "--reference", reference, "--label-map", "1=1")
    assert code == 143, output
    assert output.strip().splitlines()[-1] == (f"stopped by SIGTERM: the cases written are kept in {out}; run the "
                                               "same command again to do the rest")
    monkeypatch.setattr(prepare, "write_volume", write)
    code, output = _prepare("nifti", src, "--out", out, "--reference", reference, "--label-map", "1=1")
    assert code == 0 and len(_cases(out)) == 2, output


def test_cases_an_older_version_wrote_are_kept_when_their_settings_can_be_told(scan, reference, tmp_path):
    """An older integrity.json records no settings per case; every case was made again on upgrade (hours for a
    real cohort). A fixed layout (its label map is its own) with the same reference path keeps them."""
    image, labels = scan
    src = tmp_path / "Task09_Spleen"
    _save(src / "imagesTr" / "spleen_1.nii.gz", image[SRC_BOX], _affine(SRC_BOX))
    _save(src / "labelsTr" / "spleen_1.nii.gz", (labels[SRC_BOX] == 1).astype(np.uint8), _affine(SRC_BOX))
    out = tmp_path / "out"
    assert _prepare("msd_spleen", src, "--out", out, "--reference", reference)[0] == 0
    record = json.loads((out / "integrity.json").read_text())
    for case in record["cases"].values():  # as the older version wrote it
        del case["settings"]
    (out / "integrity.json").write_text(json.dumps(record))
    stamp = (out / "imagesTr" / "msd_spleen_0001_0000.nii.gz").stat().st_mtime_ns
    code, output = _prepare("msd_spleen", src, "--out", out, "--reference", reference)
    assert code == 0 and "done already" in output and "made again" not in output, output
    assert (out / "imagesTr" / "msd_spleen_0001_0000.nii.gz").stat().st_mtime_ns == stamp
    assert _cases(out)["msd_spleen_0001"]["settings"]["reference_sha256"] == hashlib.sha256(
        reference.read_bytes()).hexdigest()
    for case in record["cases"].values():
        case.pop("settings", None)
    record["reference"] = str(tmp_path / "another_reference.nii.gz")  # not the reference of this run
    (out / "integrity.json").write_text(json.dumps(record))
    code, output = _prepare("msd_spleen", src, "--out", out, "--reference", reference)
    assert code == 0 and "done already" not in output and "version (no settings recorded)" in output, output
