"""Checkpoints of the segmentation network: our format, and the importer for the authors' segmenter.

Our file is a torch pickle of plain types only (loadable with ``weights_only=True``)::

    {"format": "l2r_submit-segmenter", "format_version": 1, "package_version": str,
     "model_config": dict (SegConfig), "state_dict": {name: tensor}, optional "optimizer", "epoch",
     "metrics", "rng", "train_config", ...}

A separate format name from the registration network's, so neither loader takes the other's file.

The authors' segmenter (their ``SegNet``, saved as ``{"epoch", "state_dict", "val_loss", "optizmizer"}``,
keys possibly prefixed ``module.``) has the registration network's key names with
``segmentation_decoder`` for ``registration_decoder``: :func:`import_original` renames them with the
registration importer's table (:func:`l2r_submit.nets.checkpoint.rename_original_key`), reads the sizes
from the shapes, checks every key and shape, and sets ``orientation="estienne2020"`` (their inputs were
SimpleITK arrays, axes k, j, i, with the first two flipped: the registration network's frame).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .. import __version__
from ..core.io import atomic_write, one_line
from .checkpoint import FORMAT as REG_FORMAT
from .checkpoint import SEG_FORMAT, _torch_load, rename_original_key
from .config import SegConfig
from .segnet import SegmentationNet

FORMAT = SEG_FORMAT
FORMAT_VERSION = 1


def save(path: str | os.PathLike, model: SegmentationNet, **extra) -> Path:
    """Write a segmenter checkpoint atomically; ``extra``: optimizer, epoch, metrics... (plain types, tensors)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
               "model_config": model.cfg.to_dict(), "state_dict": model.state_dict(), **extra}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[SegmentationNet, dict]:
    """Our segmenter checkpoint -> (model in eval mode, the checkpoint dict).

    Raises:
        ValueError: missing, unreadable or not a segmenter checkpoint (an original file of the authors:
            import it first), another format version, weights that do not fit the config; one line.
    """
    path = Path(path)
    ckpt = _torch_load(path)
    if ckpt.get("format") != FORMAT:
        if "optizmizer" in ckpt or any("segmentation_decoder" in k for k in ckpt.get("state_dict", {}) or {}):
            raise ValueError(f"{path}: an original checkpoint of the authors; convert it first with: "
                             f"l2r segment import {path} --out OURS.pt")
        raise ValueError(f"{path}: not an l2r_submit segmenter checkpoint (format {ckpt.get('format')!r})")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: segmenter format version {ckpt.get('format_version')} is not supported "
                         f"(this build reads {FORMAT_VERSION})")
    try:
        model = SegmentationNet(SegConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: weights do not match the stored segmenter config ({one_line(exc, 300)})") from None
    return model.to(map_location).eval(), ckpt


def rename_segmenter_key(key: str) -> str:
    """The authors' segmenter key -> ours, e.g. ``segmentation_decoder.last_conv.weight`` ->
    ``decoder.head.weight``.

    Raises:
        ValueError: a key of no module of their segmenter.
    """
    bare = key.removeprefix("module.")
    if not bare.startswith(("encoder.", "segmentation_decoder.")):
        raise ValueError(f"key '{key}' is not one of the authors' segmenter (encoder.*, segmentation_decoder.*)")
    return rename_original_key("registration_decoder." + bare[len("segmentation_decoder."):]
                               if bare.startswith("segmentation_decoder.") else bare)


def config_from_state(ours: dict[str, torch.Tensor]) -> SegConfig:
    """The segmenter's sizes read from renamed weights (input channels, channels per level, convs per
    level, classes); the activation and norm are the paper's (they hold no weights).

    Raises:
        KeyError, ValueError: weights that miss a level's first conv or do not form a config.
    """
    c0, in_ch = ours["encoder.stem.conv_in.weight"].shape[:2]
    n_levels = 1 + max(int(m.group(1)) for k in ours if (m := re.match(r"encoder\.levels\.(\d+)\.", k)))
    chans = [int(c0)] + [int(ours[f"encoder.levels.{i}.down.conv.weight"].shape[0]) for i in range(n_levels)]
    convs = [1 + max([int(m.group(1)) for k in ours if (m := re.match(rf"encoder\.levels\.{i}\.convs\.(\d+)\.", k))],
                     default=-1) for i in range(n_levels)]
    mult = chans[0] // 4 if chans[0] % 4 == 0 else 1
    return SegConfig(in_channels=int(in_ch), base_channels=tuple(c // mult for c in chans), channel_multiplier=mult,
                     encoder_convs=tuple(convs), n_classes=int(ours["decoder.head.weight"].shape[0]),
                     orientation="estienne2020")


def import_original(path: str | os.PathLike, ckpt: dict | None = None) -> SegmentationNet:
    """Our segmenter from an original checkpoint of the authors' segmentation network.

    Every key must map to one of ours and every one of ours must be given, with the same shape.

    Raises:
        ValueError: unreadable file, a key of another network, a missing or extra key, a shape that
            does not fit (one line, naming the file and the first such key).
    """
    path = Path(path)
    ckpt = ckpt if ckpt is not None else _torch_load(path)
    if ckpt.get("format") == FORMAT:
        raise ValueError(f"{path}: already an l2r_submit segmenter checkpoint, nothing to import; use it as it is")
    if ckpt.get("format") == REG_FORMAT:
        raise ValueError(f"{path}: an l2r_submit registration checkpoint, not a segmenter of the authors")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: no 'state_dict' in the checkpoint")
    if any(k.removeprefix("module.").startswith("registration_decoder.") for k in state):
        raise ValueError(f"{path}: a registration network of the authors, not their segmenter; "
                         "convert it with: l2r import-weights")
    ours: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        try:
            new = rename_segmenter_key(key)
        except ValueError as exc:
            raise ValueError(f"{path}: extra key: {exc}") from None
        if new.startswith("deep_heads."):
            raise ValueError(f"{path}: extra key '{key}': the authors' segmenter has no deep-supervision heads")
        ours[new] = value
    try:
        cfg = config_from_state(ours)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: weights do not form the authors' segmenter ({str(exc)[:200]})") from None
    model = SegmentationNet(cfg)
    expected = model.state_dict()
    back = {rename_segmenter_key(k): k for k in state}
    for key in expected:
        if key not in ours:
            raise ValueError(f"{path}: missing key for '{key}' of a {cfg.n_classes}-class segmenter "
                             f"with channels {cfg.channels}")
    for key, value in ours.items():
        if key not in expected:
            raise ValueError(f"{path}: extra key '{back[key]}' (no such layer in a segmenter with channels "
                             f"{cfg.channels}, convs {list(cfg.encoder_convs)})")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{path}: '{back[key]}' has shape {list(value.shape)}, expected "
                             f"{list(expected[key].shape)}")
    model.load_state_dict(ours)
    return model.eval()
