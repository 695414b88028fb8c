"""A training run's settings: the presets of the paper's recipe, :class:`TrainConfig` (saved to
``config.json`` and every checkpoint), overrides by name and ``--set key=value`` parsing.
:mod:`l2r_submit.training.train` runs them; it re-exports these names (``train.preset_config``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from ..nets import config
from . import losses
from .checks import check_crop, check_number, parse_crop

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
        grad_clip: clip the gradients' global norm to this (None: no clipping, the paper).
        accumulate: batches per optimizer step (gradient accumulation; 1: none, the paper).
    """

    preset: str = "symmetric"
    model: config.ModelConfig = field(default_factory=lambda: config.PRESETS["paper"])
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
    grad_clip: float | None = None
    accumulate: int = 1

    def __post_init__(self) -> None:
        check_number("lr", self.lr, "a finite learning rate above 0")
        if self.grad_clip is not None:
            check_number("grad_clip", self.grad_clip, "a finite positive norm (or none)")
        if self.accumulate < 1:
            raise ValueError(f"accumulate: {self.accumulate} received, expected 1 or more batches per step")
        for name in ("epochs", "batch_size", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: {getattr(self, name)} received, expected 1 or more")
        if self.num_workers < 0:
            raise ValueError(f"num_workers: {self.num_workers} received, expected 0 or more")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: {self.threads} received, expected 1 or more (or none for all)")
        if self.labels not in ("dataset", "folder", "none"):
            raise ValueError(f"labels: '{self.labels}' received, expected dataset, folder or none")
        check_crop(self.crop, "128,128,128")

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
    if model_preset not in config.PRESETS:
        raise ValueError(f"model preset '{model_preset}' unknown; presets: {', '.join(config.PRESETS)}")
    spec = dict(TRAIN_PRESETS[name])
    needs_init = spec.pop("needs_init", False)
    cfg = TrainConfig(preset=name, model=config.PRESETS[model_preset], **spec)
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

    Booleans accept true/false/1/0 (never a truthy string); tuples are comma lists (``crop``: three sizes,
    :func:`~l2r_submit.training.checks.parse_crop`); ``none`` clears optional fields.

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
    if name == "crop":
        return parse_crop(text)
    low = text.strip().lower()
    try:
        if low == "none" and name in ("labels_dir", "init", "threads", "grad_clip"):
            return None
        if name == "grad_clip":
            return float(text)
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
        if isinstance(current, tuple):
            kind = type(current[0]) if current else int
            return tuple(kind(v) for v in text.split(","))
        if name == "threads":
            return int(text)
        return text
    except ValueError:
        raise ValueError(f"setting '{key}': cannot read '{text}' as {type(current).__name__}") from None
