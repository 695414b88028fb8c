"""Segmentation training (the segmenter of the paper's noisy-label recipe) on the shared trainer.

Python API::

    cfg = SegTrainConfig(model=SEG_PRESETS["tiny"], epochs=2, crop=(32, 32, 32))
    segment.run(cfg, [dataset.load("test_data/AbdomenCTCT_dataset.json")], Path("runs/seg"))

The FIRST dataset is the challenge's: the subjects of its val pairs are the validation scans (left out
of training, as ``l2r train`` does); every other training case of every dataset trains. A case with an
``annotated`` list (an external cohort) teaches only those organs (:mod:`l2r_submit.training.seg_losses`).

Each epoch every training case is seen once, in a shuffled order; an item is its image in the network's
input window (:func:`l2r_submit.nets.inputs.preprocess`, min-max over the WHOLE image, exactly as
prediction does), a random crop (the paper: 144^3) and the authors' flips and quarter turns
(:func:`l2r_submit.training.augment.random_flip_rot`), all drawn from (seed, epoch, index). Labels above
the segmenter's classes (the adrenal glands 12 and 13 for the paper's 12 classes) become background, as
the authors'. Validation: whole-volume segmentation of each validation scan, Dice per organ
(:func:`l2r_submit.evaluation.metrics.dice`), logged as ``val_dice_<organ>`` and their mean ``val_dice``,
which selects ``best.pt``. The loop (checkpoints, logs, resume, AMP, torchrun) is
:func:`l2r_submit.training.trainer.fit`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from ..core import folders, io, runtime
from ..core.dataset import Case, Dataset
from ..evaluation.metrics import dice
from ..nets import seg_checkpoint, segnet
from ..nets.config import SEG_PRESETS, SegConfig
from ..nets.inputs import preprocess
from . import distributed, trainer
from .augment import flip_rot, random_flip_rot
from .checks import check_crop, check_number, parse_crop
from .data import random_crop_box
from .distributed import Dist
from .losses import one_hot
from .seg_losses import partial_dice_loss
from .train import training_cases
from .trainer import Share


@dataclass(frozen=True)
class SegTrainConfig:
    """Everything a segmentation run depends on; saved to config.json and into every checkpoint.

    Attributes:
        model: the segmenter's config (the paper: ``SEG_PRESETS["paper"]``).
        epochs, lr, batch_size: the paper: 400, 1e-4, 3.
        crop: random crop size (the paper: 144^3); None = whole volumes.
        augment: the authors' flips and quarter turns (the paper: on).
        val_every: validate every N epochs (and after the last).
        num_workers: DataLoader workers.
        seed: the run's seed.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads (None: all).
        datasets: the dataset JSONs (informative; the first is the challenge's).
    """

    model: SegConfig = field(default_factory=lambda: SEG_PRESETS["paper"])
    epochs: int = 400
    lr: float = 1e-4
    batch_size: int = 3
    crop: tuple[int, int, int] | None = (144, 144, 144)
    augment: bool = True
    val_every: int = 10
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    datasets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_crop(self.crop, "144,144,144")
        check_number("lr", self.lr, "a finite learning rate above 0")
        for name in ("epochs", "batch_size", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: {getattr(self, name)} received, expected 1 or more")
        if self.model.orientation != "l2r":
            raise ValueError("the segmenter is trained on our axes (model orientation l2r); an imported "
                             "network (estienne2020) predicts, it does not train here")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def class_names(ds: Dataset, n_classes: int) -> list[str]:
    """Log names of classes 1..n_classes-1 from the dataset's ``labels`` (``right_kidney``), else ``label_k``."""
    table: dict = {}
    source = ds.source
    if source is not None and source.is_file():
        raw = json.loads(source.read_text(encoding="utf-8")).get("labels") or {}
        table = raw.get("0", raw) if isinstance(raw.get("0"), dict) else raw
    names = []
    for k in range(1, n_classes):
        name = re.sub(r"[^a-z0-9]+", "_", str(table.get(str(k), f"label {k}")).lower()).strip("_")
        names.append(name or f"label_{k}")
    return names


def split_cases(datasets: Sequence[Dataset]) -> tuple[list[Case], list[Case]]:
    """(training cases, validation cases): the first dataset's val-pair subjects validate (in their order
    of appearance), every other training case of every dataset trains.

    Raises:
        ValueError: no datasets, no training case, a training case whose image or label map is missing.
    """
    if not datasets:
        raise ValueError("segment train: give at least one dataset JSON (the challenge's first)")
    first = datasets[0]
    val: dict[str, Case] = {}
    for pair in first.pairs("val") if first.splits.get("val") else []:
        for case in (pair.fixed, pair.moving):
            val.setdefault(case.id, case)
    by_id = {c.id: c for c in first.training}
    val_cases = [by_id.get(i, c) for i, c in val.items()]
    train = training_cases(first, exclude_val_subjects=True) + [c for ds in datasets[1:] for c in ds.training]
    if not train:
        raise ValueError(f"{first.source}: no training case outside the val pairs' subjects")
    for case in train:
        if not case.image.exists():
            raise ValueError(f"{case.image}: image not found (training case)")
        if not case.label.exists():
            raise ValueError(f"{case.label}: label map not found (training case {case.image.name})")
    return train, [c for c in val_cases if c.label.exists()]


def annotated_vector(case: Case, n_classes: int) -> torch.Tensor:
    """``(n_classes,)`` float: 1 for the classes the case annotates (all but the background when
    ``case.annotated`` is None; ids beyond the segmenter's classes dropped), 0 elsewhere."""
    out = torch.zeros(n_classes)
    ids = range(1, n_classes) if case.annotated is None else [k for k in case.annotated if 0 < k < n_classes]
    out[list(ids)] = 1.0
    return out


class SegItems(TorchDataset):
    """One epoch of segmentation items, each training case once in a shuffled order.

    Items: ``{"image": (C, *crop) float32, "seg": (1, *crop) int64 classes, "annotated": (L,) float32}``.
    """

    def __init__(self, cases: list[Case], cfg: SegTrainConfig, epoch: int) -> None:
        self.cases, self.cfg, self.epoch = cases, cfg, epoch
        self.order = np.random.default_rng([cfg.seed, epoch, 0]).permutation(len(cases))

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        case = self.cases[int(self.order[index])]
        n_classes = self.cfg.model.n_classes
        vol = io.read_volume(case.image, np.float32).array
        seg = io.read_labels(case.label)
        if seg.shape != vol.shape:
            raise ValueError(f"{case.label}: shape {seg.shape} differs from its image's {vol.shape}")
        rng = np.random.default_rng([self.cfg.seed, self.epoch, index + 1])
        box = random_crop_box(vol.shape, self.cfg.crop, rng)
        image = preprocess(torch.from_numpy(vol)[None, None], self.cfg.model.in_channels)[0][(slice(None), *box)]
        seg = seg[box]
        seg = torch.from_numpy(np.where((seg > 0) & (seg < n_classes), seg, 0).astype(np.int64))[None]
        if self.cfg.augment:
            params = random_flip_rot(rng, image.shape[1:])
            image, seg = flip_rot(image, params), flip_rot(seg, params)
        return {"image": image.contiguous(), "seg": seg.contiguous(), "annotated": annotated_vector(case, n_classes)}


def seg_step(n_classes: int, use_amp: bool, device_type: str):
    """The batch -> loss step (:data:`l2r_submit.training.trainer.StepFn`).

    Distributed, each organ's count of annotated images is summed over the ranks, so each rank's loss is
    its part of the global batch's; times the world size, DDP's gradient average gives the gradient of
    the single-process loss.
    """

    def step(module: torch.nn.Module, batch: dict, share: Share) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(device_type=device_type, dtype=torch.float16, enabled=use_amp):
            logits = module(batch["image"])
        probs = segnet.probabilities(logits)
        reduce = share.dist.sum_with_grad if share.dist.distributed else None
        loss = partial_dice_loss(probs, one_hot(batch["seg"], n_classes), batch["annotated"], reduce_counts=reduce)
        return loss * share.dist.world_size, {"dice_loss": loss.detach() / share.weight}

    return step


@torch.no_grad()
def validate(net: segnet.SegmentationNet, cases: list[Case], names: list[str], device: torch.device,
             dist: Dist = Dist(), progress: bool = False) -> dict:
    """Whole-volume segmentation of the validation scans, Dice per organ (NaN where a scan and its
    prediction both lack the organ; such scans do not count for that organ).

    Distributed: scan i on rank i mod world size, gathered, so the numbers equal a single process's.

    Returns:
        ``{"val_dice_<organ>": mean over scans, ..., "val_dice": mean over organs}`` (empty without scans).
    """
    if not cases:
        return {}
    net.eval()
    mine = []
    for index in trainer.rank_indices(len(cases), dist, progress):  # a bar on rank 0 with progress
        case = cases[index]
        ct = torch.from_numpy(io.read_volume(case.image, np.float32).array)[None, None].to(device)
        pred = segnet.segment(net, ct)[0].cpu().numpy()
        truth = io.read_labels(case.label)
        mine.append((index, [dice(truth == k, pred == k) for k in range(1, len(names) + 1)]))
    net.train()
    rows = np.array([scores for _, scores in sorted((r for part in dist.gather(mine) for r in part))], dtype=float)
    out = {}
    with np.errstate(all="ignore"):
        per_organ = [float(np.nanmean(col)) if np.isfinite(col).any() else math.nan for col in rows.T]
    for name, value in zip(names, per_organ):
        out[f"val_dice_{name}"] = value
    finite = [v for v in per_organ if math.isfinite(v)]
    out["val_dice"] = float(np.mean(finite)) if finite else math.nan
    return out


def run(cfg: SegTrainConfig, datasets: Sequence[Dataset], out_dir: Path, resume: bool = False,
        progress: bool = True, max_steps: int | None = None) -> dict:
    """Train the segmenter; returns the last epoch's log row. Started by ``torchrun`` it runs distributed
    data parallel (``cfg.batch_size`` is the global batch; rank 0 writes).

    Raises:
        ValueError: ``out_dir`` cannot be written, no training case, a missing label map, a crop larger than
            the volumes, a resumed run with other settings, an inconsistent launch environment; one line.
    """
    # a refusal leaves no empty folder; one training at a time in it
    with folders.writable_folder(out_dir, "--out"), trainer.claim_folder(out_dir):
        trainer.check_fresh(out_dir, resume, "segmenter")
        runtime.configure_threads(cfg.threads)
        dist, device = distributed.start(runtime.resolve_device(cfg.device))
        try:
            return _run(cfg, datasets, out_dir, resume, progress, max_steps, dist, device)
        finally:
            distributed.stop(dist)


def _run(cfg: SegTrainConfig, datasets: Sequence[Dataset], out_dir: Path, resume: bool, progress: bool,
         max_steps: int | None, dist: Dist, device: torch.device) -> dict:
    distributed.check_batch(cfg.batch_size, dist.world_size)
    train, val = split_cases(datasets)
    if not any(annotated_vector(c, cfg.model.n_classes).any() for c in train):  # the loss would be 0 throughout
        raise ValueError(f"{datasets[-1].source}: no training case annotates an organ the segmenter predicts (labels "
                         f"1..{cfg.model.n_classes - 1}: every 'annotated' list is empty or outside them); nothing "
                         "would be learned")
    shape = datasets[0].shape
    if cfg.crop is not None and any(c > n for c, n in zip(cfg.crop, shape)):
        raise ValueError(f"crop {','.join(map(str, cfg.crop))} is larger than the volumes "
                         f"({','.join(map(str, shape))}); give a crop within them, or none for whole volumes")
    runtime.seed_everything(cfg.seed)
    net = segnet.SegmentationNet(cfg.model).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    train_config = cfg.to_dict()
    state = None
    if resume:
        last = out_dir / "last.pt"
        if not last.exists():
            raise ValueError(f"{last}: nothing to resume")
        loaded, state = seg_checkpoint.load(last)
        saved = state.get("train_config")
        changed = trainer.resume_differences(saved if isinstance(saved, dict) else {}, json.loads(json.dumps(
            train_config)))
        if changed:
            raise ValueError(f"{last}: the run was started with other settings ({'; '.join(changed)}); resume "
                             "with the same ones (only --epochs, --device, --threads, --workers may change)")
        net.load_state_dict(loaded.state_dict())
    names = class_names(datasets[0], cfg.model.n_classes)

    def save(path: Path, **extra) -> None:
        seg_checkpoint.save(path, net, train_config=train_config, world_size=dist.world_size, **extra)

    def score(row: dict, epoch: int) -> float:
        value = row.get("val_dice", math.nan)
        return float(epoch) if not val else (value if math.isfinite(value) else -math.inf)

    task = trainer.Task(
        model=net, optimizer=opt, epoch_items=lambda epoch: SegItems(train, cfg, epoch),
        step=seg_step(cfg.model.n_classes, device.type == "cuda", device.type),
        validate=lambda d: validate(net, val, names, device, d, progress), score=score, save=save,
        config={**train_config, "train_cases": len(train), "val_cases": [c.image.name for c in val]})
    loop = trainer.Loop(epochs=cfg.epochs, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                        val_every=cfg.val_every, max_steps=max_steps, progress=progress)
    return trainer.fit(task, loop, out_dir, device, dist, resume=state)


def config_from_options(model: str, crop: str | None = None, **overrides) -> SegTrainConfig:
    """A config from a model preset name, a crop text (``144,144,144``, ``none`` for whole volumes, None
    for the default) and field overrides (None values are left at the default).

    Raises:
        ValueError: unknown preset, a crop that does not read as three sizes, a bad value.
    """
    if model not in SEG_PRESETS:
        raise ValueError(f"segmenter preset '{model}' unknown; presets: {', '.join(SEG_PRESETS)}")
    fields_ = {k: v for k, v in overrides.items() if v is not None}
    if crop is not None:
        fields_["crop"] = parse_crop(crop, "144,144,144")
    return replace(SegTrainConfig(model=SEG_PRESETS[model]), **fields_)
