"""``l2r predict``: options parsed and checked here (before torch is imported), the work done by
:mod:`l2r_submit.registration.predict`; ``--evaluate`` and ``--report`` afterwards."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..registration import predict_args as pa
from .common import Fail, check_folder_option, checked, load_dataset, stop_signals, stop_words, write_eval


@click.command()
@click.argument("dataset_json", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder for the fields.")
@click.option("--split", type=click.Choice(["val", "test"]), default=None,
              help="[default: val when it has pairs, else test]")
@click.option("--pairs", multiple=True, help="Comma-separated subset, e.g. 0001_0004,0002_0004 (repeatable); a pair of other "
                   "channels by its case key or field name, e.g. '0011_0001<--0011_0000' or 0011_0001_0011_0000.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Weights of the network stage (refused when it does not run) [default: the shipped weights, "
                   "l2r_submit/weights/].")
@click.option("--format", "fmt", type=click.Choice(["nii.gz", "npz", "npz2020"]), default="nii.gz", show_default=True,
              help="npz2020: the 2020 half-resolution float16 form.")
@click.option("--names", type=click.Choice(["long", "short", "both"]), default=None,
              help="long: disp_FFFF_0000_MMMM_0000 (evaluator since 2025); short: disp_FFFF_MMMM (2022-2024 "
                   "and 2020 evaluators; one modality, or _0000 <- _0001) [default: long; short with --format "
                   "npz2020].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--io-iters", type=click.IntRange(min=0), default=None,
              help="Refinement (Adam) iterations; 0 = no refinement; given, it also sets pairs with a non-CT "
                   "image unless --io-iters-non-ct is given [default: 40 after the search, at half resolution "
                   "(120 with a non-CT image, unless floored against a soft-window CT); 80 without it, quarter "
                   "then half resolution].")
@click.option("--io-iters-non-ct", type=click.IntRange(min=0), default=None,
              help="Refinement iterations for a pair in which an image is not CT (the dataset's modality "
                   "for its channel is not CT), unless that image is floored against a CT read in the soft-tissue "
                   "window (MR against an abdominal CT with flat air gets --io-iters: run.json's 'intensity' "
                   "then says 'floored' and 'ct') "
                   "[default: 120 after the search with --io-iters unset; else --io-iters].")
@click.option("--io-similarity", type=click.Choice(["mind", "mse"]), default="mind", show_default=True,
              help="What the refinement matches: MIND-SSC descriptors, or the CT windows' intensities.")
@click.option("--io-field", type=click.Choice(["velocity", "displacement"]), default="velocity", show_default=True,
              help="The refinement's update: exp of a stationary velocity field (invertible), or a displacement.")
@click.option("--io-reg", type=click.FloatRange(min=0), default=None,
              help="Diffusion weight of the refinement [default: velocity 0.125 after the search, 0.25 without it; "
                   "displacement 1.0].")
@click.option("--no-network", is_flag=True,
              help="Drop the network stage: the next stage starts from a zero field (training-free).")
@click.option("--stages", default=None,
              help="Comma list among network,affine,search,adam, run in that order [default: search,adam; "
                   "network,adam with --checkpoint or --io-iters 0].")
@click.option("--affine-model", type=click.Choice(["affine", "translation"]), default=None,
              help="What the affine stage (--stages affine,search,adam; off by default) fits to a wide search's "
                   "displacements by least trimmed squares [default: affine].")
@click.option("--search-hw", type=click.IntRange(1, 12), default=None,
              help="Search range in grid steps per axis [default: 4].")
@click.option("--search-grid", type=click.IntRange(2, 16), default=None,
              help="Search control-grid spacing in voxels [default: 6].")
@click.option("--search-prior", type=click.FloatRange(min=0), default=None,
              help="Pull of the search towards small displacements (after the network: towards its field), "
                   "for pairs known to be roughly aligned: at the edge of the range along one axis it adds W "
                   "times the mean cost [default: 0, none].")
@click.option("--search-centre", default=None, metavar="AXES|none",
              help="Array axes across the patient along which the search also starts from the translation that "
                   "lines up the two bodies' centroids, keeping the start that matches better (e.g. 0,1), or "
                   "'none' [default: the two axes other than the one the fixed image's header points head to "
                   "feet; 0,1 (the challenge's frame) when the header cannot say].")
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
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Data folder the JSON's paths are relative to [default: the JSON's folder].")
@click.option("--evaluate", "do_eval", is_flag=True, help="Then score the fields (needs labels): metrics.json in --out.")
@click.option("--report", "do_report", is_flag=True,
              help="With --evaluate: also write report.html in --out (l2r report, with the --qc pictures).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict(**options) -> None:
    """Register every pair of DATASET_JSON and write official displacement fields to --out.

    Several processes: ``torchrun --nproc_per_node N -m l2r_submit predict ...`` or one process per
    ``--shard K/N`` (each on its own GPU when there are several); a rerun redoes a killed rank's pairs.
    """
    with stop_signals():  # from the start: also while loading, and during --evaluate and --report
        try:
            _predict(**options)
        except KeyboardInterrupt as exc:  # outside the registration loop (that one says what it kept)
            how, code = stop_words(exc)
            click.echo(f"{how}: the fields written are kept in {options['out_dir']}; run the same command again "
                       "to do the rest", err=True)
            sys.exit(code)


def _predict(dataset_json: Path, out_dir: Path, split: str | None, pairs: tuple[str, ...], checkpoint: Path | None,
             fmt: str, names: str | None, device: str, io_iters: int | None, io_iters_non_ct: int | None,
             io_similarity: str, io_field: str,
             io_reg: float | None, no_network: bool,
             stages: str | None, affine_model: str | None, search_hw: int | None, search_grid: int | None,
             search_prior: float | None, search_centre: str | None, qc_dir: Path | None, overwrite: bool,
             threads: int | None, sequential: bool, shard: str | None, data_root: Path | None, do_eval: bool,
             do_report: bool, quiet: bool) -> None:
    import os

    if do_report and not do_eval:
        raise Fail("--report needs --evaluate (the page is made from the run's metrics.json)")
    from ..registration.shards import from_environment, parse_shard

    try:
        rank = parse_shard(shard) if shard is not None else from_environment(os.environ)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    if rank is not None and do_eval:
        raise Fail("--evaluate with several ranks: score the merged folder afterwards with l2r evaluate")
    checked(pa.check_stages, stages)
    order = pa.pipeline_order(stages)
    if order is not None and order != tuple(s.strip() for s in stages.split(",") if s.strip()):
        click.echo(f"note: --stages {stages}: stages always run in the order {', '.join(pa.STAGE_NAMES)}; "
                   f"running {','.join(order)}", err=True)
    if io_iters == 0 and io_iters_non_ct:
        raise Fail("--io-iters 0 turns the refinement off for every pair, so --io-iters-non-ct "
                   f"{io_iters_non_ct} would not run; give --io-iters N > 0 or leave one out")
    if search_centre is not None:
        checked(pa.parse_axes, search_centre)
    try:
        pa.check_options_used(stages, checkpoint, io_iters, _typed_options(), no_network)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    from ..core.selection import parse_pairs_option

    wanted = checked(parse_pairs_option, pairs)
    if names is None:
        names = "short" if fmt == "npz2020" else "long"
    elif fmt == "npz2020" and names != "short":  # a long name on a half-resolution file: no evaluator reads it
        raise Fail(f"--format npz2020 --names {names}: the 2020 evaluator reads only disp_FFFF_MMMM.npz, and "
                   "the later ones fail a half-resolution field under the long name; use --names short")
    check_folder_option(out_dir, "--out")
    check_folder_option(qc_dir, "--qc")
    ds = load_dataset(dataset_json, data_root)  # before torch is imported: bad input is reported at once
    if do_eval:
        _check_labels_for_evaluate(ds, split, wanted)
    request = None
    if rank is None:
        request = pa.request_of(click.get_current_context().params, checkpoint)
        from ..registration.quick_rerun import nothing_to_do

        quick = not (overwrite or do_eval)
        kept = nothing_to_do(ds, out_dir, split, wanted, fmt, names, request, qc_dir) if quick else 0
        if kept:
            click.echo(f"0 pairs done, {kept} skipped, 0 failed: nothing to do, every field as {out_dir / 'run.json'} "
                       "records (checked without loading torch)")
            return
    from ..registration import predict as pr
    from ..registration.affine import AffineConfig
    from ..registration.search import SearchConfig
    from ..registration.stages import parse_stages

    try:
        names_run = None if stages is None else parse_stages(stages)
        io_cfg = pr.io_for_stages(names_run, checkpoint, io_iters, io_field, io_reg, io_similarity,
                                  io_iters_non_ct)
        centre = None if search_centre is None else pa.parse_axes(search_centre)
        search_cfg = SearchConfig(**{k: v for k, v in (("hw", search_hw), ("grid", search_grid),
                                                              ("prior", search_prior), ("centre_axes", centre))
                                     if v is not None})
    except ValueError as exc:
        raise Fail(f"--stages/--io-*/--search-*: {exc}") from None
    cfg = pr.PredictConfig(ds, out_dir, split, wanted, checkpoint, fmt=fmt, names=names, device=device, io=io_cfg,
                           network=not no_network, stages=names_run, search=search_cfg, qc_dir=qc_dir,
                           affine=AffineConfig() if affine_model is None else AffineConfig(model=affine_model),
                           overwrite=overwrite, threads=threads, progress=not quiet, pipeline=not sequential,
                           shard=rank, request=request, keep_freed_memory=True)
    try:
        manifest = pr.run(cfg)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: run() recorded what was done before it stopped
        how, code = stop_words(exc)
        click.echo(f"{how}: {_kept(out_dir, rank)}; run the same command again to do the rest", err=True)
        sys.exit(code)
    line, failed = pr.summary(manifest)
    if "manifest_error" in manifest:  # said on stderr when it happened
        click.echo(f"{line}; the run record was NOT written ({manifest['manifest_error']})")
    elif rank is None:
        click.echo(f"{line}; wrote {out_dir} and {out_dir / 'run.json'}")
    else:
        merged = ", ".join(manifest.get("merged", [])) or "none"
        click.echo(f"rank {rank[0]}/{rank[1]}: {line}; wrote {out_dir}; run.json merged from ranks {merged}")
    if do_eval:
        problems, scored = _evaluate_after_predict(ds, out_dir, split, fmt, names, manifest, quiet)
        failed += problems
        if do_report and scored:  # never a page of an earlier run's metrics.json
            failed += _report_after_predict(out_dir, qc_dir)
    if failed:
        sys.exit(1)


def _kept(out_dir: Path, rank: tuple[int, int] | None) -> str:
    """What an interrupted run leaves, from the record it wrote before stopping."""
    from ..registration.shards import record_name

    record = out_dir / record_name(rank)
    try:
        data = json.loads(record.read_text())
        record_pairs, selected = data["pairs"], set(data.get("selected", data["pairs"]))
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return f"the fields written are kept in {out_dir}"
    done = sum(e.get("status") in ("done", "skipped (outputs exist)") for k, e in record_pairs.items()
               if k in selected)
    return f"{done} pairs done are kept in {out_dir} and recorded in {record.name}"


def _typed_options() -> list[str]:
    """The stage options given on the command line (not left at their defaults), as ``--name``, in the order
    they are declared; an iteration count of 0 is left out (it asks for no refinement, whatever the stages)."""
    ctx = click.get_current_context()
    names = [n for n in ctx.params if n.startswith(("io_", "search_", "affine_"))]
    return ["--" + n.replace("_", "-") for n in names
            if ctx.get_parameter_source(n) is not click.core.ParameterSource.DEFAULT
            and not (n.startswith("io_iters") and ctx.params[n] == 0)]


def _check_labels_for_evaluate(ds, split: str | None, wanted: tuple[str, ...] | None) -> None:
    """``--evaluate`` scores the selected pairs against their label maps: all of them must exist before
    any registration (a test split has none; it was found after every pair was registered)."""
    from ..core.selection import select_pairs

    try:
        selected = select_pairs(ds, split, wanted)
    except ValueError:
        return  # the run reports the selection, in its own words
    from ..core.metric_specs import reads_labels

    if not reads_labels(ds.metrics):  # a label-free task: SDlogJ alone is scored
        return
    missing = ds.missing_files(selected, images=False, labels=True)
    if missing:
        maps = "label map is" if len(missing) == 1 else "label maps are"
        every = len(missing) == len({c.label for p in selected for c in (p.fixed, p.moving)})
        hint = ("none of them is there (a test split?): drop --evaluate" if every else
                "restore them, leave their pairs out with --pairs, or drop --evaluate")
        raise Fail(f"--evaluate: {len(missing)} {maps} missing for the selected pairs (first: {missing[0]}); {hint}")


def _evaluate_after_predict(ds, out_dir: Path, split: str | None, fmt: str, names: str, manifest: dict,
                            quiet: bool) -> tuple[int, bool]:
    """``predict --evaluate``: score exactly the pairs of this run with the evaluator version that reads
    the names written; a pair that failed or was not tried is scored as a zero field and marked (never
    an earlier run's file left in the folder). Returns the number of problems (one line each on stderr) and
    whether this run's metrics.json was written."""
    from ..evaluation import evaluate as ev

    selected = tuple(manifest["selected"])
    not_made = tuple(k for k in selected if manifest["pairs"].get(k, {}).get("status") in ("failed", "not tried"))
    protocol = "2020" if fmt == "npz2020" else names_protocol(names)
    ecfg = ev.EvalConfig(ds, out_dir, split, protocol, "zero", progress=not quiet, only=selected, zero=not_made)
    try:
        result = ev.run(ecfg)
    except ValueError as exc:
        click.echo(f"error: evaluation: {exc}", err=True)
        return 1, False
    written = write_eval(ev, result, out_dir / "metrics.json", out_dir / "metrics.csv",
                         why_zero="no field: its registration failed or was not tried in this run")
    zero = f" ({len(not_made)} as zero fields: not registered)" if not_made else ""
    click.echo(f"{len(result.metrics['cases'])} pairs scored{zero}, {len(result.failed)} could not be scored; "
               f"wrote {' and '.join(map(str, written)) or 'nothing'}")
    return len(result.failed) + 2 - len(written), out_dir / "metrics.json" in written


def _report_after_predict(out_dir: Path, qc_dir: Path | None) -> int:
    """``predict --evaluate --report``: report.html beside metrics.json; 1 (one stderr line) if it fails."""
    from ..evaluation import report as rp

    try:
        click.echo(f"wrote {rp.report_file(out_dir / 'metrics.json', out_dir / 'report.html', qc_dir)}")
    except ValueError as exc:
        click.echo(f"error: report: {exc}", err=True)
        return 1
    return 0


def names_protocol(names: str) -> str:
    """The evaluator version that reads fields written with ``--names``: short names are the 2024 one's."""
    return "2024" if names == "short" else "2025"

