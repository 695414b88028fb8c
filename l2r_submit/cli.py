"""The ``l2r`` command line. Options are parsed here; the work is done by library functions.

Heavy imports (numpy, scipy, torch) happen inside commands, so ``l2r --help`` is instant.
Exit codes: 0 success; 1 some pairs failed (the rest were done and written); 2 bad input, nothing done.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__


class _Fail(click.ClickException):
    """A one-line error on stderr with exit code 2 (bad input)."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: D102 - one line, no usage block
        click.echo(f"error: {self.message}", err=True)


def _load_dataset(path: Path, data_root: Path | None, pairs_csv: Path | None = None):
    from . import dataset

    try:
        if pairs_csv is not None:
            return dataset.load_2020(data_root or path, pairs_csv)
        return dataset.load(path, data_root)
    except ValueError as exc:
        raise _Fail(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="l2r")
def main() -> None:
    """Learn2Reg AbdomenCTCT: register, write official displacement fields, and score them."""


@main.command()
@click.argument("dataset_json", type=click.Path(path_type=Path))
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Data folder the JSON's paths are relative to [default: the JSON's folder].")
@click.option("--split", type=click.Choice(["val", "test", "eval"]), default=None)
def check(dataset_json: Path, data_root: Path | None, split: str | None) -> None:
    """Integrity report of a dataset JSON: keys, pairs, and every missing image or label file."""
    from . import dataset

    ds = _load_dataset(dataset_json, data_root)
    lines = dataset.integrity_report(ds, split)
    for name, pairs in ds.splits.items():
        click.echo(f"{name}: {len(pairs)} pairs")
    for line in lines:
        click.echo(line)
    if any(line.startswith("error") for line in lines):
        raise _Fail(f"{dataset_json}: {sum(line.startswith('error') for line in lines)} problems found")
    click.echo("ok")


@main.command()
@click.argument("dataset_json", type=click.Path(path_type=Path))
@click.argument("disp_dir", type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["val", "test", "eval"]), default=None,
              help="Pairs to score [default: val when it has pairs, else test; eval for an evaluation config].")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Data folder the JSON's paths are relative to [default: the JSON's folder]. "
                   "With --pairs-csv: the 2020 layout's root (Training/img, Training/label).")
@click.option("--pairs-csv", type=click.Path(path_type=Path), default=None,
              help="2020 layout: a CSV with columns fixed,moving (then DATASET_JSON is the data root).")
@click.option("--out", "out_json", type=click.Path(path_type=Path), default=Path("metrics.json"), show_default=True,
              help="metrics.json in the official schema.")
@click.option("--csv", "out_csv", type=click.Path(path_type=Path), default=None,
              help="Per-pair CSV [default: --out with .csv].")
@click.option("--protocol", type=click.Choice(["2022", "2020"]), default="2022", show_default=True,
              help="2020: half-resolution float16 npz, ddof 1, 0.3 quantiles.")
@click.option("--missing", type=click.Choice(["error", "zero"]), default="error", show_default=True,
              help="Missing fields: stop before any work, or score them as zero fields.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel processes.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate(dataset_json: Path, disp_dir: Path, split: str | None, data_root: Path | None,
             pairs_csv: Path | None, out_json: Path, out_csv: Path | None, protocol: str, missing: str,
             workers: int, quiet: bool) -> None:
    """Score the displacement fields in DISP_DIR with the official Learn2Reg metrics.

    DATASET_JSON is a dataset JSON (AbdomenCTCT_dataset.json) or an official evaluation config
    (task_name, evaluation_methods, expected_shape, eval_pairs).
    """
    from . import evaluate as ev

    ds = _load_dataset(dataset_json, data_root, pairs_csv)
    cfg = ev.EvalConfig(ds, disp_dir, split, protocol, missing, workers, progress=not quiet)
    try:
        result = ev.run(cfg)
    except ValueError as exc:
        raise _Fail(str(exc)) from None
    out_csv = out_csv or out_json.with_suffix(".csv")
    ev.write_outputs(result, out_json, out_csv)
    click.echo(ev.summary_table(result.metrics))
    for key in result.zero_filled:
        click.echo(f"note: {key}: field missing, scored as a zero field", err=True)
    for key, err in result.failed.items():
        click.echo(f"error: {key}: {err}", err=True)
    done = len(result.metrics["cases"])
    click.echo(f"{done} pairs scored, {len(result.failed)} failed; wrote {out_json} and {out_csv}")
    if result.failed:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
