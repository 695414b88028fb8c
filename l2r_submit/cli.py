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
from .registration import predict_args as pa


class _Fail(click.ClickException):
    """A one-line error on stderr with exit code 2 (bad input)."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: D102 - one line, no usage block
        click.echo(f"error: {self.message}", err=True)


def _load_dataset(path: Path, data_root: Path | None, pairs_csv: Path | None = None):
    from .core import dataset

    try:
        if pairs_csv is not None:
            return dataset.load_2020(data_root or path, pairs_csv)
        return dataset.load(path, data_root)
    except ValueError as exc:
        raise _Fail(str(exc)) from None


def _checked(check, value):
    """``check(value)`` (a torch-free check of :mod:`l2r_submit.registration.predict_args`), its ValueError as one line."""
    try:
        check(value)
    except ValueError as exc:
        raise _Fail(str(exc)) from None
    return value


def _check_folder_option(folder: Path | None, option: str) -> None:
    """An output folder option must not name an existing file, nor lie under one (checked before any work)."""
    from .core.folders import check_not_a_file

    if folder is not None:
        try:
            check_not_a_file(folder, option)
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
@click.option("--split", type=click.Choice(["val", "test", "eval"]), default=None,
              help="Check only this split's pairs [default: every split].")
def check(dataset_json: Path, data_root: Path | None, split: str | None) -> None:
    """Integrity report of a dataset JSON: keys, pairs, and every missing image or label file.

    Checks every split's images, the training images and labels, and the labels of the scored splits
    (val, or eval for an evaluation config); test labels are not expected.
    """
    from .core import integrity

    ds = _load_dataset(dataset_json, data_root)
    try:
        lines = integrity.integrity_report(ds, split)
    except ValueError as exc:
        raise _Fail(str(exc)) from None
    for name, pairs in ds.splits.items():
        click.echo(f"{name}: {len(pairs)} pairs")
    click.echo(f"training: {len(ds.training)} cases")
    for note in ds.notes:
        click.echo(f"note: {note}")
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
@click.option("--out", "out_json", type=click.Path(path_type=Path), default=None,
              help="metrics.json in the official schema [default: DISP_DIR/metrics.json, beside the fields].")
@click.option("--csv", "out_csv", type=click.Path(path_type=Path), default=None,
              help="Per-pair CSV [default: --out with .csv].")
@click.option("--protocol", type=click.Choice(["2025", "2024", "2022", "2020"]), default="2025", show_default=True,
              help="Official evaluator version whose rules apply: 2025 (current: long names for same-modality "
                   "pairs, SDlogJ 30 = 0.7 quantile), 2024 (short names, 0.7), 2022 (short names, 0.3), "
                   "2020 (half-resolution float16 npz, ddof 1).")
@click.option("--missing", type=click.Choice(["error", "zero"]), default="error", show_default=True,
              help="Missing fields: stop before any work, or score them as zero fields.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel processes.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate(dataset_json: Path, disp_dir: Path, split: str | None, data_root: Path | None,
             pairs_csv: Path | None, out_json: Path | None, out_csv: Path | None, protocol: str, missing: str,
             workers: int, quiet: bool) -> None:
    """Score the displacement fields in DISP_DIR with the official Learn2Reg metrics.

    DATASET_JSON is a dataset JSON (AbdomenCTCT_dataset.json) or an official evaluation config
    (task_name, evaluation_methods, expected_shape, eval_pairs).
    """
    from .evaluation import evaluate as ev

    out_json = out_json or disp_dir / "metrics.json"
    out_csv = out_csv or out_json.with_suffix(".csv")
    ds = _load_dataset(dataset_json, data_root, pairs_csv)
    cfg = ev.EvalConfig(ds, disp_dir, split, protocol, missing, workers, progress=not quiet)
    try:
        for path in (out_json, out_csv):
            ev.check_output(path)
        result = ev.run(cfg)
    except ValueError as exc:
        raise _Fail(str(exc)) from None
    _write_eval(ev, result, out_json, out_csv)
    for note in ds.notes:
        if note.startswith("no 'labels' key"):
            click.echo(f"note: {ds.source}: {note}", err=True)
    click.echo(f"{len(result.metrics['cases'])} pairs scored, {len(result.failed)} failed; "
               f"wrote {out_json} and {out_csv}")
    if result.failed:
        sys.exit(1)


def _write_eval(ev, result, out_json: Path, out_csv: Path) -> None:
    """Write the outputs, print the table, then the notes and failures on stderr."""
    try:
        ev.write_outputs(result, out_json, out_csv)
    except OSError as exc:
        raise _Fail(f"{out_json}: cannot be written ({exc.strerror or exc})") from None
    click.echo(ev.summary_table(result.metrics))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    for key in result.zero_filled:
        click.echo(f"note: {key}: field missing, scored as a zero field", err=True)
    for key, err in result.failed.items():
        click.echo(f"error: {key}: {err}", err=True)
    line = ev.partial_line(result)
    if line:
        click.echo(line, err=True)


@main.command()
@click.argument("dataset_json", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Run folder.")
@click.option("--preset", type=click.Choice(["baseline", "symmetric", "pretrain-unsupervised", "pretrain-noisy",
                                             "finetune"]), default="symmetric", show_default=True,
              help="The paper's training setups.")
@click.option("--model", "model_preset", type=click.Choice(["paper", "paper-nods", "cpu-small", "cpu-fast", "tiny"]),
              default="paper", show_default=True,
              help="Network preset (paper = 30.8 M parameters with deep supervision, as every paper run).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="[default: 300]")
@click.option("--crop", default=None, help="Random crop, e.g. 128,128,128 or none for whole volumes [default: 128^3].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Global batch, split over torchrun's processes [default: 2].")
@click.option("--lr", type=float, default=None, help="[default: 1e-4]")
@click.option("--val-every", type=click.IntRange(min=1), default=None, help="[default: 20]")
@click.option("--init", "init", type=click.Path(path_type=Path), default=None, help="Checkpoint to fine-tune.")
@click.option("--labels-dir", type=click.Path(path_type=Path), default=None,
              help="Label maps from another source (e.g. pseudo-labels), named like the images.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any config field, e.g. model.channel_multiplier=2, loss.reg=0.05, loss.similarity=ncc.")
@click.option("--final-submission", is_flag=True,
              help="Train on every training image, val subjects included (the authors' submission model); "
                   "best.pt is then the last epoch, never chosen by a val score. Default: val subjects left out.")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="DataLoader workers [default: 2].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads [default: all].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out where it stopped (same settings).")
@click.option("--data-root", type=click.Path(path_type=Path), default=None)
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
def train(dataset_json: Path, out_dir: Path, preset: str, model_preset: str, epochs: int | None, crop: str | None,
          batch_size: int | None, lr: float | None, val_every: int | None, init: Path | None,
          labels_dir: Path | None, settings: tuple[str, ...], final_submission: bool, workers: int | None,
          device: str, threads: int | None, seed: int, resume: bool, data_root: Path | None, quiet: bool) -> None:
    """Train the seed network on DATASET_JSON's training images, validating on its val pairs."""
    _check_folder_option(out_dir, "--out")
    ds = _load_dataset(dataset_json, data_root)  # before torch is imported: bad input is reported at once
    from .training import train as tr

    try:
        base = tr.preset_config(preset, model_preset, init=str(init) if init else None,
                                labels_dir=str(labels_dir) if labels_dir else None)
        overrides: dict = {"device": device, "seed": seed, "exclude_val_subjects": not final_submission}
        for key, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("val_every", val_every),
                           ("num_workers", workers), ("threads", threads)):
            if value is not None:
                overrides[key] = value
        if crop is not None:
            overrides["crop"] = tr.parse_setting(base, "crop", crop)
        for item in settings:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item}: expected KEY=VALUE")
            overrides[key.strip()] = tr.parse_setting(base, key.strip(), value)
        cfg = tr.preset_config(preset, model_preset, init=base.init, labels_dir=base.labels_dir, **overrides)
        row = tr.run(cfg, ds, out_dir, resume=resume, progress=not quiet)
    except ValueError as exc:
        raise _Fail(str(exc)) from None
    click.echo("done: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    click.echo(f"checkpoints: {out_dir / 'last.pt'}, {out_dir / 'best.pt'}; log: {out_dir / 'log.csv'}")


@main.command()
@click.argument("dataset_json", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder for the fields.")
@click.option("--split", type=click.Choice(["val", "test"]), default=None,
              help="[default: val when it has pairs, else test]")
@click.option("--pairs", default=None, help="Comma-separated subset, e.g. 0001_0004,0002_0004.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Weights file [default: the shipped weights, l2r_submit/weights/].")
@click.option("--format", "fmt", type=click.Choice(["nii.gz", "npz", "npz2020"]), default="nii.gz", show_default=True,
              help="npz2020: the 2020 half-resolution float16 form.")
@click.option("--names", type=click.Choice(["long", "short", "both"]), default=None,
              help="long: disp_FFFF_0000_MMMM_0000 (evaluator since 2025); short: disp_FFFF_MMMM (2022-2024 "
                   "and 2020 evaluators) [default: long; short with --format npz2020].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--io-iters", type=click.IntRange(min=0), default=None,
              help="Instance-optimisation iterations (0 = network only) [default: 100].")
@click.option("--io-similarity", type=click.Choice(["mind", "mse"]), default="mind", show_default=True,
              help="What the refinement matches: MIND-SSC descriptors, or the CT windows' intensities.")
@click.option("--io-field", type=click.Choice(["velocity", "displacement"]), default="velocity", show_default=True,
              help="The refinement's update: exp of a stationary velocity field (invertible), or a displacement.")
@click.option("--io-reg", type=click.FloatRange(min=0), default=None,
              help="Diffusion weight of the refinement [default: 0.25 for velocity, 1.0 for displacement].")
@click.option("--no-network", is_flag=True,
              help="Drop the network stage: the next stage starts from a zero field (training-free).")
@click.option("--stages", default=None,
              help="Comma list among network,search,adam, run in that order [default: adam; network,adam with "
                   "--checkpoint or --io-iters 0].")
@click.option("--search-hw", type=click.IntRange(1, 12), default=None,
              help="Search range in grid steps per axis [default: 4].")
@click.option("--search-grid", type=click.IntRange(2, 16), default=None, callback=lambda _c, _p, v: _checked(pa.check_search_grid, v),
              help="Search control-grid spacing in voxels, even [default: 6].")
@click.option("--qc", "qc_dir", type=click.Path(path_type=Path), default=None, help="Write one QC PNG per pair here.")
@click.option("--overwrite", is_flag=True, help="Redo pairs whose outputs already exist.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads [default: all; with several ranks on CPU, the cores shared out].")
@click.option("--sequential", is_flag=True,
              help="Read, register and write one pair after the other [default: the next pair is read and the "
                   "previous field written while a pair is registered].")
@click.option("--shard", default=None, metavar="K/N",
              help="Predict only rank K's share of N (0 <= K < N; every N-th pair from the K-th); each rank "
                   "records run.shardKofN.json and merges them into run.json [default: under torchrun, "
                   "its RANK/WORLD_SIZE; else all pairs].")
@click.option("--data-root", type=click.Path(path_type=Path), default=None)
@click.option("--evaluate", "do_eval", is_flag=True, help="Then score the fields (needs labels): metrics.json in --out.")
@click.option("--report", "do_report", is_flag=True,
              help="With --evaluate: also write report.html in --out (l2r report, with the --qc pictures).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict(dataset_json: Path, out_dir: Path, split: str | None, pairs: str | None, checkpoint: Path | None,
            fmt: str, names: str | None, device: str, io_iters: int | None, io_similarity: str, io_field: str,
            io_reg: float | None, no_network: bool,
            stages: str | None, search_hw: int | None, search_grid: int | None, qc_dir: Path | None, overwrite: bool,
            threads: int | None, sequential: bool, shard: str | None, data_root: Path | None, do_eval: bool,
            do_report: bool, quiet: bool) -> None:
    """Register every pair of DATASET_JSON and write official displacement fields to --out.

    Several processes: ``torchrun --nproc_per_node N -m l2r_submit predict ...`` or one process per
    ``--shard K/N`` (each on its own GPU when there are several); a rerun redoes a killed rank's pairs.
    """
    import os

    if do_report and not do_eval:
        raise _Fail("--report needs --evaluate (the page is made from the run's metrics.json)")
    from .registration.shards import from_environment, parse_shard

    try:
        rank = parse_shard(shard) if shard is not None else from_environment(os.environ)
    except ValueError as exc:
        raise _Fail(str(exc)) from None
    if rank is not None and do_eval:
        raise _Fail("--evaluate with several ranks: score the merged folder afterwards with l2r evaluate")
    _checked(pa.check_stages, stages)
    wanted = tuple(p.strip() for p in pairs.split(",") if p.strip()) if pairs is not None else None
    if wanted == ():
        raise _Fail(f"--pairs {pairs!r}: no pair names given (expected e.g. 0001_0004,0002_0004)")
    if names is None:
        names = "short" if fmt == "npz2020" else "long"
    elif fmt == "npz2020" and names == "long":
        raise _Fail("--format npz2020 --names long: the 2020 evaluator reads only disp_FFFF_MMMM.npz; "
                    "use --names short or both")
    _check_folder_option(out_dir, "--out")
    _check_folder_option(qc_dir, "--qc")
    ds = _load_dataset(dataset_json, data_root)  # before torch is imported: bad input is reported at once
    request = None
    if rank is None:
        request = pa.request_of(click.get_current_context().params, checkpoint)
        from .registration.quick_rerun import nothing_to_do

        kept = 0 if overwrite or do_eval else nothing_to_do(ds, out_dir, split, wanted, fmt, names, request)
        if kept:
            click.echo(f"0 pairs done, {kept} skipped, 0 failed: nothing to do, every field as {out_dir / 'run.json'} "
                       "records (checked without loading torch)")
            return
    from .registration import predict as pr
    from .registration.search import SearchConfig
    from .registration.stages import parse_stages

    io_cfg = pr.default_io(pr.DEFAULT_IO_ITERS if io_iters is None else io_iters, io_field, io_reg, io_similarity)
    try:
        names_run = None if stages is None else parse_stages(stages)
        search_cfg = SearchConfig(**{k: v for k, v in (("hw", search_hw), ("grid", search_grid)) if v is not None})
    except ValueError as exc:
        raise _Fail(f"--stages/--search-*: {exc}") from None
    cfg = pr.PredictConfig(ds, out_dir, split, wanted, checkpoint, fmt=fmt, names=names, device=device, io=io_cfg,
                           network=not no_network, stages=names_run, search=search_cfg, qc_dir=qc_dir,
                           overwrite=overwrite, threads=threads, progress=not quiet, pipeline=not sequential,
                           shard=rank, request=request)
    try:
        manifest = pr.run(cfg)
    except ValueError as exc:
        raise _Fail(str(exc)) from None
    line, failed = pr.summary(manifest)
    if rank is None:
        click.echo(f"{line}; wrote {out_dir} and {out_dir / 'run.json'}")
    else:
        merged = ", ".join(manifest.get("merged", [])) or "none"
        click.echo(f"rank {rank[0]}/{rank[1]}: {line}; wrote {out_dir}; run.json merged from ranks {merged}")
    if do_eval:
        failed += _evaluate_after_predict(ds, out_dir, split, fmt, names, manifest, quiet)
        if do_report and (out_dir / "metrics.json").is_file():
            failed += _report_after_predict(out_dir, qc_dir)
    if failed:
        sys.exit(1)


def _evaluate_after_predict(ds, out_dir: Path, split: str | None, fmt: str, names: str, manifest: dict,
                            quiet: bool) -> int:
    """``predict --evaluate``: score exactly the pairs of this run with the evaluator version that reads
    the names written; a pair that failed or was not tried is scored as a zero field and marked (never
    an earlier run's file left in the folder). Returns the number of problems (one line each on stderr)."""
    from .evaluation import evaluate as ev

    selected = tuple(manifest["selected"])
    not_made = tuple(k for k in selected if manifest["pairs"].get(k, {}).get("status") in ("failed", "not tried"))
    protocol = "2020" if fmt == "npz2020" else names_protocol(names)
    ecfg = ev.EvalConfig(ds, out_dir, split, protocol, "zero", progress=not quiet, only=selected, zero=not_made)
    try:
        result = ev.run(ecfg)
    except ValueError as exc:
        click.echo(f"error: evaluation: {exc}", err=True)
        return 1
    try:
        _write_eval(ev, result, out_dir / "metrics.json", out_dir / "metrics.csv")
    except _Fail as exc:
        click.echo(f"error: {exc.message}", err=True)
        return 1
    click.echo(f"{len(result.metrics['cases'])} pairs scored, {len(result.failed)} failed; "
               f"wrote {out_dir / 'metrics.json'}")
    return len(result.failed)


def _report_after_predict(out_dir: Path, qc_dir: Path | None) -> int:
    """``predict --evaluate --report``: report.html beside metrics.json; 1 (one stderr line) if it fails."""
    from .evaluation import report as rp

    try:
        click.echo(f"wrote {rp.report_file(out_dir / 'metrics.json', out_dir / 'report.html', qc_dir)}")
    except ValueError as exc:
        click.echo(f"error: report: {exc}", err=True)
        return 1
    return 0


def names_protocol(names: str) -> str:
    """The evaluator version that reads fields written with ``--names``: short names are the 2024 one's."""
    return "2024" if names == "short" else "2025"


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

    def read(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _Fail(f"{path}: cannot be read ({exc})") from None

    try:
        metrics = cmp.check_metrics(read(metrics_json), str(metrics_json))
        expected = None if write else cmp.check_expected(read(expected_json), str(expected_json))
    except ValueError as exc:
        raise _Fail(str(exc)) from None
    if write:
        tolerance = dict(cmp.DEFAULT_TOLERANCE)
        for item in tols:
            name, _, value = item.partition("=")
            try:
                tolerance[name] = float(value)
            except ValueError:
                raise _Fail(f"--tol {item}: expected NAME=NUMBER") from None
        text = json.dumps(cmp.expected_from_metrics(metrics, tolerance), indent=2) + "\n"
        atomic_write(expected_json, lambda tmp: Path(tmp).write_text(text))
        click.echo(f"wrote {expected_json}")
        return
    problems = cmp.compare(metrics, expected)
    for line in problems:
        click.echo(f"FAIL {line}")
    if problems:
        click.echo(f"{len(problems)} metric(s) outside tolerance")
        sys.exit(1)
    click.echo(f"all metrics within tolerance of {expected_json}")


@main.command()
@click.argument("metrics_json", type=click.Path(path_type=Path))
@click.option("--qc", "qc_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of QC pictures (l2r predict --qc): shown per pair.")
@click.option("--out", "out_html", type=click.Path(path_type=Path), required=True, help="The HTML page to write.")
def report(metrics_json: Path, qc_dir: Path | None, out_html: Path) -> None:
    """One self-contained HTML page of a metrics.json: aggregates, per-organ box plots, sortable pairs, QC."""
    from .evaluation import report as rp

    try:
        rp.report_file(metrics_json, out_html, qc_dir)
    except ValueError as exc:
        raise _Fail(str(exc)) from None
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

    try:
        net = checkpoint.import_original(original, keep_deep_supervision=keep_deep_supervision, source=source)
    except ValueError as exc:
        raise _Fail(str(exc)) from None
    checkpoint.save(out_path, net, imported_from=str(original), source="abdominal")
    cfg = net.cfg
    click.echo(f"wrote {out_path}: {cfg.in_channels}-channel input, channels {cfg.channels}, "
               f"orientation {cfg.orientation}, deep supervision {cfg.deep_supervision}")


from .commands import cohort as _cohort_cmd; main.add_command(_cohort_cmd.cohort)  # noqa: E402,E702
from .commands import recipe as _recipe_cmd; main.add_command(_recipe_cmd.recipe)  # noqa: E402,E702
from .commands import segment as _segment_cmd; main.add_command(_segment_cmd.segment)  # noqa: E402,E702


if __name__ == "__main__":  # pragma: no cover
    main()
