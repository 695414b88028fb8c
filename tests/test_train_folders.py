"""`l2r train`'s run folder and inputs, from a stranger's test: a wrong --labels-dir, two trainings into one
folder, best.pt without last.pt, no val pairs, and a resumed fine-tuning whose --init moved."""

import json
import shutil

import pytest

from conftest import invoke, write_one_val_pair_dataset
from l2r_submit.commands.common import training_stops
from l2r_submit.core import folders

TINY = ["--model", "tiny", "--crop", "16,16,16", "--val-every", "1", "--workers", "0", "--device", "cpu",
        "--set", "loss.n_classes=5", "--quiet", "--threads", "1"]


@pytest.fixture
def ds(tmp_path):
    """The tiny dataset with one val pair (0001, 0002): 0003 and 0004 train."""
    return write_one_val_pair_dataset(tmp_path / "data")


def _one_line(result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], result.output


def test_a_wrong_labels_dir_is_refused_before_training(ds, tmp_path):
    """It trained without the Dice term (missing or empty folder), or on CT values as labels, exit 0."""
    noisy = ["train", ds, "--preset", "pretrain-noisy", "--epochs", "1", *TINY]
    images = ds.parent / "imagesTr"
    _one_line(invoke(*noisy, "--out", tmp_path / "a", "--labels-dir", tmp_path / "nowhere"), 2,
              "--labels-dir is not a folder")
    (tmp_path / "empty").mkdir()
    _one_line(invoke(*noisy, "--out", tmp_path / "b", "--labels-dir", tmp_path / "empty"), 2,
              "--labels-dir has no label map for 2 of the 2 training images (first: AbdomenCTCT_0003_0000.nii.gz)")
    _one_line(invoke(*noisy, "--out", tmp_path / "c", "--labels-dir", images), 2,
              "--labels-dir names the training images themselves")
    copies = tmp_path / "copies"
    shutil.copytree(images, copies)
    _one_line(invoke(*noisy, "--out", tmp_path / "d", "--labels-dir", copies), 2, "not a label map (it holds -1")
    assert not any((tmp_path / n).exists() for n in "abcd")  # refused before any work: no folder left
    result = invoke(*noisy, "--out", tmp_path / "e", "--labels-dir", ds.parent / "labelsTr")
    assert result.exit_code == 0, result.output
    assert "train_dice" in json.loads((tmp_path / "e" / "log.jsonl").read_text().splitlines()[-1])


def test_a_second_training_into_a_folder_in_use_is_refused(ds, tmp_path):
    """Both ran, and the folder held one run's last.pt and the other's best.pt."""
    out = tmp_path / "run"
    out.mkdir()
    with folders.exclusive_use(out, "--out"):  # a training running there now
        _one_line(invoke("train", ds, "--out", out, "--epochs", "1", *TINY), 2,
                  "another run is writing this --out now (pid ")
        _one_line(invoke("segment", "train", ds, "--out", out, "--epochs", "1", "--model", "tiny", "--crop",
                         "16,16,16", "--workers", "0", "--device", "cpu", "--quiet"), 2, "another run is writing")
    assert not (out / "config.json").exists()
    result = invoke("train", ds, "--out", out, "--epochs", "1", *TINY)  # the other run ended: the lock is free
    assert result.exit_code == 0, result.output


def test_best_pt_without_last_pt_says_how_to_go_on(ds, tmp_path, capsys):
    """A stop between the two writes of the first epoch said 'nothing is kept', and both commands then failed."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"x")
    with pytest.raises(SystemExit):
        with training_stops(out):
            raise KeyboardInterrupt()
    assert capsys.readouterr().err.strip() == (
        f"interrupted: {out / 'best.pt'} holds the first validated epoch, but last.pt was not written, so the run "
        "cannot be resumed; start again with another --out (or move best.pt away)")
    for resume in ((), ("--resume",)):
        _one_line(invoke("train", ds, "--out", out, "--epochs", "1", *TINY, *resume), 2,
                  "holds best.pt but no last.pt (the optimizer state a run resumes from), so its run cannot be "
                  "resumed; give another --out, or move best.pt away to start over here")


def test_no_val_pairs_needs_final_submission_and_the_last_line_names_only_written_files(ds, tmp_path):
    """It trained with NaN val scores and NumPy warnings, wrote no best.pt, and named best.pt; exit 0."""
    spec = json.loads(ds.read_text())
    spec["registration_val"] = []
    ds.write_text(json.dumps(spec))
    _one_line(invoke("train", ds, "--out", tmp_path / "a", "--epochs", "1", *TINY), 2,
              "no val pairs (registration_val), so no epoch can be chosen for best.pt")
    result = invoke("train", ds, "--out", tmp_path / "b", "--epochs", "1", "--final-submission", *TINY)
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output and "nan" not in result.output.lower()
    assert f"checkpoints: {tmp_path / 'b' / 'last.pt'}, {tmp_path / 'b' / 'best.pt'}; log:" in result.output
    (tmp_path / "b" / "best.pt").unlink()  # a later epoch that does not beat the recorded best writes none
    result = invoke("train", ds, "--out", tmp_path / "b", "--epochs", "1", "--final-submission", "--resume", *TINY)
    assert result.exit_code == 0, result.output  # nothing left to train
    assert (f"checkpoints: {tmp_path / 'b' / 'last.pt'} (no best.pt: no epoch beat the best one recorded); log: "
            f"{tmp_path / 'b' / 'log.csv'}") in result.output


def test_a_fine_tuning_resumes_after_its_init_moved(ds, tmp_path):
    """--init was loaded again on resume (a moved file: 'checkpoint not found') and compared as text."""
    first = tmp_path / "first"
    assert invoke("train", ds, "--out", first, "--epochs", "1", *TINY).exit_code == 0
    init = tmp_path / "init.pt"
    shutil.copy(first / "last.pt", init)
    ft = tmp_path / "ft"
    args = ["train", ds, "--out", ft, "--preset", "finetune", *TINY]
    assert invoke(*args, "--init", init, "--epochs", "1").exit_code == 0
    moved = tmp_path / "moved.pt"
    init.rename(moved)
    result = invoke(*args, "--init", moved, "--epochs", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert f"note: --init is not read when resuming (the weights come from {ft / 'last.pt'}); the run keeps its " \
           f"first one, {init}" in result.output
    assert len((ft / "log.jsonl").read_text().splitlines()) == 2
    assert json.loads((ft / "config.json").read_text())["init"] == str(init)


def test_a_folder_of_the_other_training_says_so(ds, tmp_path):
    """`l2r train --out` on a segmenter run advised --resume, which then failed."""
    seg = tmp_path / "seg"
    result = invoke("segment", "train", ds, "--out", seg, "--epochs", "1", "--model", "tiny", "--crop", "16,16,16",
                    "--workers", "0", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    for resume in ((), ("--resume",)):
        _one_line(invoke("train", ds, "--out", seg, "--epochs", "1", *TINY, *resume), 2,
                  f"{seg}: holds a segmenter run (l2r segment train), not a registration run; give another --out")
