"""``l2r train``: options parsed here, the run done by :func:`l2r_submit.training.train.run`."""

from __future__ import annotations

from pathlib import Path

import click

from .common import Fail, TrainingFail, check_folder_option, load_dataset, training_done, training_stops


@click.command()
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
    check_folder_option(out_dir, "--out")
    ds = load_dataset(dataset_json, data_root)  # before torch is imported: bad input is reported at once
    from ..training import train as tr

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
        with training_stops(out_dir):
            row = tr.run(cfg, ds, out_dir, resume=resume, progress=not quiet)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    except tr.TrainingFailed as exc:
        raise TrainingFail(str(exc)) from None
    training_done(row, out_dir)

