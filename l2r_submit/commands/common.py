"""What every command module shares: the one-line error, and the torch-free checks of dataset and folders.

Torch-free (only click at module level), so that ``l2r --help`` stays instant.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import click


class Fail(click.ClickException):
    """A one-line error on stderr with exit code 2 (bad input)."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: D102 - one line, no usage block
        click.echo(f"error: {self.message}", err=True)


class TrainingFail(Fail):
    """The training itself failed (a non-finite loss or field): one line, exit code 1. Bad input and
    arguments are :class:`Fail`'s exit code 2."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (``docker stop``, Slurm, ``timeout``) raised as an interrupt, so that a run stops the way it
    does on Ctrl-C: the field being written is finished and every pair done is recorded."""


def stop_words(exc: KeyboardInterrupt) -> tuple[str, int]:
    """How an interrupted command says it stopped, and its exit code (128 + the signal's number)."""
    return ("stopped by SIGTERM", 143) if isinstance(exc, Terminated) else ("interrupted", 130)


@contextmanager
def stop_signals():
    """Within the block, the first SIGTERM raises :class:`Terminated` and the first Ctrl-C (SIGINT)
    ``KeyboardInterrupt``, in the main thread; later ones are ignored until the block ends, so that the
    clean-up (finishing the field being written, saving run.json) is not itself cut short. A signal the
    process already ignores stays ignored; outside the main thread nothing changes. Without it a SIGTERM
    killed a run with nothing recorded, and a container's first process ignored SIGTERM altogether."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        for other in handled:
            signal.signal(other, signal.SIG_IGN)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    handled = [s for s in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, stop) for s in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def file_by_file_stops(kept: Callable[[], str]):
    """Ctrl-C or SIGTERM during a command that writes one file per case, each atomically and recorded: one
    line, ``kept()`` (what is kept, read once stopped) and the exit code of :func:`stop_words` (130, 143),
    not click's ``Aborted!`` (exit 1) or a silent death."""
    try:
        with stop_signals():
            yield
    except KeyboardInterrupt as exc:
        how, code = stop_words(exc)
        click.echo(f"{how}: {kept()}; run the same command again to do the rest", err=True)
        sys.exit(code)


@contextmanager
def training_stops(out_dir: Path):
    """Ctrl-C or SIGTERM during a training command: one line saying what is kept and the exit code of
    :func:`stop_words` (130, 143), not click's ``Aborted!`` and exit 1. ``last.pt`` is written atomically at
    the end of each epoch, so it holds the last finished one."""
    try:
        with stop_signals():
            yield
    except KeyboardInterrupt as exc:
        how, code = stop_words(exc)
        last, best = out_dir / "last.pt", out_dir / "best.pt"
        if last.is_file():
            kept = f"{last} holds the last finished epoch; run the same command with --resume to go on"
        elif best.is_file():  # stopped between the two writes of the first epoch
            kept = (f"{best} holds the first validated epoch, but last.pt was not written, so the run cannot be "
                    "resumed; start again with another --out (or move best.pt away)")
        else:
            kept = f"no epoch had finished, nothing is kept in {out_dir}"
        click.echo(f"{how}: {kept}", err=True)
        sys.exit(code)


def training_done(row: dict, out_dir: Path) -> None:
    """The last two lines of a training command: the last epoch's row and the checkpoints; printed by rank 0
    only under ``torchrun`` (the rank that wrote them)."""
    if os.environ.get("RANK", "0") != "0":
        return
    click.echo("done: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    click.echo(checkpoints_line(out_dir))


def checkpoints_line(out_dir: Path) -> str:
    """The last line of a training command: the checkpoints and log it leaves (only those that exist: a
    resumed run whose later epochs never beat the recorded best writes no best.pt when it was removed)."""
    names = [str(out_dir / n) for n in ("last.pt", "best.pt") if (out_dir / n).is_file()]
    missing = "" if (out_dir / "best.pt").is_file() else " (no best.pt: no epoch beat the best one recorded)"
    return f"checkpoints: {', '.join(names) or 'none'}{missing}; log: {out_dir / 'log.csv'}"


def load_dataset(path: Path, data_root: Path | None, pairs_csv: Path | None = None):
    """The dataset of a JSON (or a 2020 pairs CSV); a bad one is a one-line error."""
    from ..core import dataset, dataset_2020

    try:
        if pairs_csv is not None:
            return dataset_2020.load_2020(data_root or path, pairs_csv)
        return dataset.load(path, data_root)
    except ValueError as exc:
        raise Fail(str(exc)) from None


def checked(check, value):
    """``check(value)`` (a torch-free check or parser of an option), its result; its ValueError as one line."""
    try:
        return check(value)
    except ValueError as exc:
        raise Fail(str(exc)) from None


def check_new_file(path: Path, option: str) -> None:
    """An output file option (a converted checkpoint) must name a new file in a folder that can be written:
    not a folder, not an existing file (a trained run's best.pt was replaced silently). Checked before work.

    Raises:
        Fail: one line naming the path and the option.
    """
    from ..core.folders import check_writable

    if path.is_dir():
        raise Fail(f"{path}: {option} is a folder; it names the checkpoint file to write")
    if path.exists():
        raise Fail(f"{path}: {option} exists; remove it first or name a new file (it is not replaced)")
    try:
        check_writable(path.parent, f"{option}'s folder")
    except ValueError as exc:
        raise Fail(str(exc)) from None


def check_folder_option(folder: Path | None, option: str) -> None:
    """An output folder option must not name an existing file, nor lie under one (checked before any work)."""
    from ..core.folders import check_not_a_file

    if folder is not None:
        try:
            check_not_a_file(folder, option)
        except ValueError as exc:
            raise Fail(str(exc)) from None



def write_eval(ev, result, out_json: Path, out_csv: Path, why_zero: str = "field missing") -> list[Path]:
    """Write metrics.json and the CSV (each atomically, the second even when the first fails), print the
    table, then the notes (``why_zero``: why a zero-filled pair had no field), failures and write errors on
    stderr. Returns the files written."""
    written, errors = [], []
    for path, csv_path in ((out_json, None), (out_csv, out_csv)):
        try:
            if csv_path is None:
                ev.write_outputs(result, out_json)
            else:
                ev.write_csv(result, csv_path)
            written.append(path)
        except OSError as exc:
            errors.append(f"error: {path}: cannot be written ({exc.strerror or exc})")
    click.echo(ev.summary_table(result.metrics))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    for key in result.zero_filled:
        click.echo(f"note: {key}: {why_zero}, scored as a zero field", err=True)
    for key, err in result.failed.items():
        click.echo(f"error: {key}: {err}", err=True)
    line = ev.partial_line(result)
    if line:
        click.echo(line, err=True)
    for line in errors:
        click.echo(line, err=True)
    return written

