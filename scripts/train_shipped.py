"""Train the weights shipped in l2r_submit/weights/ (from the anatomies of test_data/), and write their manifest.

Data: the two anatomies of test_data/ (0004, the real CT of shared/data/ct_patient_a resampled to 2 mm,
and 0005, CT-like intensities painted on the AMOS label map), each also re-painted from its labels
twice; every training item deforms one anatomy twice with independent smooth random fields (up to
10 voxels) and augments intensities. Validation: the val pairs of test_data/ between these anatomies
(0001-0005; these weights are in-distribution there), not the later pairs with 0006.

    python scripts/train_shipped.py [--epochs 90] [--lr 2e-3] [--items 32] [--crop 64]
                                    [--out runs/shipped] [--weights l2r_submit/weights] [--resume] [--init FILE]
                                    [--whole --device cuda] [--max-minutes M] [--val-every N]

Items are 64^3 crops made by CPU workers (l2r_submit.training.synthetic.SyntheticPairs), or with ``--whole``
whole volumes made on the training device (l2r_submit.training.volume_pairs.VolumePairs): meant for a GPU (on 2
CPU threads one full-resolution step of batch 2 takes ~90 s; on an H200 ~0.4 s).

The training items come from the anatomies of the validation pairs, so no validation score selects
the shipped weights: they are the last epoch's (the final-submission mode of ``l2r_submit.training.train``).

This script alone writes l2r_submit/weights/manifest.json, together with the weights: the exact command, the epochs
asked for and trained, what stopped the run (``--epochs`` or ``--max-minutes``), device, torch version,
wall time and code commit. Each entry is also stored in the weights file (``provenance``), so a run
started with ``--init`` from shipped weights lists the runs that made them first.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

from l2r_submit import __version__
from l2r_submit.nets import checkpoint
from l2r_submit.core import dataset, io, runtime
from l2r_submit.training import train
from l2r_submit.training.synthetic import SyntheticPairs, paint_from_labels
from l2r_submit.training.volume_pairs import VolumePairs

ROOT = Path(__file__).resolve().parents[1]


@click.command()
@click.option("--epochs", default=90, show_default=True)
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--items", default=32, show_default=True, help="Synthetic pairs per epoch.")
@click.option("--crop", default=64, show_default=True, help="Cubic crop size: small crops buy more steps on CPU.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/shipped"), show_default=True)
@click.option("--weights", type=click.Path(path_type=Path), default=ROOT / "l2r_submit" / "weights", show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--norm", type=click.Choice(["instance", "none"]), default="instance", show_default=True,
              help="Normalisation of the network (see l2r_submit.nets.config.ModelConfig).")
@click.option("--whole", is_flag=True, help="Whole-volume items made on the device, instead of CPU crops.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--max-minutes", type=float, default=None,
              help="Stop after the first epoch that ends past this much training time.")
@click.option("--val-every", default=10, show_default=True, help="Validate (and consider for best.pt) every N epochs.")
@click.option("--init", "init", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Start from these weights (a fresh optimizer), e.g. to continue a run whose last.pt is gone.")
@click.option("--resume", is_flag=True)
def main(epochs: int, lr: float, items: int, crop: int, out: Path, weights: Path, threads: int, norm: str,
         whole: bool, device: str, max_minutes: float | None, val_every: int, init: str | None, resume: bool) -> None:
    try:
        runtime.resolve_device(device)  # refuse --device cuda without a GPU before any work
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    command = "python scripts/train_shipped.py " + shlex.join(sys.argv[1:])
    commit = _code_commit()
    lineage = _init_provenance(Path(init)) if init else []
    t_start = time.perf_counter()
    ds = dataset.load(ROOT / "test_data" / "AbdomenCTCT_dataset.json")
    # validate on the pairs of the two training anatomies (the 4 val pairs the shipped weights were chosen on);
    # the pairs with 0006, a third patient added to test_data later, would change which checkpoint is shipped
    ds.splits["val"] = [p for p in ds.pairs("val")
                        if {p.fixed.id, p.moving.id} <= {"0001", "0002", "0003", "0004", "0005"}]
    anatomies, painted = [], []
    rng = np.random.default_rng(99)
    for case_id in ("0004", "0005"):
        case = next(c for c in ds.training if c.id == case_id)
        labels = io.read_labels(case.label)
        anatomies.append((io.read_volume(case.image, np.float32).array, labels))
        painted.append([paint_from_labels(labels, rng) for _ in range(2)])
    cfg = train.preset_config("symmetric", "cpu-fast", epochs=epochs, crop=None if whole else (crop, crop, crop),
                              batch_size=2, lr=lr, val_every=val_every, num_workers=0 if whole else 1, device=device,
                              threads=threads, seed=0, init=init, exclude_val_subjects=False, **{"model.norm": norm})

    def epoch_data(epoch: int) -> SyntheticPairs | VolumePairs:
        if whole:
            return VolumePairs(anatomies, items, cfg.seed, epoch, max_disp=10.0, painted=painted, device=device)
        return SyntheticPairs(anatomies, items, cfg.crop, cfg.seed, epoch, max_disp=10.0, painted=painted,
                              organ_prob=0.5)

    last = train.run(cfg, ds, out, resume=resume, epoch_data=epoch_data,
                     max_seconds=None if max_minutes is None else 60 * max_minutes)
    trained = last["epoch"]  # fewer than --epochs when --max-minutes stopped it
    net, ckpt = checkpoint.load(out / "last.pt")
    record = {
        "command": command,
        "epochs_requested": epochs,
        "epochs_trained": trained,
        "stopped_by": "--epochs" if trained >= epochs else f"--max-minutes {max_minutes:g} (after epoch {trained})",
        "resumed": resume,
        "init": {"file": init, "sha256": _sha256(Path(init))} if init else None,
        "device": _device_text(device, threads),
        "torch": torch.__version__,
        "wall_minutes": round((time.perf_counter() - t_start) / 60, 1),
        "code_commit": commit,
        "package_version": __version__,
    }
    provenance = lineage + [record]
    weights.mkdir(parents=True, exist_ok=True)
    target = weights / "l2r_cpu_fast.pt"
    checkpoint.save(target, net, epoch=ckpt["epoch"], metrics=ckpt["metrics"],  # weights only, no optimizer
                    provenance=json.dumps(provenance))
    digest = _sha256(target)
    data_files = [ds.source] + [p for c in ds.training if c.id in ("0004", "0005") for p in (c.image, c.label)]
    manifest = {
        "written_by": "scripts/train_shipped.py (never edit by hand: rerun the script)",
        "default": target.name,
        "files": {target.name: {"sha256": digest, "bytes": target.stat().st_size}},
        "model_preset": "cpu-fast",
        "model_config": net.cfg.to_dict(),
        "trained_with": provenance,
        "shipped": "the last epoch (training items come from the validation anatomies: no score selects it)",
        "shipped_epoch": ckpt["epoch"] + 1,
        "package_version": __version__,
        "data": ("whole-volume synthetic pairs (l2r_submit.training.volume_pairs.VolumePairs)" if whole else
                 f"{crop}^3 synthetic crops (l2r_submit.training.synthetic.SyntheticPairs)")
                + " of test_data subjects 0004 and 0005, each also re-painted from its labels twice, deformed by "
                  "smooth random fields up to 10 voxels, with intensity augmentation",
        "data_sha256": {str(Path(f).resolve().relative_to(ROOT)): _sha256(Path(f)) for f in data_files},
        "validation": {k: v for k, v in ckpt["metrics"].items() if k in ("val_loss", "DSC", "HD95", "LogJacDetStd")},
    }
    text = json.dumps(manifest, indent=2) + "\n"
    io.atomic_write(weights / "manifest.json", lambda tmp: Path(tmp).write_text(text))
    click.echo(f"wrote {target} (sha256 {digest[:12]}...) and {weights / 'manifest.json'}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _code_commit() -> str | None:
    """The repository's commit, with ``+uncommitted`` when the package or this script differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "l2r_submit", "scripts"], cwd=ROOT,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def _init_provenance(init: Path) -> list:
    """The runs that made the ``--init`` weights, as stored in them (none for files older than this)."""
    _, ckpt = checkpoint.load(init)
    stored = ckpt.get("provenance")
    return json.loads(stored) if isinstance(stored, str) else []


def _device_text(device: str, threads: int) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), float16 autocast"
    return f"CPU ({platform.processor() or platform.machine()}), {threads} threads"


if __name__ == "__main__":
    main()
