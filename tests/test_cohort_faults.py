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


@pytest.mark.parametrize("table,words", [("1=1,1=2", "given twice"), ("0=1", "source id 0")])
def test_a_repeated_or_background_source_id_in_the_label_map_is_refused(reference, tmp_path, table, words):
    code, output = _prepare("nifti", REPO / "test_data", "--out", tmp_path / "out", "--reference", reference,
                            "--label-map", table, "--limit", "1")
    assert code == 2 and len(output.splitlines()) == 1 and words in output, output
    assert not (tmp_path / "out").exists()
