"""``l2r recipe merge``: the pretraining dataset of the challenge's scans (hard-linked into its folder) and the
prepared cohorts, validated on the challenge's val pairs, and its refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import invoke, write_tiny_dataset
from l2r_submit.core import dataset
from l2r_submit.recipe import merge


def _fake_cohort(root: Path, layout: str, ids: list[str], annotated: list[int]) -> Path:
    """A prepared cohort as ``l2r cohort prepare`` writes it (the interface's JSON), tiny volumes."""
    ch = write_tiny_dataset(root.parent / f".src-{layout}-{root.name}", n_subjects=max(2, len(ids)))
    src = dataset.load(ch)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    entries = []
    for case, cid in zip(src.training, ids):
        name = f"{layout}_{cid}_0000.nii.gz"
        os.replace(case.image, root / "imagesTr" / name)
        os.replace(case.label, root / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}", "annotated": annotated})
    data = json.loads(ch.read_text())
    data.update(training=entries, registration_val=[], registration_test=[], numTraining=len(entries))
    (root / "dataset.json").write_text(json.dumps(data))
    return root / "dataset.json"


def test_merged_dataset_lists_every_case_and_keeps_the_challenge_val_pairs(tmp_path):
    challenge = write_tiny_dataset(tmp_path / "challenge_src", n_subjects=3)
    data = tmp_path / "out" / "data"
    spleen = _fake_cohort(data / "cohorts" / "msd_spleen", "msd_spleen", ["0007", "0002"], [1])
    kits = _fake_cohort(data / "cohorts" / "kits19", "kits19", ["0010"], [2, 3])
    out_json = data / "pretrain_dataset.json"
    summary = merge.merge(challenge, [spleen, kits], out_json)
    assert summary["cases"] == {"challenge": 3, "msd_spleen": 2, "kits19": 1}
    ds = dataset.load(out_json)
    # msd_spleen_0002 has the id of the val subject 0002: it still trains, the challenge's 0001-0003 do not
    from l2r_submit.training.train import training_cases

    assert [c.image.name for c in training_cases(ds, exclude_val_subjects=True)] == [
        "msd_spleen_0007_0000.nii.gz", "msd_spleen_0002_0000.nii.gz", "kits19_0010_0000.nii.gz"]
    ch = dataset.load(challenge)
    assert [c.image.name for c in ds.training] == [c.image.name for c in ch.training] + [
        "msd_spleen_0007_0000.nii.gz", "msd_spleen_0002_0000.nii.gz", "kits19_0010_0000.nii.gz"]
    assert [(p.fixed.image.name, p.moving.image.name) for p in ds.pairs("val")] == [
        (p.fixed.image.name, p.moving.image.name) for p in ch.pairs("val")]
    assert ds.pairs("test") == []
    raw = json.loads(out_json.read_text())
    assert [e.get("annotated") for e in raw["training"]] == [None, None, None, [1], [1], [2, 3]]
    # the challenge's files are hard links (same inode) inside the merged dataset's folder
    for a, b in zip(ds.training[:3], ch.training):
        assert os.path.samefile(a.image, b.image) and os.path.samefile(a.label, b.label)
        assert a.image.resolve().is_relative_to(data.resolve())
    # a rerun keeps the links; the merged dataset does not depend on the challenge's folder staying
    assert merge.merge(challenge, [spleen, kits], out_json)["files"] == {"kept": 6, "linked": 0, "copied": 0}
    for path in (tmp_path / "challenge_src").rglob("*.nii.gz"):
        path.unlink()
    assert dataset.load(out_json).missing_files() == []


def test_merge_refusals_are_one_line(tmp_path):
    challenge = write_tiny_dataset(tmp_path / "challenge_src", n_subjects=3)
    outside = _fake_cohort(tmp_path / "elsewhere", "msd_liver", ["0001"], [6])
    result = invoke("recipe", "merge", challenge, outside, "--out", tmp_path / "out" / "data" / "pretrain_dataset.json")
    assert result.exit_code == 2 and "must lie under" in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()  # refused before the challenge's files were linked (they were)
    inside = _fake_cohort(tmp_path / "out" / "data" / "cohorts" / "a", "msd_liver", ["0001"], [6])
    twin = _fake_cohort(tmp_path / "out" / "data" / "cohorts" / "b", "msd_liver", ["0001"], [6])
    result = invoke("recipe", "merge", challenge, inside, twin, "--out", tmp_path / "out" / "data" / "m.json")
    assert result.exit_code == 2 and "msd_liver_0001_0000.nii.gz appears twice" in result.output
    assert not (tmp_path / "out" / "data" / "m.json").exists()
    assert not (tmp_path / "out" / "data" / "challenge").exists()
    result = invoke("recipe", "merge", challenge, inside, "--out", tmp_path / "out" / "data")  # a folder
    assert result.exit_code == 2 and "data: is a folder; --out names the merged dataset JSON" in result.output
    result = invoke("recipe", "merge", inside, "--out", tmp_path / "out" / "data" / "m.json")  # a cohort's JSON first
    assert result.exit_code == 2 and "no registration_val pairs (a cohort's JSON?)" in result.output
    assert not (tmp_path / "out" / "data" / "challenge").exists()


def test_merge_falls_back_to_a_copy_when_a_link_fails(tmp_path, monkeypatch):
    src = tmp_path / "a.nii.gz"
    src.write_bytes(b"abc")

    def no_link(a, b):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    assert merge.link_or_copy(src, tmp_path / "d" / "a.nii.gz") == "copied"
    assert (tmp_path / "d" / "a.nii.gz").read_bytes() == b"abc"
