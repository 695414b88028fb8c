"""Training: the paper's recipe as presets, validation through the evaluator, resumable checkpoints.

Python API::

    cfg = train.preset_config("symmetric", model="tiny", epochs=2, crop=(32, 32, 32))
    train.run(cfg, dataset.load("test_data/AbdomenCTCT_dataset.json"), Path("runs/a"))

A run folder holds ``config.json``, ``last.pt`` (every epoch, with optimizer and RNG state), ``best.pt``
(best validation Dice, or lowest validation loss without labels; with ``exclude_val_subjects=False``, the
final-submission mode, the last epoch: a validation score on subjects it trained on selects nothing),
``log.jsonl`` and ``log.csv`` (one row per epoch) and ``curves.png``. The loop itself is
:func:`l2r_submit.training.trainer.fit`, shared with the other networks; started by ``torchrun`` the run is
distributed data parallel (:mod:`l2r_submit.training.distributed`), and ``world_size`` is recorded in
``config.json``, the checkpoints and every log row.

Determinism: on CPU a resumed run equals an uninterrupted one bit for bit (weights, optimizer, the Python,
NumPy and torch RNG states; items derive from (seed, epoch, index)). On CUDA every RNG state (all
devices) and the float16 loss scaler are restored too and cuDNN runs deterministic with autotuning off,
but the backward pass of ``grid_sample`` accumulates with atomic adds, so CUDA runs (resumed or not) are
close, not bit-identical.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..core import folders, io, runtime, spatial
from ..core.dataset import Dataset, Pair
from ..evaluation import scoring
from ..nets import checkpoint, inputs, regnet
from . import data, distributed, losses, preflight, trainer
from .distributed import Dist
from .trainer import Share, StepFn, TrainingFailed  # noqa: F401  (the API: train.TrainingFailed)

from .train_config import TRAIN_PRESETS, TrainConfig, parse_setting, preset_config  # noqa: F401  (the API: train.X)

TorchDataset = torch.utils.data.Dataset


def _label_source(cfg: TrainConfig) -> data.LabelSource:
    if cfg.labels == "none":
        return data.no_labels
    if cfg.labels == "folder":
        return data.folder_labels(cfg.labels_dir or "")
    return data.dataset_labels


def training_cases(ds: Dataset, exclude_val_subjects: bool) -> list:
    """The training images, less (``exclude_val_subjects``) the subjects of the val pairs: a case whose id is
    a val subject's and whose image lies in the same folder as that val image (every modality of a subject
    goes; a case of another cohort merged into the dataset, in its own folder, that has the same 4-digit
    id stays)."""
    cases = list(ds.training)
    if exclude_val_subjects:
        val = {(c.image.parent, c.id) for p in ds.pairs("val") for c in (p.fixed, p.moving)}
        cases = [c for c in cases if (c.image.parent, c.id) not in val]
    return cases


@torch.no_grad()
def validate(net: regnet.RegistrationNet, ds: Dataset, device: torch.device, w: losses.LossWeights,
             dist: Dist = Dist(), progress: bool = False) -> dict:
    """Whole-volume moving->fixed registration of the val pairs, scored by the evaluator; ``progress``: a bar
    on stderr (rank 0), as whole volumes take seconds per pair.

    Distributed: rank r registers pairs r, r + world_size, ...; the per-pair results are gathered and
    aggregated in the pairs' order on every rank, so the numbers equal a single process's. A pair that
    fails stops every rank with the same error (the first failed pair's), after the gather: one rank
    raising alone left the others waiting in the gather (a gloo traceback).

    Returns:
        ``{"val_loss", "DSC", "HD95", "LogJacDetStd", "jac_nonpos_fraction"}`` means (metrics only with labels).

    Raises:
        ValueError: a val image or label map that is not the dataset's shape, an image with NaN or inf values.
        trainer.TrainingFailed: the network's field for a pair holds NaN or inf values.
    """
    pairs = list(ds.pairs("val"))
    if not pairs:  # --final-submission on a dataset without val pairs: nothing to score
        return {}
    net.eval()
    mine = []
    for index in trainer.rank_indices(len(pairs), dist, progress):
        try:
            mine.append((index, pairs[index].key, *_validate_pair(net, ds, pairs[index], device, w), None))
        except (ValueError, trainer.TrainingFailed) as exc:
            mine.append((index, pairs[index].key, 0.0, None, exc))
            break
    results = sorted((r for part in dist.gather(mine) for r in part), key=lambda r: r[0])
    failed = [r[4] for r in results if r[4] is not None]
    if failed:
        raise failed[0]
    cases = {key: case for _, key, _, case, _ in results if case is not None}
    out = {"val_loss": float(np.mean([loss for _, _, loss, _, _ in results]))}
    agg = scoring.aggregate(cases, ds.metrics)
    for name in ("DSC", "HD95", "LogJacDetStd", "jac_nonpos_fraction"):
        if name in agg:
            out[name] = agg[name]["mean"]
    net.train()
    return out


def _validate_pair(net: regnet.RegistrationNet, ds: Dataset, pair: Pair, device: torch.device,
                   w: losses.LossWeights) -> tuple[float, dict | None]:
    """One val pair: its loss and, when both label maps exist, its scores (:func:`validate`)."""
    images = []
    for case in (pair.moving, pair.fixed):
        array = io.read_volume(case.image, np.float32).array
        io.check_image(case.image, array, ds.shape)  # a NaN voxel gave a NaN field, then an IndexError traceback
        images.append(torch.from_numpy(array)[None, None].to(device))
    moving, fixed = images
    disp = regnet.register(net, moving, fixed)
    if not torch.isfinite(disp).all():
        raise trainer.TrainingFailed(f"val pair {pair.key}: the network's field holds NaN or inf values (its images "
                                     "are finite): the weights have diverged")
    n = net.cfg.in_channels
    sim = losses.mse(spatial.warp_image(inputs.preprocess(moving, n), disp), inputs.preprocess(fixed, n))
    case = None
    if pair.fixed.label.exists() and pair.moving.label.exists():
        segs = []
        for path in (pair.fixed.label, pair.moving.label):
            segs.append(io.read_labels(path))
            io.check_label_shape(path, segs[-1], ds.shape)  # scoring alone named neither the file nor the pair
        case = scoring.score_case(*segs, disp[0].cpu().numpy(), ds.metrics)
    return float(sim + w.reg * losses.gradient_l1(disp)), case


class TrainingForward(torch.nn.Module):
    """The module the trainer calls (and wraps in DDP): both directions from one encoder pass
    (``symmetric``), or moving -> fixed only (then the second output is None)."""

    def __init__(self, net: regnet.RegistrationNet, symmetric: bool) -> None:
        super().__init__()
        self.net, self.symmetric = net, symmetric

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        if self.symmetric:
            return self.net.forward_symmetric(moving, fixed)
        return self.net(moving, fixed), None


def registration_step(w: losses.LossWeights, use_amp: bool, device_type: str) -> StepFn:
    """The batch -> loss step of registration training (:data:`l2r_submit.training.trainer.StepFn`).

    Distributed, the Dice term's sums run over the global batch and the mean terms are weighted by the
    rank's share, so that DDP's gradient average is the gradient of the single-process loss.
    """

    def step(module: torch.nn.Module, batch: dict, share: Share) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(device_type=device_type, dtype=torch.float16, enabled=use_amp):
            fwd, bwd = module(batch["moving"], batch["fixed"])
        reduce = share.dist.sum_with_grad if share.dist.distributed else None
        terms = losses.registration_loss(fwd, batch["moving"].float(), batch["fixed"].float(),
                                         batch.get("moving_seg"), batch.get("fixed_seg"), w, bwd, reduce)
        objective = terms["total"]
        if share.mean_scale != 1.0:
            objective = share.mean_scale * (w.sim * terms["sim"] + w.reg * terms["reg"])
            if "dice" in terms:
                objective = objective + w.dice * terms["dice"]
        return objective, terms

    return step


def run(cfg: TrainConfig, ds: Dataset, out_dir: Path, resume: bool = False, progress: bool = True,
        max_steps: int | None = None, epoch_data: "Callable[[int], TorchDataset] | None" = None,
        max_seconds: float | None = None) -> dict:
    """Train; returns the last epoch's log row.

    ``max_steps`` stops within an epoch; ``max_seconds`` stops at the end of the first epoch that ends after
    that much wall time (so every run ends on a validated, checkpointed epoch).

    ``epoch_data(epoch)`` replaces the dataset's training pairs with another source of training items
    (the keys of :class:`l2r_submit.training.data.PairDataset`), e.g. synthetic pairs; ``ds`` still validates.

    Started by ``torchrun`` (``WORLD_SIZE`` > 1), the run is distributed data parallel
    (:mod:`l2r_submit.training.distributed`): ``cfg.batch_size`` is the global batch, the learning rate is used as
    given, rank 0 writes, and ``world_size`` is recorded in ``config.json``, the checkpoints and each log row.

    Raises:
        ValueError: ``out_dir`` cannot be written, too few training images, a config that does not match a
            resumed run, bad checkpoints, an inconsistent launch environment or a batch that does not split
            over the processes.
    """
    # a refusal (bad --init, too few images) leaves no empty folder; one training at a time in it
    with folders.writable_folder(out_dir, "--out"), trainer.claim_folder(out_dir):
        trainer.check_fresh(out_dir, resume, "registration")
        runtime.configure_threads(cfg.threads)
        dist, device = distributed.start(runtime.resolve_device(cfg.device))
        try:
            return _run(cfg, ds, out_dir, resume, progress, max_steps, epoch_data, max_seconds, dist, device)
        finally:
            distributed.stop(dist)


def _run(cfg: TrainConfig, ds: Dataset, out_dir: Path, resume: bool, progress: bool, max_steps: int | None,
         epoch_data: "Callable[[int], TorchDataset] | None", max_seconds: float | None, dist: Dist,
         device: torch.device) -> dict:
    distributed.check_batch(cfg.batch_size, dist.world_size)
    cases = training_cases(ds, cfg.exclude_val_subjects)
    if len(cases) < 2 and epoch_data is None:
        where = " outside the val pairs' subjects (--final-submission trains on all)" if cfg.exclude_val_subjects else ""
        raise ValueError(f"{ds.source}: {len(cases)} training images{where}; at least 2 are needed")
    if cfg.selects_on_val and not ds.pairs("val"):
        raise ValueError(f"{ds.source}: no val pairs (registration_val), so no epoch can be chosen for best.pt; add "
                         "val pairs, or give --final-submission (best.pt is then the last epoch)")
    if cfg.crop is not None and any(c > n for c, n in zip(cfg.crop, ds.shape)):
        raise ValueError(f"crop {','.join(map(str, cfg.crop))} is larger than the volumes "
                         f"({','.join(map(str, ds.shape))}); give a crop within them, or none for whole volumes")
    runtime.seed_everything(cfg.seed)
    net = regnet.RegistrationNet(cfg.model)
    if cfg.init and not resume:  # a resumed run's weights come from last.pt: its --init is not read again
        init_net, _ = checkpoint.load(cfg.init)
        if init_net.cfg != cfg.model:
            raise ValueError(f"{cfg.init}: model config {init_net.cfg} differs from the run's {cfg.model}")
        net.load_state_dict(init_net.state_dict())
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    images = _image_list(ds, cases)
    state = None
    last_path = out_dir / "last.pt"
    if resume:
        if not last_path.exists():
            raise ValueError(f"{last_path}: nothing to resume")
        _, state = checkpoint.load(last_path)
        if not isinstance(state.get("train_config"), dict):
            raise ValueError(f"{last_path}: no recorded training settings; it cannot be resumed")
        saved = _with_defaults(state["train_config"])
        if cfg.init != saved.get("init"):  # the file may have moved, or be named from another folder
            print(f"note: --init is not read when resuming (the weights come from {last_path}); the run "
                  f"keeps its first one, {saved.get('init')}", file=sys.stderr)
            cfg = replace(cfg, init=saved.get("init"))
        changed = trainer.resume_differences(saved, _jsonable(cfg.to_dict()))
        if changed:
            raise ValueError(f"{last_path}: the run was started with other settings ({'; '.join(changed)}); "
                             "resume with the same ones (only --epochs, --device, --threads, --workers may change)")
        recorded = state.get("training_images")
        if isinstance(recorded, list) and recorded != images:
            other = sorted(set(recorded) ^ set(images))
            raise ValueError(f"{last_path}: the run was started on other training images ({len(recorded)} then, "
                             f"{len(images)} now{'; e.g. ' + other[0] if other else ', in another order'}); resume "
                             "with the same dataset")
        net.load_state_dict(state["state_dict"])
    labels = _label_source(cfg)
    if cfg.labels == "folder" and epoch_data is None:
        data.check_label_folder(cases, cfg.labels_dir or "")
    label_of = (lambda c: c.label) if cfg.labels == "dataset" else labels  # a missing true label map is an error
    files = preflight.run_files(ds, cases if epoch_data is None else [], label_of)
    for note in preflight.check_files(files, ds, cfg.loss.n_classes, dist, progress, torch.get_num_threads(),
                                      record=out_dir / preflight.RECORD_NAME):
        if dist.is_main:
            print(note, file=sys.stderr)
    classes = preflight.trained_labels(ds, cfg.loss.n_classes)
    train_config = _jsonable(cfg.to_dict())

    def epoch_items(epoch: int) -> TorchDataset:
        if epoch_data is not None:
            return epoch_data(epoch)
        pairs = data.epoch_pairs(len(cases), epoch, cfg.seed)
        return data.PairDataset(cases, pairs, cfg.crop, cfg.seed, epoch, labels, cfg.model.in_channels, classes)

    def save(path: Path, **extra) -> None:
        checkpoint.save(path, net, train_config=train_config, world_size=dist.world_size,
                        dataset=str(ds.source), training_images=images, device_used=str(device), **extra)

    task = trainer.Task(
        model=TrainingForward(net, cfg.symmetric), optimizer=opt, epoch_items=epoch_items,
        step=registration_step(cfg.loss, device.type == "cuda", device.type),
        validate=lambda d: validate(net, ds, device, cfg.loss, d, progress),
        score=lambda row, epoch: row.get("DSC", -row["val_loss"]) if cfg.selects_on_val else float(epoch),
        save=save, config={**train_config, "dataset": str(ds.source), "training_images": len(images),
                           "device_used": str(device)})
    loop = trainer.Loop(epochs=cfg.epochs, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                        val_every=cfg.val_every, grad_clip=cfg.grad_clip, accumulate=cfg.accumulate,
                        max_steps=max_steps, max_seconds=max_seconds, progress=progress)
    return trainer.fit(task, loop, out_dir, device, dist, resume=state)


def _with_defaults(saved: dict) -> dict:
    """A saved config with the settings added since it was written filled in with their defaults."""
    return {**{k: v for k, v in _jsonable(TrainConfig().to_dict()).items() if k not in saved}, **saved}


def _image_list(ds: Dataset, cases: list) -> list[str]:
    """The training images as recorded in the checkpoints: relative to the data folder when inside it (so a
    moved data folder still resumes), else absolute."""
    return [str(c.image.relative_to(ds.root)) if c.image.is_relative_to(ds.root) else str(c.image) for c in cases]


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d))
