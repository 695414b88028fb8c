"""Training: the paper's recipe as presets, validation through the evaluator, resumable checkpoints.

Python API::

    cfg = train.preset_config("symmetric", model="tiny", epochs=2, crop=(32, 32, 32))
    train.run(cfg, dataset.load("test_data/AbdomenCTCT_dataset.json"), Path("runs/a"))

A run folder holds ``config.json``, ``last.pt`` (every epoch, with optimizer and RNG state), ``best.pt``
(best validation Dice, or lowest validation loss without labels; with ``exclude_val_subjects=False``, the
final-submission mode, the last epoch: a validation score on subjects it trained on selects nothing),
``log.jsonl`` and ``log.csv`` (one row per epoch) and ``curves.png``.

Determinism: on CPU a resumed run equals an uninterrupted one bit for bit (weights, optimizer, the Python,
NumPy and torch RNG states; items derive from (seed, epoch, index)). On CUDA every RNG state (all
devices) and the float16 loss scaler are restored too and cuDNN runs deterministic with autotuning off,
but the backward pass of ``grid_sample`` accumulates with atomic adds, so CUDA runs (resumed or not) are
close, not bit-identical.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import checkpoint, data, io, losses, model, runtime, scoring, spatial
from .dataset import Dataset
from .train_logs import plot_curves, write_logs

TorchDataset = torch.utils.data.Dataset

TRAIN_PRESETS = {
    "baseline": dict(symmetric=False),
    "symmetric": dict(symmetric=True),
    "pretrain-unsupervised": dict(symmetric=True, labels="none"),
    "pretrain-noisy": dict(symmetric=True, labels="folder"),
    "finetune": dict(symmetric=True, needs_init=True),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; saved to config.json and into every checkpoint.

    Attributes:
        preset: training preset name (informative).
        model: network config.
        loss: loss weights.
        symmetric: train both directions from one encoder pass.
        labels: ``dataset`` (true labels), ``folder`` (``labels_dir``, e.g. pseudo-labels) or ``none``.
        labels_dir: folder of label maps named like the images, for ``labels="folder"``.
        init: checkpoint to start from (fine-tuning).
        epochs, lr, batch_size: the paper: 300, 1e-4, 2.
        crop: random crop size (the paper: 128^3); None = whole volumes.
        val_every: validate every N epochs (and after the last).
        num_workers: DataLoader workers.
        seed: the run's seed.
        exclude_val_subjects: leave the subjects of the validation pairs out of training (the paper's
            protocol, the default). False is the final-submission mode: train on all, and ``best.pt`` is
            the last epoch (no validation score on trained subjects selects it).
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads (None: all).
    """

    preset: str = "symmetric"
    model: model.ModelConfig = field(default_factory=lambda: model.PRESETS["paper"])
    loss: losses.LossWeights = field(default_factory=losses.LossWeights)
    symmetric: bool = True
    labels: str = "dataset"
    labels_dir: str | None = None
    init: str | None = None
    epochs: int = 300
    lr: float = 1e-4
    batch_size: int = 2
    crop: tuple[int, int, int] | None = (128, 128, 128)
    val_every: int = 20
    num_workers: int = 2
    seed: int = 0
    exclude_val_subjects: bool = True
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.crop is not None:
            crop = tuple(self.crop)
            if len(crop) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in crop):
                raise ValueError(f"crop: {','.join(map(str, crop))} received, expected three positive sizes "
                                 "like 128,128,128 (or none for whole volumes)")

    @property
    def selects_on_val(self) -> bool:
        """Whether ``best.pt`` is chosen by the validation score (not in the final-submission mode)."""
        return self.exclude_val_subjects

    def to_dict(self) -> dict:
        return asdict(self)


def preset_config(name: str, model_preset: str = "paper", **overrides) -> TrainConfig:
    """A config from a training preset and a model preset, with overrides of any field.

    Overrides use ``model.X`` / ``loss.X`` for the nested configs, plain names for the rest.

    Raises:
        ValueError: unknown preset or field, or a fine-tuning preset without ``init``.
    """
    if name not in TRAIN_PRESETS:
        raise ValueError(f"preset '{name}' unknown; presets: {', '.join(TRAIN_PRESETS)}")
    if model_preset not in model.PRESETS:
        raise ValueError(f"model preset '{model_preset}' unknown; presets: {', '.join(model.PRESETS)}")
    spec = dict(TRAIN_PRESETS[name])
    needs_init = spec.pop("needs_init", False)
    cfg = TrainConfig(preset=name, model=model.PRESETS[model_preset], **spec)
    top = {f.name for f in fields(TrainConfig)}
    nested: dict[str, dict] = {"model": {}, "loss": {}}
    plain = {}
    for key, value in overrides.items():
        section, _, sub = key.partition(".")
        if sub and section in nested:
            nested[section][sub] = value
        elif key in top:
            plain[key] = value
        else:
            raise ValueError(f"unknown training setting '{key}'")
    try:
        cfg = replace(cfg, model=replace(cfg.model, **nested["model"]), loss=replace(cfg.loss, **nested["loss"]), **plain)
    except TypeError as exc:
        raise ValueError(f"unknown setting: {exc}") from None
    if cfg.labels == "none":
        cfg = replace(cfg, loss=replace(cfg.loss, dice=0.0))
    if needs_init and not cfg.init:
        raise ValueError(f"preset '{name}' fine-tunes a checkpoint: give --init CHECKPOINT")
    if cfg.labels == "folder" and not cfg.labels_dir:
        raise ValueError(f"preset '{name}' trains on labels from a folder: give --labels-dir DIR")
    return cfg


def parse_setting(cfg: TrainConfig, key: str, text: str) -> object:
    """Parse ``--set key=text`` against the type of the current value of ``key``.

    Booleans accept true/false/1/0 (never a truthy string); tuples are comma lists; ``none`` clears
    optional fields.

    Raises:
        ValueError: unknown key or a value that does not parse as the field's type.
    """
    section, _, sub = key.partition(".")
    if sub and section not in ("model", "loss"):
        raise ValueError(f"unknown training setting '{key}' (dotted keys start with model. or loss.)")
    obj = getattr(cfg, section) if sub else cfg
    name = sub or key
    if not hasattr(obj, name) or name.startswith("_") or callable(getattr(obj, name)):
        known = sorted(f.name for f in fields(obj))
        raise ValueError(f"unknown training setting '{key}'; known: {', '.join(known)}")
    current = getattr(obj, name)
    low = text.strip().lower()
    try:
        if low == "none" and name in ("crop", "labels_dir", "init", "threads"):
            return None
        if isinstance(current, bool):
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ValueError
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple) or name == "crop":
            kind = type(current[0]) if current else int
            return tuple(kind(v) for v in text.split(","))
        if name == "threads":
            return int(text)
        return text
    except ValueError:
        raise ValueError(f"setting '{key}': cannot read '{text}' as {type(current).__name__}") from None


def _label_source(cfg: TrainConfig) -> data.LabelSource:
    if cfg.labels == "none":
        return data.no_labels
    if cfg.labels == "folder":
        return data.folder_labels(cfg.labels_dir or "")
    return data.dataset_labels


def training_cases(ds: Dataset, exclude_val_subjects: bool) -> list:
    cases = list(ds.training)
    if exclude_val_subjects:
        val = {c.id for p in ds.pairs("val") for c in (p.fixed, p.moving)}
        cases = [c for c in cases if c.id not in val]
    return cases


@torch.no_grad()
def validate(net: model.RegistrationNet, ds: Dataset, device: torch.device, w: losses.LossWeights) -> dict:
    """Whole-volume moving->fixed registration of the val pairs, scored by the evaluator.

    Returns:
        ``{"val_loss", "DSC", "HD95", "LogJacDetStd", "jac_nonpos_fraction"}`` means (metrics only with labels).
    """
    net.eval()
    cases, loss_values = {}, []
    for pair in ds.pairs("val"):
        moving = torch.from_numpy(io.read_volume(pair.moving.image, np.float32).array)[None, None].to(device)
        fixed = torch.from_numpy(io.read_volume(pair.fixed.image, np.float32).array)[None, None].to(device)
        disp = model.register(net, moving, fixed)
        n = net.cfg.in_channels
        sim = losses.mse(spatial.warp_image(model.preprocess(moving, n), disp), model.preprocess(fixed, n))
        loss_values.append(float(sim + w.reg * losses.gradient_l1(disp)))
        if pair.fixed.label.exists() and pair.moving.label.exists():
            cases[pair.key] = scoring.score_case(io.read_labels(pair.fixed.label), io.read_labels(pair.moving.label),
                                                 disp[0].cpu().numpy(), ds.metrics)
    out = {"val_loss": float(np.mean(loss_values))}
    agg = scoring.aggregate(cases, ds.metrics)
    for name in ("DSC", "HD95", "LogJacDetStd", "jac_nonpos_fraction"):
        if name in agg:
            out[name] = agg[name]["mean"]
    net.train()
    return out


def run(cfg: TrainConfig, ds: Dataset, out_dir: Path, resume: bool = False, progress: bool = True,
        max_steps: int | None = None, epoch_data: "Callable[[int], TorchDataset] | None" = None,
        max_seconds: float | None = None) -> dict:
    """Train; returns the last epoch's log row.

    ``max_steps`` stops within an epoch; ``max_seconds`` stops at the end of the first epoch that ends after
    that much wall time (so every run ends on a validated, checkpointed epoch).

    ``epoch_data(epoch)`` replaces the dataset's training pairs with another source of training items
    (the keys of :class:`l2r_submit.data.PairDataset`), e.g. synthetic pairs; ``ds`` still validates.

    Raises:
        ValueError: too few training images, a config that does not match a resumed run, bad checkpoints.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    runtime.configure_threads(cfg.threads)
    device = runtime.resolve_device(cfg.device)
    cases = training_cases(ds, cfg.exclude_val_subjects)
    if len(cases) < 2 and epoch_data is None:
        where = " outside the val pairs' subjects (--final-submission trains on all)" if cfg.exclude_val_subjects else ""
        raise ValueError(f"{ds.source}: {len(cases)} training images{where}; at least 2 are needed")
    if cfg.crop is not None and any(c > n for c, n in zip(cfg.crop, ds.shape)):
        raise ValueError(f"crop {','.join(map(str, cfg.crop))} is larger than the volumes "
                         f"({','.join(map(str, ds.shape))}); give a crop within them, or none for whole volumes")
    runtime.seed_everything(cfg.seed)
    net = model.RegistrationNet(cfg.model)
    if cfg.init:
        init_net, _ = checkpoint.load(cfg.init)
        if init_net.cfg != cfg.model:
            raise ValueError(f"{cfg.init}: model config {init_net.cfg} differs from the run's {cfg.model}")
        net.load_state_dict(init_net.state_dict())
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    use_amp = device.type == "cuda"
    if use_amp:
        runtime.deterministic_cudnn()
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, best, history = 0, -math.inf, []
    last_path = out_dir / "last.pt"
    if resume:
        if not last_path.exists():
            raise ValueError(f"{last_path}: nothing to resume")
        _, ckpt = checkpoint.load(last_path)
        if not isinstance(ckpt.get("train_config"), dict):
            raise ValueError(f"{last_path}: no recorded training settings; it cannot be resumed")
        changed = _differences(_without_epochs(ckpt["train_config"]) or {},
                               _without_epochs(_jsonable(cfg.to_dict())) or {})
        if changed:
            raise ValueError(f"{last_path}: the run was started with other settings ({'; '.join(changed)}); "
                             "resume with the same ones (only --epochs may change)")
        net.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and use_amp:
            scaler.load_state_dict(ckpt["scaler"])
        runtime.set_rng_state(ckpt["rng"])
        start_epoch, best, history = ckpt["epoch"] + 1, ckpt["best"], json.loads(ckpt["history"])
        if start_epoch > cfg.epochs:
            raise ValueError(f"{last_path}: the run already trained {start_epoch} epochs, more than --epochs "
                             f"{cfg.epochs}; a run can be extended or finished, not shortened after the fact")
    (out_dir / "config.json").write_text(json.dumps(_jsonable(cfg.to_dict()), indent=2) + "\n")
    labels = _label_source(cfg)
    row: dict = {}
    steps = 0
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        if epoch_data is None:
            pairs = data.epoch_pairs(len(cases), epoch, cfg.seed)
            items = data.PairDataset(cases, pairs, cfg.crop, cfg.seed, epoch, labels, cfg.model.in_channels)
        else:
            items = epoch_data(epoch)
        loader = torch.utils.data.DataLoader(items,
            batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers, drop_last=False)
        sums: dict[str, float] = {}
        n_batches = 0
        from tqdm import tqdm

        for batch in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr, disable=not progress,
                          leave=False):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                if cfg.symmetric:
                    fwd, bwd = net.forward_symmetric(batch["moving"], batch["fixed"])
                else:
                    fwd, bwd = net(batch["moving"], batch["fixed"]), None
            terms = losses.registration_loss(fwd, batch["moving"].float(), batch["fixed"].float(),
                                             batch.get("moving_seg"), batch.get("fixed_seg"), cfg.loss, bwd)
            opt.zero_grad(set_to_none=True)
            scaler.scale(terms["total"]).backward()
            scaler.step(opt)
            scaler.update()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_batches += 1
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        row = {"epoch": epoch + 1, **{f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()}}
        out_of_time = max_seconds is not None and time.perf_counter() - t_start >= max_seconds
        final = epoch + 1 == cfg.epochs or out_of_time or (max_steps is not None and steps >= max_steps)
        if (epoch + 1) % cfg.val_every == 0 or final:
            row.update(validate(net, ds, device, cfg.loss))
            score = row.get("DSC", -row["val_loss"]) if cfg.selects_on_val else float(epoch)
            if score > best:
                best = score
                checkpoint.save(out_dir / "best.pt", net, epoch=epoch, metrics=row, train_config=_jsonable(cfg.to_dict()))
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        checkpoint.save(last_path, net, epoch=epoch, optimizer=opt.state_dict(), rng=runtime.rng_state(),
                        scaler=scaler.state_dict(), best=best, history=json.dumps(history), metrics=row,
                        train_config=_jsonable(cfg.to_dict()))
        write_logs(out_dir, history)
        if progress:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  file=sys.stderr)
        if (max_steps is not None and steps >= max_steps) or out_of_time:
            break
    plot_curves(history, out_dir / "curves.png")
    return row or (history[-1] if history else {})


def _without_epochs(cfg: dict | None) -> dict | None:
    """A run's settings less ``epochs``: no learning-rate schedule depends on it, and items are derived
    from (seed, epoch, index), so a run resumed with a new epoch count equals a run started with it."""
    return None if cfg is None else {k: v for k, v in cfg.items() if k != "epochs"}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that differs between two config dicts (nested keys dotted)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d))
