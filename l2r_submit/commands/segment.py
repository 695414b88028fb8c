"""``l2r segment``: train the segmenter, write pseudo-labels, import the authors' segmenter weights.

Only click is imported here; torch and numpy are imported inside the commands (``l2r --help`` stays fast).
Exit codes: 0 done; 1 some cases failed (the others were written); 2 bad input, nothing done.
"""

from __future__ import annotations

from pathlib import Path

import click

from .common import (Fail, TrainingFail, check_folder_option, check_new_file, file_by_file_stops, load_dataset,
                     training_done, training_stops)


@click.group()
def segment() -> None:
    """The segmenter of the paper's noisy-label recipe: train it, predict pseudo-labels, import weights."""


@segment.command()
@click.argument("dataset_jsons", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Run folder.")
@click.option("--model", type=click.Choice(["paper", "tiny"]), default="paper", show_default=True,
              help="paper: the authors' 16-256 channel, 12-class segmenter (7.69 M parameters); tiny: for tests.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="[default: 400, the paper]")
@click.option("--crop", default=None, help="Random crop, e.g. 144,144,144 (the paper, default), or none.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Global batch [default: 3].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="[default: 1e-4]")
@click.option("--val-every", type=click.IntRange(min=1), default=None, help="Validate every N epochs [default: 10].")
@click.option("--no-augment", is_flag=True, help="No flips or quarter turns.")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="DataLoader workers per process [default: 2].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads [default: all].")
@click.option("--resume", is_flag=True, help="Continue the run in --out (only --epochs may change).")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
def train(dataset_jsons: tuple[Path, ...], out_dir: Path, model: str, epochs: int | None, crop: str | None,
          batch_size: int | None, lr: float | None, val_every: int | None, no_augment: bool, workers: int | None,
          seed: int, device: str, threads: int | None, resume: bool, quiet: bool) -> None:
    """Train the segmenter on every training case of DATASET_JSONs with the partial-label Dice.

    The FIRST json is the challenge's: the subjects of its val pairs validate (Dice per organ) and do
    not train. A training entry with an "annotated" list teaches only those organs.
    """
    check_folder_option(out_dir, "--out")
    datasets = [load_dataset(p, None) for p in dataset_jsons]
    from ..training import segment as seg
    from ..training.trainer import TrainingFailed

    try:
        cfg = seg.config_from_options(model, crop, epochs=epochs, batch_size=batch_size, lr=lr, val_every=val_every,
                                      augment=False if no_augment else None, num_workers=workers, seed=seed,
                                      device=device, threads=threads,
                                      datasets=tuple(str(p) for p in dataset_jsons))
        with training_stops(out_dir):
            row = seg.run(cfg, datasets, out_dir, resume=resume, progress=not quiet)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    except TrainingFailed as exc:
        raise TrainingFail(str(exc)) from None
    training_done(row, out_dir)


@segment.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("dataset_jsons", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder of the label maps (one per case, named like its image).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads [default: all].")
@click.option("--overwrite", is_flag=True, help="Make every label map again.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict(checkpoint: Path, dataset_jsons: tuple[Path, ...], out_dir: Path, device: str, threads: int | None,
            overwrite: bool, quiet: bool) -> None:
    """Write the segmenter's label map (pseudo-labels) of every training and test case of DATASET_JSONs.

    Whole volumes, one uint8 NIfTI per case in --out, named like its image; a file recorded in
    --out/pseudo_labels.json as made by this checkpoint from the same image, and unchanged, is skipped.
    """
    datasets = [load_dataset(p, None) for p in dataset_jsons]
    from ..recipe import pseudo_labels

    def kept() -> str:
        count = pseudo_labels.recorded(out_dir)
        return f"{count} label maps are kept in {out_dir} and recorded in {pseudo_labels.RECORD}"

    try:
        with file_by_file_stops(kept):
            summary = pseudo_labels.predict(checkpoint, datasets, out_dir, device=device, threads=threads,
                                            progress=not quiet, overwrite=overwrite)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    if summary.redone:
        click.echo(f"note: {summary.redone} existing label maps were made again: not recorded as made by this "
                   "checkpoint from the same image, or changed since", err=True)
    click.echo(f"pseudo-labels in {out_dir}: {len(summary.written)} written, {len(summary.skipped)} already there, "
               f"{len(summary.failed)} failed")
    if summary.exit_code:
        raise SystemExit(summary.exit_code)


@segment.command("import")
@click.argument("original", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True, help="Our checkpoint file.")
def import_(original: Path, out_path: Path) -> None:
    """Convert the authors' segmenter checkpoint (their SegNet .pth.tar) into an l2r_submit one."""
    from ..nets import seg_checkpoint

    check_new_file(out_path, "--out")
    try:
        net = seg_checkpoint.import_original(original)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    seg_checkpoint.save(out_path, net, imported_from=str(original))
    cfg = net.cfg
    click.echo(f"wrote {out_path}: {cfg.n_classes} classes, channels {cfg.channels}, orientation {cfg.orientation}")
