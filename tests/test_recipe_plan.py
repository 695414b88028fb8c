"""``l2r recipe paper``'s plan, dry-run, done-markers, skipping, ``--redo`` and the torchrun logic (the merged
pretraining dataset: test_recipe_merge.py), without the cohort and segmentation steps' own code (their commands are faked where run).

The plan is checked against the authors' published commands (TheoEst/abdominal_registration README): the
pretrainings (``Pretrain_unsupervised``, ``Pretrain_supervised``) start from scratch (``--zeros-init``, no
``--model-abspath``) with ``--epochs=300``; each fine-tuning loads one of them (``--model-abspath``) for
``--epochs=300``; the segmenter (``main_seg``) trains ``--epochs=400`` on learn2reg_task3, liver, pancreas,
spleen, tcia_pancreas and kits; its predictions cover those and hepatic and colon too.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import click
import pytest

from conftest import invoke
from l2r_submit.recipe import execute, markers, plan

REPO = Path(__file__).resolve().parents[1]
# The authors' cohorts of the segmenter's training (main_seg --cohorts) in our layout names, and of its
# predictions (predict_seg --cohorts).
AUTHORS_SEGMENTER_COHORTS = {"msd_liver", "msd_pancreas", "msd_spleen", "tcia_pancreas", "kits19"}
AUTHORS_PREDICTED_COHORTS = AUTHORS_SEGMENTER_COHORTS | {"msd_hepatic_vessel", "msd_colon"}


def _opts(tmp_path: Path, **kw) -> plan.Options:
    cohorts = kw.pop("cohorts", (("msd_spleen", tmp_path / "spleen"), ("msd_colon", tmp_path / "colon")))
    return plan.Options(challenge_json=tmp_path / "ch" / "AbdomenCTCT_dataset.json", cohorts=cohorts,
                        out=tmp_path / "out", **kw)


def _option(argv: tuple[str, ...], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_plan_follows_the_authors_commands(tmp_path):
    opts = _opts(tmp_path, cohorts=tuple((la, tmp_path / la) for la in plan.COHORT_LAYOUTS))
    ref = tmp_path / "ch" / "imagesTr" / "AbdomenCTCT_0001_0000.nii.gz"
    steps = {s.name: s for s in plan.build(opts, ref)}
    out = opts.out
    # every cohort prepared against the reference scan, into the recipe's data folder
    for la in plan.COHORT_LAYOUTS:
        argv = steps[f"prepare-{la}"].argv
        assert argv[:4] == ("cohort", "prepare", la, str(tmp_path / la))
        assert _option(argv, "--reference") == str(ref) and _option(argv, "--out") == str(out / "data/cohorts" / la)
    # the segmenter: the challenge's JSON first, then the authors' segmentation cohorts only, 400 epochs
    seg = steps["segment-train"].argv
    jsons = seg[2:seg.index("--out")]
    assert jsons[0] == str(opts.challenge_json)
    assert {Path(j).parent.name for j in jsons[1:]} == AUTHORS_SEGMENTER_COHORTS
    assert _option(seg, "--epochs") == "400"
    # pseudo-labels of every case of the merged dataset, which lists every cohort
    pred = steps["pseudo-labels"].argv
    assert pred[:4] == ("segment", "predict", str(out / "segmenter/best.pt"), str(out / "data/pretrain_dataset.json"))
    merged_inputs = {Path(a).parent.name for a in steps["merge"].argv[3:steps["merge"].argv.index("--out")]}
    assert merged_inputs == AUTHORS_PREDICTED_COHORTS
    # pretrainings from scratch on the merged dataset, 300 epochs; fine-tunings from them on the challenge's
    for name, preset in (("pretrain-unsupervised", "pretrain-unsupervised"), ("pretrain-noisy", "pretrain-noisy")):
        argv = steps[name].argv
        assert argv[:2] == ("train", str(out / "data/pretrain_dataset.json"))
        assert _option(argv, "--preset") == preset and _option(argv, "--init") is None
        assert _option(argv, "--epochs") == "300"
    assert _option(steps["pretrain-noisy"].argv, "--labels-dir") == str(out / "pseudo_labels")
    for name, source in (("finetune-unsupervised", "pretrain_unsupervised"), ("finetune-noisy", "pretrain_noisy")):
        argv = steps[name].argv
        assert argv[:2] == ("train", str(opts.challenge_json)) and _option(argv, "--preset") == "finetune"
        assert _option(argv, "--init") == str(out / source / "best.pt") and _option(argv, "--epochs") == "300"
        assert _option(argv, "--labels-dir") is None  # the true labels
    assert "symmetric" not in steps


def test_epochs_crop_rows_and_model_options(tmp_path):
    opts = _opts(tmp_path, model="tiny", epochs={"all": 2, "segment-train": 3}, crop={"all": "32,32,32"},
                 batch_size={"finetune-noisy": 4}, rows=("symmetric", "noisy"))
    steps = {s.name: s for s in plan.build(opts, tmp_path / "ref.nii.gz")}
    assert list(steps) == ["prepare-msd_spleen", "prepare-msd_colon", "merge", "segment-train", "pseudo-labels",
                           "symmetric", "pretrain-noisy", "finetune-noisy"]
    assert steps["segment-train"].epochs == 3 and steps["symmetric"].epochs == 2
    assert all(_option(s.argv, "--crop") == "32,32,32" and _option(s.argv, "--model") == "tiny"
               for s in steps.values() if s.epochs)
    assert _option(steps["finetune-noisy"].argv, "--batch-size") == "4"
    assert _option(steps["pretrain-noisy"].argv, "--batch-size") is None
    only = plan.build(_opts(tmp_path, rows=("symmetric",)), tmp_path / "ref.nii.gz")
    assert [s.name for s in only] == ["symmetric"]


def test_every_planned_command_parses_with_the_real_cli(tmp_path):
    """Each planned ``l2r`` command (cohort, recipe, segment, train) is accepted by the command it names
    (parsed, not run)."""
    from l2r_submit.cli import main

    opts = _opts(tmp_path, threads=1, workers=0, quiet=True, crop={"all": "none"}, skip_failed=True,
                 batch_size={"all": 2}, rows=("symmetric", "pretrain", "noisy"))
    checked = set()
    for step in plan.build(opts, tmp_path / "ref.nii.gz"):
        cmd, args = main, list(step.command(resume=step.epochs is not None))
        while isinstance(cmd, click.Group):
            if args[0] not in cmd.commands:
                break
            cmd, args = cmd.commands[args[0]], args[1:]
        else:
            cmd.make_context(step.name, args)  # raises on an unknown option or a bad value
            checked.add(step.argv[0])
    assert {"train", "recipe", "cohort", "segment"} <= checked


@pytest.mark.parametrize("args, message", [
    (["--cohort", "nifti=."], "nifti needs --label-map"),
    (["--cohort", "msd_liver"], "expected LAYOUT=PATH"),
    (["--cohort", "msd_liver=.", "--cohort", "msd_liver=."], "given twice"),
    (["--cohort", "msd_liver=.", "--epochs", "pseudo-labels=3"], "no step 'pseudo-labels'"),
    (["--cohort", "msd_liver=.", "--epochs", "all=0"], "not a positive integer"),
    (["--cohort", "msd_liver=.", "--epochs", "segment-train=3", "--epochs", "segment-train=5"],
     "--epochs segment-train=5: segment-train given twice"),  # the last one won silently
    (["--cohort", "msd_liver=.", "--crop", "all=abc"], "--crop all=abc: crop: abc received, expected three positive"),
    (["--cohort", "msd_liver=.", "--crop", "segment-train=1,2"], "--crop segment-train=1,2: crop: 1,2 received"),
    (["--cohort", "msd_liver=.", "--rows", "best"], "--rows best"),
    (["--cohort", "msd_liver=.", "--redo", "finetune"], "--redo finetune: no such step"),
    ([], "no --cohort"),
])
def test_bad_options_are_one_line(tmp_path, args, message):
    result = invoke("recipe", "paper", "--data", REPO / "test_data", "--out", tmp_path / "out", "--dry-run", *args)
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_dry_run_shows_the_plan_before_the_cohorts_are_downloaded(tmp_path, monkeypatch):
    """The README's --dry-run line stopped at the first cohort folder not yet downloaded ('no such folder'),
    so the plan could not be looked at first; the run itself still refuses it before any step."""
    from l2r_submit.recipe import execute

    monkeypatch.setattr(execute, "run", lambda *a, **k: pytest.fail("a step started"))
    args = ["recipe", "paper", "--data", REPO / "test_data", "--cohort", f"msd_liver={tmp_path / 'Task03_Liver'}",
            "--out", tmp_path / "out"]
    result = invoke(*args, "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"note: --cohort msd_liver={tmp_path / 'Task03_Liver'}: no such folder yet" in result.stderr
    assert "prepare-msd_liver: to run" in result.stdout
    result = invoke(*args)
    assert result.exit_code == 2 and "msd_liver" in result.output and ": no such folder" in result.output


@pytest.mark.parametrize("dry_run", [True, False])
def test_an_out_that_cannot_be_written_is_refused_before_any_step(tmp_path, monkeypatch, dry_run):
    """--out a file, under a file or not writable: one line, exit 2, no step run, with or without --dry-run
    (the dry run printed its plan, the real run ended in a traceback)."""
    from fault_helpers import deny_files_in

    args = ["recipe", "paper", "--data", REPO / "test_data", "--rows", "symmetric", "--model", "tiny",
            "--epochs", "all=1", "--device", "cpu", "--quiet", *(["--dry-run"] if dry_run else [])]
    monkeypatch.setattr(execute, "run", lambda *a, **k: pytest.fail("a step started"))
    afile, denied = tmp_path / "afile", tmp_path / "denied"
    afile.write_text("")
    deny_files_in(monkeypatch, denied)
    for out, message in ((afile, f"{afile}: --out names an existing file, not a folder"),
                         (afile / "sub", f"{afile / 'sub'}: --out names an existing file, not a folder ({afile} is a "
                                         "file)"),
                         (denied, f"{denied}: --out is not writable (Permission denied)")):
        result = invoke(*args, "--out", out)
        assert result.exit_code == 2 and result.output.splitlines() == [f"error: {message}"], result.output
    assert denied.exists() != dry_run  # a dry run leaves nothing behind
    if dry_run:
        result = invoke(*args, "--out", tmp_path / "new" / "out")
        assert result.exit_code == 0 and "symmetric: to run" in result.output, result.output
        assert not (tmp_path / "new").exists()


def _dry_run_commands(output: str) -> list[list[str]]:
    return [shlex.split(line.strip()) for line in output.splitlines() if line.startswith("    l2r ")]


def _fake_invoke(steps: list[plan.Step], calls: list):
    """Stands for the real commands: records the argv and writes the step's outputs."""
    by_argv = {s.argv: s for s in steps}

    def fake(argv: tuple[str, ...]) -> int:
        calls.append(argv)
        step = by_argv[argv[:-1] if argv[-1] == "--resume" else argv]
        for path in step.outputs:
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("x")
            else:
                path.mkdir(parents=True, exist_ok=True)
        return 0

    return fake


def test_what_runs_is_what_dry_run_prints_and_a_second_run_skips_all(tmp_path):
    for name in ("spleen", "colon"):
        (tmp_path / name).mkdir()
    args = ["recipe", "paper", "--data", REPO / "test_data", "--cohort", f"msd_spleen={tmp_path / 'spleen'}",
            "--cohort", f"msd_colon={tmp_path / 'colon'}", "--out", tmp_path / "out", "--model", "tiny",
            "--epochs", "all=1", "--device", "cpu", "--quiet"]
    printed = invoke(*args, "--dry-run")
    assert printed.exit_code == 0, printed.output
    commands = _dry_run_commands(printed.output)
    assert len(commands) == 9 and all(c[0] == "l2r" for c in commands)
    assert printed.output.count(": to run") == 9 and "1 epochs" in printed.output

    opts = plan.Options(challenge_json=(REPO / "test_data/AbdomenCTCT_dataset.json").absolute(),
                        cohorts=(("msd_spleen", tmp_path / "spleen"), ("msd_colon", tmp_path / "colon")),
                        out=(tmp_path / "out"), model="tiny", epochs={"all": 1}, device="cpu", quiet=True)
    steps = plan.build(opts, plan.reference_image(opts.challenge_json))
    calls: list = []
    assert execute.run(steps, opts.out, _fake_invoke(steps, calls), lambda line: None, "cpu") == 0
    assert [["l2r", *c] for c in calls] == commands
    done = sorted((opts.out / "steps").glob("*.done.json"))
    assert len(done) == 9
    record = json.loads(markers.marker_path(opts.out, "finetune-noisy").read_text())
    assert record["ran"] == commands[-1] and record["inputs"] == {
        "pretrain-noisy": str(json.loads(markers.marker_path(opts.out, "pretrain-noisy").read_text())["finished_ns"])}
    mtimes = {m: m.stat().st_mtime_ns for m in done}

    again = invoke(*args, "--dry-run")
    assert again.output.count("done (skipped)") == 9
    calls.clear()
    assert execute.run(steps, opts.out, _fake_invoke(steps, calls), lambda line: None, "cpu") == 0
    assert calls == [] and {m: m.stat().st_mtime_ns for m in done} == mtimes
    log = (opts.out / "recipe.log").read_text().splitlines()
    assert sum("done, skipped" in line for line in log) == 9


def _run_all(tmp_path: Path, **kw) -> tuple[plan.Options, list[plan.Step]]:
    opts = _opts(tmp_path, **kw)
    steps = plan.build(opts, tmp_path / "ref.nii.gz")
    assert execute.run(steps, opts.out, _fake_invoke(steps, []), lambda line: None, "cpu") == 0
    return opts, steps


def test_a_changed_command_is_refused_in_one_line_and_redo_moves_work_aside(tmp_path):
    opts, steps = _run_all(tmp_path, epochs={"all": 1})
    longer = plan.build(_opts(tmp_path, epochs={"all": 1, "pretrain-noisy": 5}), tmp_path / "ref.nii.gz")
    status = markers.statuses(longer, opts.out)
    assert status["pretrain-noisy"].state == "changed" and "--epochs 1" in status["pretrain-noisy"].why
    assert all(status[s.name].state == "done" for s in longer if s.name not in ("pretrain-noisy", "finetune-noisy"))
    with pytest.raises(ValueError, match="pretrain-noisy .*give --redo STEP"):
        execute.run(longer, opts.out, _fake_invoke(longer, []), lambda line: None, "cpu")
    # options that change no result are not part of the comparison
    quiet = plan.build(_opts(tmp_path, epochs={"all": 1}, quiet=True, threads=3, device="cuda"),
                       tmp_path / "ref.nii.gz")
    assert {s.state for s in markers.statuses(quiet, opts.out).values()} == {"done"}
    # --redo: the step and the one reading from it run again; their earlier folders are kept aside
    calls: list = []
    (opts.out / "pretrain_noisy" / "best.pt").write_text("old")
    assert execute.run(longer, opts.out, _fake_invoke(longer, calls), lambda line: None, "cpu",
                       frozenset({"pretrain-noisy"})) == 0
    assert [c[2] for c in calls] == ["--out", "--out"] and [Path(c[3]).name for c in calls] == ["pretrain_noisy",
                                                                                                 "finetune_noisy"]
    kept = list(opts.out.glob("pretrain_noisy.replaced-*"))
    assert len(kept) == 1 and (kept[0] / "best.pt").read_text() == "old"
    assert {s.state for s in markers.statuses(longer, opts.out).values()} == {"done"}


def test_a_done_step_whose_outputs_were_deleted_is_not_done(tmp_path):
    """It stayed 'done, skipped' and the recipe ended 'every step done' (exit 0) without its final model."""
    opts, steps = _run_all(tmp_path, epochs={"all": 1})
    shutil.rmtree(opts.out / "finetune_noisy")
    status = markers.statuses(steps, opts.out)
    assert status["finetune-noisy"] == markers.Status(
        "changed", f"it was done, but its output {opts.out / 'finetune_noisy' / 'best.pt'} is gone")
    with pytest.raises(ValueError, match="finetune-noisy \\(it was done, but its output .* is gone\\).*give --redo"):
        execute.run(steps, opts.out, _fake_invoke(steps, []), lambda line: None, "cpu")
    assert execute.run(steps, opts.out, _fake_invoke(steps, []), lambda line: None, "cpu",
                       frozenset({"finetune-noisy"})) == 0
    assert {s.state for s in markers.statuses(steps, opts.out).values()} == {"done"}
    # an intermediate output deleted once every step reading it is done (e.g. to save space) changes nothing,
    # nor does a secondary file of a final step
    shutil.rmtree(opts.out / "pretrain_noisy")
    (opts.out / "finetune_noisy" / "last.pt").unlink()
    assert {s.state for s in markers.statuses(steps, opts.out).values()} == {"done"}


def test_a_stopped_training_step_resumes_and_a_missing_output_fails(tmp_path):
    opts = _opts(tmp_path)
    steps = plan.build(opts, tmp_path / "ref.nii.gz")
    run_dir = opts.out / "pretrain_noisy"
    run_dir.mkdir(parents=True)
    (run_dir / "last.pt").write_text("x")
    (run_dir / "log.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    status = markers.statuses(steps, opts.out)
    assert status["pretrain-noisy"].state == "resume"
    text = "\n".join(markers.describe(steps, status))
    assert "pretrain-noisy: to resume, 300 epochs (2 done)" in text and "--epochs 300 --device auto --resume" in text

    def no_outputs(argv):
        return 0

    lines: list[str] = []
    assert execute.run(steps, opts.out, no_outputs, lines.append, "cpu") == 1
    assert any("ended without writing" in line for line in lines)
    assert not (opts.out / "steps").exists()  # no marker for a step whose outputs are missing


def test_a_failing_step_stops_the_recipe_and_keeps_finished_steps(tmp_path):
    opts = _opts(tmp_path)
    steps = plan.build(opts, tmp_path / "ref.nii.gz")
    fake = _fake_invoke(steps, [])

    def fail_at_segmenter(argv):
        return 2 if argv[:2] == ("segment", "train") else fake(argv)

    lines: list[str] = []
    assert execute.run(steps, opts.out, fail_at_segmenter, lines.append, "cpu") == 2
    done = sorted(p.name for p in (opts.out / "steps").iterdir())
    assert done == ["merge.done.json", "prepare-msd_colon.done.json", "prepare-msd_spleen.done.json"]
    # the way out of a bad file an earlier step wrote is --redo of that step (running again fails again)
    assert lines[-1].startswith("[4/") and "segment-train: failed (exit 2) after" in lines[-1]
    assert lines[-1].endswith("run the same recipe command again to continue; if it failed on a file that an "
                              "earlier step wrote, add --redo naming that step (it reads prepare-msd_spleen)")


def test_a_stopped_step_says_that_the_recipe_command_resumes_it(tmp_path):
    """The training step's own stop line names its `l2r train ... --resume`; the recipe's names the recipe."""
    opts = _opts(tmp_path)
    steps = plan.build(opts, tmp_path / "ref.nii.gz")
    fake = _fake_invoke(steps, [])

    def stop_in_segmenter(argv):
        if argv[:2] != ("segment", "train"):
            return fake(argv)
        step = next(s for s in steps if s.name == "segment-train")
        step.run_dir.mkdir(parents=True, exist_ok=True)
        (step.run_dir / "last.pt").write_text("x")  # an epoch had finished
        return 143

    lines: list[str] = []
    assert execute.run(steps, opts.out, stop_in_segmenter, lines.append, "cpu") == 143
    assert lines[-1].endswith("(exit 143); finished steps are kept: run the same recipe command again to "
                              "continue (this step goes on from its last finished epoch)")


def test_unreadable_marker_is_one_line(tmp_path):
    opts = _opts(tmp_path)
    steps = plan.build(opts, tmp_path / "ref.nii.gz")
    markers.marker_path(opts.out, "merge").parent.mkdir(parents=True)
    markers.marker_path(opts.out, "merge").write_text("{not json")
    with pytest.raises(ValueError, match=r"merge\.done\.json: unreadable done-marker"):
        markers.statuses(steps, opts.out)
