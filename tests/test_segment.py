"""Segmentation training on the shared trainer, pseudo-label prediction, and the segment commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import invoke, write_tiny_dataset
from l2r_submit.core import dataset
from l2r_submit.training import augment, segment


def challenge_and_cohort(root: Path) -> tuple[Path, Path]:
    """A tiny challenge JSON (val pair 0001/0002, so 0003 trains) and a cohort JSON annotating only label 1."""
    challenge = write_tiny_dataset(root / "challenge")
    data = json.loads(challenge.read_text())
    data["registration_val"] = data["registration_val"][:1]
    challenge.write_text(json.dumps(data))
    cohort = root / "cohort"
    (cohort / "imagesTr").mkdir(parents=True)
    (cohort / "labelsTr").mkdir()
    entries = []
    for n, src in enumerate(["0001", "0003"], start=7):
        name = f"cohorta_{n:04d}_0000.nii.gz"
        shutil.copy(root / "challenge" / "imagesTr" / f"AbdomenCTCT_{src}_0000.nii.gz", cohort / "imagesTr" / name)
        seg = np.asarray(nib.load(root / "challenge" / "labelsTr" / f"AbdomenCTCT_{src}_0000.nii.gz").dataobj)
        nib.save(nib.Nifti1Image(np.where(seg == 1, 1, 0).astype(np.uint8), np.diag([2.0, 2, 2, 1])),
                 cohort / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}", "annotated": [1]})
    (cohort / "dataset.json").write_text(json.dumps({
        "name": "cohorta", "tensorImageShape": {"0": [24, 20, 28]}, "training": entries, "numTraining": 2,
        "registration_val": [], "registration_test": [], "test": []}))
    return challenge, cohort / "dataset.json"


def test_flip_rot_turns_images_and_labels_alike_and_keeps_a_crop_shape():
    rng = np.random.default_rng(0)
    vol = torch.arange(4 * 4 * 6).reshape(1, 4, 4, 6)
    seen = set()
    for _ in range(40):
        params = augment.random_flip_rot(rng, (4, 4, 6))
        flips, turns, plane = params
        seen.add((flips, turns))
        assert plane == (0, 1) and flip_ok(vol, params)
    assert len(seen) > 8
    assert augment.random_flip_rot(rng, (3, 4, 5))[1] == 0  # no square plane: no rotation


def flip_ok(vol: torch.Tensor, params) -> bool:
    """numpy's flip and rot90 (the authors' calls) give the same array."""
    flips, turns, (a, b) = params
    arr = vol.numpy()
    for f in flips:
        arr = np.flip(arr, 1 + f)
    arr = np.rot90(arr, turns, (1 + a, 1 + b))
    return np.array_equal(augment.flip_rot(vol, params).numpy(), arr)


def test_split_cases_and_annotated_vectors(tmp_path):
    challenge, cohort = challenge_and_cohort(tmp_path)
    datasets = [dataset.load(challenge), dataset.load(cohort)]
    train, val = segment.split_cases(datasets)
    assert [c.image.name for c in train] == ["AbdomenCTCT_0003_0000.nii.gz", "cohorta_0007_0000.nii.gz",
                                             "cohorta_0008_0000.nii.gz"]
    assert [c.id for c in val] == ["0001", "0002"]
    assert segment.annotated_vector(train[0], 12).tolist() == [0.0] + [1.0] * 11
    assert segment.annotated_vector(train[1], 12).tolist() == [0.0, 1.0] + [0.0] * 10


def test_train_then_resume_then_predict(tmp_path):
    challenge, cohort = challenge_and_cohort(tmp_path)
    run = tmp_path / "run"
    args = ["segment", "train", str(challenge), str(cohort), "--out", str(run), "--model", "tiny", "--crop",
            "16,16,16", "--batch-size", "3", "--val-every", "1", "--workers", "0", "--device", "cpu", "--quiet"]
    result = invoke(*args, "--epochs", "1")
    assert result.exit_code == 0, result.output
    for name in ("last.pt", "best.pt", "config.json", "log.jsonl", "log.csv"):
        assert (run / name).exists()
    row = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert {"train_dice_loss", "val_dice", "val_dice_label_1"} <= set(row)
    assert 0.0 <= row["val_dice"] <= 1.0
    # where and how fast it runs may change on resume, as for l2r train (the recipe's resume with another
    # --threads was refused: "other settings (threads)")
    again = invoke(*args, "--epochs", "2", "--resume", "--threads", "1", "--device", "auto")
    assert again.exit_code == 0, again.output
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    other = invoke(*args, "--epochs", "3", "--resume", "--seed", "5", "--lr", "0.001")
    assert other.exit_code == 2
    assert f"{run / 'last.pt'}: the run was started with other settings (lr: 0.0001 -> 0.001; seed: 0 -> 5)" \
        in other.output

    out = tmp_path / "pseudo"
    pred = invoke("segment", "predict", str(run / "best.pt"), str(challenge), str(cohort), "--out", str(out),
                  "--device", "cpu", "--quiet")
    assert pred.exit_code == 0, pred.output
    names = sorted(p.name for p in out.glob("*.nii.gz"))
    assert names == sorted([f"AbdomenCTCT_000{i}_0000.nii.gz" for i in (1, 2, 3)] +
                           ["cohorta_0007_0000.nii.gz", "cohorta_0008_0000.nii.gz"])
    img = nib.load(out / names[0])
    src = nib.load(tmp_path / "challenge" / "imagesTr" / names[0])
    assert img.get_data_dtype() == np.uint8 and img.shape == src.shape
    assert np.allclose(img.affine, src.affine)
    assert np.asarray(img.dataobj).max() <= 11
    before = (out / names[0]).stat().st_mtime_ns
    again = invoke("segment", "predict", str(run / "best.pt"), str(challenge), "--out", str(out), "--device", "cpu",
                   "--quiet")
    assert again.exit_code == 0 and "0 written, 3 already there" in again.output
    assert (out / names[0]).stat().st_mtime_ns == before
    # a damaged file, and every file under another checkpoint, are made again (they were skipped as existing)
    (out / names[1]).write_bytes((out / names[1]).read_bytes()[:1000])
    again = invoke("segment", "predict", str(run / "best.pt"), str(challenge), "--out", str(out), "--device", "cpu",
                   "--quiet")
    assert again.exit_code == 0 and "1 written, 2 already there" in again.output and "1 existing" in again.output
    again = invoke("segment", "predict", str(run / "last.pt"), str(challenge), "--out", str(out), "--device", "cpu",
                   "--quiet")
    assert "3 written, 0 already there" in again.output  # last.pt is another file (it holds the optimizer too)
    again = invoke("segment", "predict", str(run / "last.pt"), str(challenge), "--out", str(out), "--device", "cpu",
                   "--quiet", "--overwrite")
    assert again.exit_code == 0 and "3 written, 0 already there" in again.output


def test_predict_goes_on_after_a_failing_case_and_exit_code_says_so(tmp_path):
    from l2r_submit.nets import seg_checkpoint, segnet

    challenge, _ = challenge_and_cohort(tmp_path)
    ckpt = seg_checkpoint.save(tmp_path / "seg.pt", segnet.build("tiny"))
    (tmp_path / "challenge" / "imagesTr" / "AbdomenCTCT_0002_0000.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "pseudo"
    result = invoke("segment", "predict", str(ckpt), str(challenge), "--out", str(out), "--device", "cpu", "--quiet")
    assert result.exit_code == 1
    assert "error: AbdomenCTCT_0002_0000.nii.gz:" in result.output
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["AbdomenCTCT_0001_0000.nii.gz", "AbdomenCTCT_0003_0000.nii.gz"]


def test_predict_never_replaces_an_input_and_replaces_unlisted_files_only_when_told(tmp_path):
    """--out naming the folder of the images or of the true labels (same file names) replaced them, exit 0."""
    from l2r_submit.nets import seg_checkpoint, segnet

    challenge, _ = challenge_and_cohort(tmp_path)
    ckpt = seg_checkpoint.save(tmp_path / "seg.pt", segnet.build("tiny"))
    name = "AbdomenCTCT_0001_0000.nii.gz"
    for folder in ("imagesTr", "labelsTr"):
        src = tmp_path / "challenge" / folder
        before = {p.name: p.read_bytes() for p in src.iterdir()}
        for extra in ((), ("--overwrite",)):
            res = invoke("segment", "predict", str(ckpt), str(challenge), "--out", str(src), "--device", "cpu",
                         "--quiet", *extra)
            assert res.exit_code == 2, res.output
            [line] = res.output.strip().splitlines()
            assert line.startswith(f"error: {src / name}: --out would overwrite an input of this run")
            assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    other = tmp_path / "other"  # e.g. another cohort's label folder, whose file names happen to match
    other.mkdir()
    (other / name).write_bytes(b"someone else's file")
    res = invoke("segment", "predict", str(ckpt), str(challenge), "--out", str(other), "--device", "cpu", "--quiet")
    assert res.exit_code == 2 and "1 files that pseudo_labels.json does not list" in res.output
    assert (other / name).read_bytes() == b"someone else's file" and not (other / "pseudo_labels.json").exists()
    res = invoke("segment", "predict", str(ckpt), str(challenge), "--out", str(other), "--device", "cpu", "--quiet",
                 "--overwrite")
    assert res.exit_code == 0 and nib.load(other / name).get_data_dtype() == np.uint8


def test_files_an_earlier_checkpoint_made_stay_replaceable_after_a_failed_run(tmp_path):
    """After a run with another checkpoint failed a case, the rerun refused that case's file (made by the
    first checkpoint) as 'not listed': the record had forgotten it."""
    from l2r_submit.nets import seg_checkpoint, segnet

    challenge, _ = challenge_and_cohort(tmp_path)
    first = seg_checkpoint.save(tmp_path / "a.pt", segnet.build("tiny"))
    torch.manual_seed(1)
    second = seg_checkpoint.save(tmp_path / "b.pt", segnet.build("tiny"))
    out = tmp_path / "pseudo"
    args = [str(challenge), "--out", str(out), "--device", "cpu", "--quiet"]
    assert invoke("segment", "predict", str(first), *args).exit_code == 0
    image = tmp_path / "challenge" / "imagesTr" / "AbdomenCTCT_0002_0000.nii.gz"
    good = image.read_bytes()
    image.write_bytes(b"not a nifti")
    assert invoke("segment", "predict", str(second), *args).exit_code == 1
    image.write_bytes(good)
    res = invoke("segment", "predict", str(second), *args)
    assert res.exit_code == 0 and "1 written, 2 already there, 0 failed" in res.output, res.output


@pytest.mark.parametrize("when", ["before", "after"])
def test_predict_stopped_by_sigterm_says_what_it_kept_and_a_rerun_does_the_rest(tmp_path, monkeypatch, when):
    """SIGTERM killed segment predict without a word (and Ctrl-C was click's 'Aborted!', exit 1); a stop
    just after a file's rename, before its record, must not make the rerun refuse that file as not ours."""
    import os
    import signal

    from l2r_submit.core import io
    from l2r_submit.nets import seg_checkpoint, segnet

    challenge, _ = challenge_and_cohort(tmp_path)
    ckpt = seg_checkpoint.save(tmp_path / "seg.pt", segnet.build("tiny"))
    write, calls = io.write_label_map, []

    def write_then_stopped(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 and when == "before":
            os.kill(os.getpid(), signal.SIGTERM)
        path = write(*args, **kwargs)
        if len(calls) == 2 and when == "after":
            os.kill(os.getpid(), signal.SIGTERM)
        return path

    monkeypatch.setattr(io, "write_label_map", write_then_stopped)
    out = tmp_path / "pseudo"
    args = ["segment", "predict", str(ckpt), str(challenge), "--out", str(out), "--device", "cpu", "--quiet"]
    res = invoke(*args)
    assert res.exit_code == 143
    assert res.output.strip().splitlines()[-1] == (f"stopped by SIGTERM: 1 label maps are kept in {out} and recorded "
                                                   "in pseudo_labels.json; run the same command again to do the rest")
    assert len(list(out.glob("*.nii.gz"))) == (1 if when == "before" else 2)
    monkeypatch.setattr(io, "write_label_map", write)
    res = invoke(*args)
    assert res.exit_code == 0 and "2 written, 1 already there, 0 failed" in res.output, res.output


def test_predict_refuses_a_registration_checkpoint_in_one_line(tmp_path, tiny_ckpt):
    challenge, _ = challenge_and_cohort(tmp_path)
    result = invoke("segment", "predict", str(tiny_ckpt), str(challenge), "--out", str(tmp_path / "p"),
                    "--device", "cpu")
    assert result.exit_code == 2 and "not an l2r_submit segmenter checkpoint" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "p").exists()


def test_segment_import_command(tmp_path):
    from test_segnet import authors_keys, fake_original

    src = tmp_path / "Train_seg.pth.tar"
    torch.save(fake_original(authors_keys()), src)
    result = invoke("segment", "import", str(src), "--out", str(tmp_path / "ours.pt"))
    assert result.exit_code == 0, result.output
    assert "12 classes, channels [16, 32, 64, 128, 256], orientation estienne2020" in result.output
    bad = dict(authors_keys())
    bad.pop("encoder.input.conv.bias")
    torch.save(fake_original(bad), src)
    result = invoke("segment", "import", str(src), "--out", str(tmp_path / "bad.pt"))
    assert result.exit_code == 2 and "missing key" in result.output and not (tmp_path / "bad.pt").exists()


def test_segment_import_of_one_of_our_checkpoints_says_what_it_is(tmp_path, tiny_ckpt):
    """Both were 'extra key: unknown key ...'."""
    from l2r_submit.nets import seg_checkpoint, segnet

    ours = seg_checkpoint.save(tmp_path / "seg.pt", segnet.build("tiny"))
    for path, what in ((ours, "already an l2r_submit segmenter checkpoint, nothing to import; use it as it is"),
                       (tiny_ckpt, "an l2r_submit registration checkpoint, not a segmenter of the authors")):
        result = invoke("segment", "import", str(path), "--out", str(tmp_path / "x.pt"))
        assert result.exit_code == 2 and result.output.strip() == f"error: {path}: {what}", result.output


def test_bad_annotated_entry_is_refused_before_training(tmp_path):
    challenge, cohort = challenge_and_cohort(tmp_path)
    data = json.loads(cohort.read_text())
    data["training"][0]["annotated"] = ["liver"]
    cohort.write_text(json.dumps(data))
    result = invoke("segment", "train", str(challenge), str(cohort), "--out", str(tmp_path / "run"), "--model", "tiny")
    assert result.exit_code == 2 and "annotated[0]: 'liver'" in result.output and str(cohort) in result.output


def test_cohorts_that_annotate_nothing_it_predicts_are_refused_before_training(tmp_path):
    """Every training case with an empty 'annotated' list (image-only cohorts): the loss was 0 throughout,
    best.pt was written and the exit code was 0."""
    challenge, cohort = challenge_and_cohort(tmp_path)
    data = json.loads(challenge.read_text())
    data["registration_val"] = [{"fixed": "./imagesTr/AbdomenCTCT_0001_0000.nii.gz",
                                 "moving": "./imagesTr/AbdomenCTCT_0003_0000.nii.gz"}]  # 0002 trains
    data["training"] = [t for t in data["training"] if "0002" not in t["image"]]  # ... no more: no challenge case
    challenge.write_text(json.dumps(data))
    cohort_data = json.loads(cohort.read_text())
    for annotated in ([], [12, 13]):  # none, or only organs the paper's segmenter does not predict
        for entry in cohort_data["training"]:
            entry["annotated"] = annotated
        cohort.write_text(json.dumps(cohort_data))
        result = invoke("segment", "train", str(challenge), str(cohort), "--out", str(tmp_path / "run"), "--model",
                        "tiny", "--epochs", "1", "--crop", "16,16,16", "--workers", "0", "--device", "cpu")
        assert result.exit_code == 2, result.output
        assert f"error: {cohort}: no training case annotates an organ the segmenter predicts" in result.output
        assert not (tmp_path / "run").exists()


def test_two_processes_train_what_one_process_trains(tmp_path):
    """torchrun, 2 processes, global batch 2 of partly annotated cases: the one-process weights and logs
    (the per-organ counts of annotated images are summed over the ranks)."""
    from test_distributed import NULL_BIASES, _torchrun

    challenge, cohort = challenge_and_cohort(tmp_path)
    data = json.loads(cohort.read_text())
    data["training"].append({**data["training"][0], "annotated": [1, 2]})  # 4 items: 2 steps of 1 item per rank
    cohort.write_text(json.dumps(data))
    args = ["segment", "train", str(challenge), str(cohort), "--model", "tiny", "--crop", "16,16,16", "--batch-size",
            "2", "--epochs", "1", "--lr", "1e-3", "--workers", "0", "--device", "cpu", "--threads", "1", "--quiet"]
    result = _torchrun([*args, "--out", str(tmp_path / "two")])
    assert result.returncode == 0, result.stderr[-2000:]
    assert invoke(*args, "--out", str(tmp_path / "one")).exit_code == 0
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert two["world_size"] == 2 and one["world_size"] == 1
    # Biases before InstanceNorm have a zero true gradient, and Adam's first steps move a weight by about
    # +-lr whatever its gradient's size, so float rounding (sums in another order) grows to ~1e-4 on a few
    # weights (measured; lr 1e-3): weights within lr / 10, outputs compared too (as test_distributed does).
    for key, value in one["state_dict"].items():
        if not NULL_BIASES.search(key):
            torch.testing.assert_close(two["state_dict"][key], value, rtol=0, atol=1e-4, msg=key)
    from l2r_submit.nets import seg_checkpoint, segnet

    nets = [seg_checkpoint.load(tmp_path / run / "last.pt")[0] for run in ("one", "two")]
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(*(segnet.probabilities(net(x)) for net in nets), rtol=0, atol=1e-3)
    rows = [json.loads(run.read_text().splitlines()[-1]) for run in (tmp_path / "one" / "log.jsonl",
                                                                      tmp_path / "two" / "log.jsonl")]
    assert rows[1]["train_dice_loss"] == pytest.approx(rows[0]["train_dice_loss"], rel=1e-5)
    for key in ("val_dice", "val_dice_label_1"):  # argmax of outputs equal within 1e-3: a few voxels may flip
        assert rows[1][key] == pytest.approx(rows[0][key], abs=1e-3), key


def test_a_challenge_json_whose_subjects_all_validate_has_nothing_to_train(tiny_dataset, tmp_path):
    result = invoke("segment", "train", str(tiny_dataset), "--out", str(tmp_path / "run"), "--model", "tiny",
                    "--device", "cpu")
    assert result.exit_code == 2
    assert "no training case outside the val pairs' subjects" in result.output and str(tiny_dataset) in result.output


def _seg_train_args(tmp_path: Path, out: Path) -> list[str]:
    challenge, cohort = challenge_and_cohort(tmp_path)
    return ["segment", "train", str(challenge), str(cohort), "--out", str(out), "--model", "tiny", "--epochs", "1",
            "--crop", "16,16,16", "--workers", "0", "--device", "cpu", "--quiet"]


def _one_line(result, message: str) -> None:
    """Exit 2 and one line, ``error: <message>...``."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.output


@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "lr: nan received, expected a finite learning rate above 0"),
    (["--lr", "inf"], "lr: inf received, expected a finite learning rate above 0"),
    (["--crop", "16,16"], "crop: 16,16 received, expected three positive sizes like 144,144,144"),
    (["--crop", "abc"], "crop: abc received, expected three positive sizes like 144,144,144"),
])
def test_bad_learning_rates_and_crops_are_refused_before_training(tmp_path, args, message):
    out = tmp_path / "run"
    _one_line(invoke(*_seg_train_args(tmp_path, out), *args), message)
    assert not out.exists()


def test_an_out_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    """As ``l2r predict``: one line, exit 2, before any epoch (a traceback when the first checkpoint was written)."""
    from fault_helpers import deny_files_in

    out = tmp_path / "run"
    deny_files_in(monkeypatch, out)
    monkeypatch.setattr(segment.trainer, "fit", lambda *a, **k: pytest.fail("training started"))
    _one_line(invoke(*_seg_train_args(tmp_path, out)), f"{out}: --out is not writable (Permission denied)")


def test_segment_import_refuses_an_out_it_cannot_write_before_converting(tmp_path):
    from test_segnet import authors_keys, fake_original

    src = tmp_path / "Train_seg.pth.tar"
    torch.save(fake_original(authors_keys()), src)
    (tmp_path / "afile").write_text("")
    _one_line(invoke("segment", "import", str(src), "--out", str(tmp_path / "afile" / "ours.pt")),
              f"{tmp_path / 'afile'}: --out's folder names an existing file, not a folder")
    _one_line(invoke("segment", "import", str(src), "--out", str(tmp_path)),
              f"{tmp_path}: --out is a folder; it names the checkpoint file to write")
