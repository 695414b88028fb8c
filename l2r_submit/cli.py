"""The ``l2r`` command line. Options are parsed here; the work is done by library functions.

Heavy imports (numpy, scipy, torch) happen inside commands, so ``l2r --help`` is instant.
Exit codes: 0 success; 1 some pairs failed (the rest were done and written); 2 bad input, nothing done.
Arguments and input files are checked before torch is imported, so a mistake is reported at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .commands import cohort as cohort_cmd
from .commands import predict as predict_cmd
from .commands import recipe as recipe_cmd
from .commands import segment as segment_cmd
from .commands import train as train_cmd
from .commands.common import Fail, check_new_file, checked, load_dataset, write_eval
from .core.folders import check_not_input, same_file


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="l2r")
def main() -> None:
    """Learn2Reg AbdomenCTCT: register, write official displacement fields, and score them."""


@main.command()
@click.argument("dataset_json", type=click.Path(path_type=Path))
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Data folder the JSON's paths are relative to [default: the JSON's folder].")
@click.option("--split", type=click.Choice(["val", "test", "eval"]), default=None,
              help="Check only this split's pairs [default: every split].")
@click.option("--read", "read_files", is_flag=True,
              help="Also read every file in full and check it (damaged gzip, shape, NaN, non-integer labels).")
def check(dataset_json: Path, data_root: Path | None, split: str | None, read_files: bool) -> None:
    """Integrity report of a dataset JSON: keys, pairs, and every missing image or label file; with --read,
    every damaged one too.

    Checks every split's images, the training images and labels, and the labels of the scored splits
    (val, or eval for an evaluation config); test labels are not expected.
    """
    from .core import integrity

    ds = load_dataset(dataset_json, data_root)
    try:
        lines = integrity.integrity_report(ds, split, read=read_files,
                                           progress=lambda p: click.echo(f"reading {p}", err=True))
    except ValueError as exc:
        raise Fail(str(exc)) from None
    for name, pairs in ds.splits.items():
        click.echo(f"{name}: {len(pairs)} pairs")
    click.echo(f"training: {len(ds.training)} cases")
    if len(ds.training) < 2:  # valid for predict and evaluate; l2r train refuses it
        click.echo("note: l2r train needs at least 2 training cases")
    for note in ds.notes:
        click.echo(f"note: {note}")
    for line in lines:
        click.echo(line)
    n = sum(line.startswith("error") for line in lines)
    if n:
        raise Fail(f"{dataset_json}: {n} problem{'s' if n > 1 else ''} found")
    click.echo("ok")


class _FilePath(click.ParamType):
    """An output file's path: one that ends with a slash names a folder, refused here (pathlib would drop
    the slash and the file would take the folder's name)."""

    name = "file"

    def __init__(self, example: str) -> None:
        self.example = example

    def convert(self, value, param, ctx):
        if isinstance(value, Path):
            return value
        if str(value).endswith(("/", "\\")):
            self.fail(f"'{value}' ends with a slash, a folder; name the file to write (e.g. {value}{self.example})",
                      param, ctx)
        return Path(value)


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
@click.option("--out", "out_json", type=_FilePath("metrics.json"), default=None,
              help="metrics.json in the official schema [default: DISP_DIR/metrics.json, beside the fields].")
@click.option("--csv", "out_csv", type=_FilePath("metrics.csv"), default=None,
              help="Per-pair CSV [default: --out with .csv].")
@click.option("--protocol", type=click.Choice(["2025", "2024", "2022", "2020"]), default="2025", show_default=True,
              help="Official evaluator version whose rules apply: 2025 (current: long names for same-modality "
                   "pairs, SDlogJ 30 = 0.7 quantile), 2024 (short names, 0.7), 2022 (short names, 0.3), "
                   "2020 (half-resolution float16 npz, ddof 1).")
@click.option("--pairs", multiple=True,
              help="Score only these pairs of the split, comma-separated, e.g. 0001_0004,0002_0004 (repeatable; names "
                   "as predict --pairs takes them); the aggregates are over them.")
@click.option("--missing", type=click.Choice(["error", "zero"]), default="error", show_default=True,
              help="Missing fields: stop before any work, or score them as zero fields.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel processes.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--expected", "expected_json", type=click.Path(path_type=Path), default=None,
              help="Then compare the metrics with these expected results (as `l2r compare`; checked before "
                   "scoring); exit 1 with a diff when a metric is off.")
def evaluate(dataset_json: Path, disp_dir: Path, split: str | None, data_root: Path | None,
             pairs_csv: Path | None, out_json: Path | None, out_csv: Path | None, protocol: str,
             pairs: tuple[str, ...], missing: str, workers: int, quiet: bool, expected_json: Path | None) -> None:
    """Score the displacement fields in DISP_DIR with the official Learn2Reg metrics.

    DATASET_JSON is a dataset JSON (AbdomenCTCT_dataset.json) or an official evaluation config
    (task_name, evaluation_methods, expected_shape, eval_pairs).
    """
    from .core.selection import parse_pairs_option
    from .evaluation import evaluate as ev

    only = checked(parse_pairs_option, pairs)
    expected = None
    if expected_json is not None:  # a wrong file is found now, not after minutes of scoring
        from .evaluation import compare as cmp

        expected = checked(lambda data: cmp.check_expected(data, str(expected_json)), _read_json(expected_json))
    out_json = out_json or disp_dir / "metrics.json"
    csv_said = out_csv is not None
    out_csv = out_csv or out_json.with_suffix(".csv")
    ds = load_dataset(dataset_json, data_root, pairs_csv)
    cfg = ev.EvalConfig(ds, disp_dir, split, protocol, missing, workers, progress=not quiet, only=only)
    try:
        if disp_dir.exists() and not disp_dir.is_dir():
            raise ValueError(f"{disp_dir}: is a file; DISP_DIR is the folder of displacement fields")
        if same_file(out_csv, out_json):
            raise ValueError(f"{out_csv}: --csv and --out name the same file; give them different paths"
                             + ("" if csv_said else " (--csv defaults to --out with .csv)"))
        for path, option in ((out_json, "--out"), (out_csv, "--csv")):
            check_not_input(path, ev.input_files(ds, disp_dir, pairs_csv), option)
            ev.check_output(path)
        result = ev.run(cfg)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    written = write_eval(ev, result, out_json, out_csv)
    for note in ds.notes:
        if note.startswith("no 'labels' key"):
            click.echo(f"note: {ds.source}: {note}", err=True)
    if only is not None:
        click.echo(f"note: --pairs: {len(result.metrics['cases']) + len(result.failed)} of the "
                   f"{len(ds.pairs(split))} pairs of the split scored; the aggregates are over them only", err=True)
    click.echo(f"{len(result.metrics['cases'])} pairs scored, {len(result.failed)} failed; "
               f"wrote {' and '.join(map(str, written)) or 'nothing'}")
    off = False
    if expected is not None and out_json in written:
        metrics = checked(lambda data: cmp.check_metrics(data, str(out_json)), _read_json(out_json))
        off = _report_comparison(metrics, expected, expected_json)
    elif expected is not None:
        click.echo(f"note: --expected: {out_json} was not written, so nothing was compared", err=True)
        off = True
    if result.failed or len(written) < 2 or off:
        sys.exit(1)


def _read_json(path: Path) -> object:
    """A JSON file's content; unreadable or malformed: one line naming it (exit 2)."""
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Fail(f"{path}: cannot be read ({exc})") from None


def _report_comparison(metrics: dict, expected: dict, expected_json: Path) -> bool:
    """Print ``l2r compare``'s verdict of checked metrics against checked expected results; True when a
    metric is off."""
    from .evaluation import compare as cmp

    problems = cmp.compare(metrics, expected)
    for line in problems:
        click.echo(f"FAIL {line}")
    if problems:
        click.echo(f"{len(problems)} metric(s) outside tolerance")
    else:
        click.echo(f"all metrics within tolerance of {expected_json}")
    return bool(problems)


@main.command()
@click.argument("metrics_json", type=click.Path(path_type=Path))
@click.argument("expected_json", type=click.Path(path_type=Path))
@click.option("--write", is_flag=True, help="Write EXPECTED_JSON from METRICS_JSON (measured numbers) instead.")
@click.option("--tol", "tols", multiple=True, metavar="NAME=VALUE",
              help="With --write: absolute tolerance per metric [default: DSC=0.02 HD95=1.0 LogJacDetStd=0.01].")
def compare(metrics_json: Path, expected_json: Path, write: bool, tols: tuple[str, ...]) -> None:
    """Check a metrics.json against expected results; exit 1 with a readable diff when a metric is off."""
    import json

    from .evaluation import compare as cmp
    from .core.io import atomic_write

    try:
        metrics = cmp.check_metrics(_read_json(metrics_json), str(metrics_json))
        expected = None if write else cmp.check_expected(_read_json(expected_json), str(expected_json))
    except ValueError as exc:
        raise Fail(str(exc)) from None
    if write:
        try:
            check_not_input(expected_json, [metrics_json], "EXPECTED_JSON")
            text = json.dumps(cmp.expected_from_metrics(metrics, cmp.parse_tolerances(tols, metrics),
                                                        str(metrics_json)), indent=2) + "\n"
            atomic_write(expected_json, lambda tmp: Path(tmp).write_text(text))
        except ValueError as exc:
            raise Fail(str(exc)) from None
        except OSError as exc:
            raise Fail(f"{expected_json}: cannot be written ({exc.strerror or exc})") from None
        click.echo(f"wrote {expected_json}")
        return
    if _report_comparison(metrics, expected, expected_json):
        sys.exit(1)


@main.command()
@click.argument("metrics_json", type=click.Path(path_type=Path))
@click.option("--qc", "qc_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of QC pictures (l2r predict --qc): shown per pair.")
@click.option("--out", "out_html", type=_FilePath("report.html"), required=True, help="The HTML page to write.")
def report(metrics_json: Path, qc_dir: Path | None, out_html: Path) -> None:
    """One self-contained HTML page of a metrics.json: aggregates, per-organ box plots, sortable pairs, QC."""
    from .evaluation import report as rp

    try:
        check_not_input(out_html, [metrics_json], "--out")
        rp.report_file(metrics_json, out_html, qc_dir)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    click.echo(f"wrote {out_html}")


@main.command("import-weights")
@click.argument("original", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True, help="Our checkpoint file.")
@click.option("--keep-deep-supervision", is_flag=True, help="Keep the coarse heads (only needed to train on).")
@click.option("--source", type=click.Choice(["auto", "abdominal", "brain"]), default="auto", show_default=True,
              help="Which of the authors' projects the file comes from. auto: abdominal when the shapes prove it "
                   "(3 input channels); a 1-channel file needs --source abdominal. Brain networks are refused.")
def import_weights(original: Path, out_path: Path, keep_deep_supervision: bool, source: str) -> None:
    """Convert a checkpoint of Estienne et al. (their .pth) into an l2r_submit checkpoint."""
    from .nets import checkpoint

    check_new_file(out_path, "--out")
    try:
        net = checkpoint.import_original(original, keep_deep_supervision=keep_deep_supervision, source=source)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    checkpoint.save(out_path, net, imported_from=str(original), source="abdominal")
    cfg = net.cfg
    click.echo(f"wrote {out_path}: {cfg.in_channels}-channel input, channels {cfg.channels}, "
               f"orientation {cfg.orientation}, deep supervision {cfg.deep_supervision}")


main.add_command(train_cmd.train)
main.add_command(predict_cmd.predict)
main.add_command(cohort_cmd.cohort)
main.add_command(segment_cmd.segment)
main.add_command(recipe_cmd.recipe)


if __name__ == "__main__":  # pragma: no cover
    main()
