"""``l2r recipe``: the paper's recipe in one command (``paper``) and its merged pretraining dataset (``merge``).

Only click is imported here; the plan, torch and the steps' modules are imported inside the commands.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import click

from .common import Fail


@click.group()
def recipe() -> None:
    """The paper's recipe (Estienne et al. 2020): cohorts, noisy labels, pretraining, fine-tuning."""


def _invoker(ctx: click.Context):
    """``argv -> exit code``: ``l2r ARGV`` run in this process by the root command group (found through the
    context, so this module does not import the CLI above it)."""
    root = ctx.find_root().command

    def invoke(argv: tuple[str, ...]) -> int:
        try:
            value = root.main(args=list(argv), prog_name="l2r", standalone_mode=False)
        except click.ClickException as exc:
            exc.show()
            return exc.exit_code
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            return 1
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return value if isinstance(value, int) else 0

    return invoke


@recipe.command()
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="The challenge's dataset JSON, or its folder (holding one *_dataset.json).")
@click.option("--cohort", "cohorts", multiple=True, metavar="LAYOUT=PATH",
              help="An external cohort to prepare, e.g. msd_liver=data/Task03_Liver (repeatable).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="The recipe's folder.")
@click.option("--dry-run", is_flag=True, help="Print the plan (each step's state, epochs and command); run nothing.")
@click.option("--model", type=click.Choice(["paper", "tiny"]), default="paper", show_default=True,
              help="Both networks' preset (tiny: for tests).")
@click.option("--rows", default=",".join(("pretrain", "noisy")), show_default=True,
              help="The paper's rows to reproduce: symmetric (0.40, challenge data only), pretrain (0.52), "
                   "noisy (0.63).")
@click.option("--epochs", multiple=True, metavar="STEP=N", help="Epochs of a training step (or all); "
              "default the paper's: segment-train 400, registration steps 300.")
@click.option("--crop", multiple=True, metavar="STEP=SIZE", help="Crop of a training step (or all), e.g. all=64,64,64.")
@click.option("--batch-size", multiple=True, metavar="STEP=N", help="Global batch of a training step (or all).")
@click.option("--redo", multiple=True, metavar="STEP",
              help="Run a done step again, and every step that reads from it (earlier outputs are moved aside).")
@click.option("--skip-failed", is_flag=True,
              help="Cohort cases that fail to prepare are left out (listed in integrity.json) instead of stopping.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads [default: all].")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader workers of the training steps [default: theirs].")
@click.option("--quiet", is_flag=True, help="No progress bars in the steps.")
@click.pass_context
def paper(ctx: click.Context, data: Path, cohorts: tuple[str, ...], out_dir: Path, dry_run: bool, model: str,
          rows: str, epochs: tuple[str, ...], crop: tuple[str, ...], batch_size: tuple[str, ...],
          redo: tuple[str, ...], skip_failed: bool, device: str, threads: int | None, workers: int | None,
          quiet: bool) -> None:
    """Run the paper's recipe: prepare each --cohort, merge them with the challenge's scans, train the
    segmenter, predict noisy labels, pretrain (unsupervised; with noisy labels) and fine-tune on the true
    labels. Each step is an l2r command (--dry-run prints them), skipped when done, resumable; under
    torchrun the training steps run on every process, the others on rank 0 while the rest wait.
    """
    from ..recipe import markers, plan

    try:
        opts = _options(plan, data, cohorts, out_dir, model, rows, epochs, crop, batch_size, skip_failed, device,
                        threads, workers, quiet, dry_run)
        steps = plan.build(opts, plan.reference_image(opts.challenge_json))
        names = [s.name for s in steps]
        unknown = [r for r in redo if r not in names]
        if unknown:
            raise ValueError(f"--redo {unknown[0]}: no such step; steps: {', '.join(names)}")
        _check_out(opts.out, dry_run)
        if dry_run:
            status = markers.statuses(steps, opts.out, frozenset(redo))
            click.echo("\n".join(markers.describe(steps, status)))
            return
        from ..recipe import execute

        code = execute.run(steps, opts.out, _invoker(ctx), click.echo, device, frozenset(redo))
    except ValueError as exc:
        raise Fail(str(exc)) from None
    ctx.exit(code)


def _check_out(out: Path, dry_run: bool) -> None:
    """--out must be a folder that can be written, checked before any step, as ``l2r predict`` checks its own
    (a dry run checks it too, then removes the folders the check created: it leaves nothing behind).

    Raises:
        ValueError: the path or a parent is a file, or the folder cannot be created or written.
    """
    from ..core.folders import check_writable

    created = list(itertools.takewhile(lambda p: not p.exists(), (out, *out.parents)))  # deepest first
    try:
        check_writable(out, "--out")
    finally:
        if dry_run:
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _options(plan, data: Path, cohorts: tuple[str, ...], out_dir: Path, model: str, rows: str,
             epochs: tuple[str, ...], crop: tuple[str, ...], batch_size: tuple[str, ...], skip_failed: bool,
             device: str, threads: int | None, workers: int | None, quiet: bool, dry_run: bool = False):
    """The command's options as a :class:`~l2r_submit.recipe.plan.Options`, paths made absolute (the
    printed commands work from any folder). Raises ValueError (one line) for a bad option; a cohort folder
    that does not exist yet is only a note for a dry run."""
    wanted = tuple(r.strip() for r in rows.split(",") if r.strip())
    bad = [r for r in wanted if r not in plan.ROWS]
    if bad or not wanted:
        raise ValueError(f"--rows {rows}: expected some of {', '.join(plan.ROWS)}")
    parsed = [plan.parse_cohort(c) for c in cohorts]
    layouts = [layout for layout, _ in parsed]
    twice = sorted({la for la in layouts if layouts.count(la) > 1})
    if twice:
        raise ValueError(f"--cohort {twice[0]} given twice; each layout is prepared once")
    for layout, src in parsed:
        if not src.is_dir() and not dry_run:
            raise ValueError(f"--cohort {layout}={src}: no such folder")
        if not src.is_dir():  # a plan can be looked at before the downloads
            click.echo(f"note: --cohort {layout}={src}: no such folder yet; the run needs it", err=True)
    if not parsed and ({"pretrain", "noisy"} & set(wanted)):
        raise ValueError("no --cohort: the pretrainings need external cohorts (or give --rows symmetric)")
    base = plan.Options(challenge_json=plan.challenge_json_of(data).absolute(),
                        cohorts=tuple((la, src.absolute()) for la, src in parsed), out=out_dir.absolute(),
                        model=model, rows=wanted, skip_failed=skip_failed, device=device, threads=threads,
                        workers=workers, quiet=quiet)
    trained = [n for n in plan.step_names(base) if n == "segment-train" or n == "symmetric"
               or n.startswith(("pretrain-", "finetune-"))]
    return plan.Options(**{**base.__dict__,
                           "epochs": plan.parse_step_values(epochs, "--epochs", trained, int),
                           "crop": plan.parse_step_values(crop, "--crop", trained, plan.crop_text),
                           "batch_size": plan.parse_step_values(batch_size, "--batch-size", trained, int)})


@recipe.command()
@click.argument("challenge_json", type=click.Path(path_type=Path))
@click.argument("cohort_jsons", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", "out_json", type=click.Path(path_type=Path), required=True,
              help="The merged dataset JSON; cohort JSONs must lie under its folder.")
def merge(challenge_json: Path, cohort_jsons: tuple[Path, ...], out_json: Path) -> None:
    """Merge the challenge's training scans (hard-linked beside OUT) and prepared cohorts into one dataset
    JSON, validated on the challenge's val pairs (the recipe's pretraining dataset)."""
    from ..recipe import merge as mg

    try:
        summary = mg.merge(challenge_json, list(cohort_jsons), out_json)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    except OSError as exc:
        raise Fail(f"{exc.filename or out_json}: {exc.strerror or exc}") from None
    cases = ", ".join(f"{k} {v}" for k, v in summary["cases"].items())
    files = ", ".join(f"{v} {k}" for k, v in summary["files"].items())
    click.echo(f"wrote {out_json}: {cases} cases; challenge files: {files}")
