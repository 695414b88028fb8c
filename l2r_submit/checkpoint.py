"""Checkpoints: our own format, and an importer for the authors' original files.

Our file is a torch pickle of plain types only (loadable with ``weights_only=True``)::

    {"format": "l2r_submit-checkpoint", "format_version": 1, "package_version": str,
     "model_config": dict, "state_dict": {name: tensor}, optional "optimizer", "epoch", "metrics",
     "rng", "extra"}

The authors' files (Estienne et al.) are ``{"epoch", "state_dict", "val_loss", "optizmizer"}`` with keys
named after their modules, possibly prefixed ``module.`` (DataParallel). :func:`import_original`
renames them to ours, drops the deep-supervision heads unless asked, reads the input channels from
the first conv, and sets ``orientation="estienne2020"`` so inputs are fed as the authors fed them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from . import __version__
from .io import atomic_write
from .model import ModelConfig, RegistrationNet

FORMAT = "l2r_submit-checkpoint"
FORMAT_VERSION = 1


def save(path: str | os.PathLike, model: RegistrationNet, **extra) -> Path:
    """Write a checkpoint atomically. ``extra`` may hold optimizer, epoch, metrics, rng (plain types/tensors)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
               "model_config": model.cfg.to_dict(), "state_dict": model.state_dict(), **extra}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _torch_load(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle refused by weights_only, not a torch file...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first[:200]})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[RegistrationNet, dict]:
    """Load our checkpoint (or an original one, imported on the fly).

    Returns:
        (model in eval mode, the full checkpoint dict).

    Raises:
        ValueError: missing, corrupt or truncated file, unknown format version, or weights that do not
            fit the stored config -- one line naming the file.
    """
    path = Path(path)
    ckpt = _torch_load(path)
    if ckpt.get("format") != FORMAT:
        if "state_dict" in ckpt and ("optizmizer" in ckpt or any("encoder.input" in k for k in ckpt["state_dict"])):
            model = import_original(path, ckpt)
            return model.to(map_location).eval(), ckpt
        raise ValueError(f"{path}: not an l2r_submit checkpoint (keys: {sorted(ckpt)[:6]})")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {ckpt.get('format_version')} is not supported "
                         f"(this build reads {FORMAT_VERSION})")
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"])
        model = RegistrationNet(cfg)
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"{path}: weights do not match the stored model config ({first[:200]})") from None
    return model.to(map_location).eval(), ckpt


_RENAMES = [
    (r"^encoder\.input\.add_conv\.", "encoder.stem.conv_in."),
    (r"^encoder\.input\.conv\.", "encoder.stem.conv_res."),
    (r"^encoder\.conv_blocks\.(\d+)\.conv_pool\.conv\.", r"encoder.levels.\1.down.conv."),
    (r"^encoder\.conv_blocks\.(\d+)\.nConvs\.(\d+)\.conv\.", r"encoder.levels.\1.convs.\2.conv."),
    (r"^registration_decoder\.conv_list\.(\d+)\.conv_tr\.conv\.", r"decoder.levels.\1.up.conv."),
    (r"^registration_decoder\.conv_list\.(\d+)\.nConvs\.(\d+)\.conv\.", r"decoder.levels.\1.convs.\2.conv."),
    (r"^registration_decoder\.last_conv\.", "decoder.head."),
    (r"^deep_blocks\.convs_list\.(\d+)\.", r"deep_heads.\1."),
]


def rename_original_key(key: str) -> str:
    """The authors' state_dict key -> ours (``module.`` prefix stripped).

    Raises:
        ValueError: a key of no known module.
    """
    key = key[len("module."):] if key.startswith("module.") else key
    for pattern, repl in _RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise ValueError(f"unknown key '{key}'")


def import_original(path: str | os.PathLike, ckpt: dict | None = None, keep_deep_supervision: bool = False) -> RegistrationNet:
    """Build our network from an original checkpoint of Estienne et al.

    The architecture is read from the shapes: input channels from the first conv, channels per level
    from the down-sampling convs, convs per level from the key names.

    Raises:
        ValueError: unreadable file, unknown keys, or shapes that do not fit (one line, naming the file).
    """
    path = Path(path)
    ckpt = ckpt if ckpt is not None else _torch_load(path)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no 'state_dict' in the checkpoint")
    try:
        ours = {rename_original_key(k): v for k, v in state.items()}
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}; is this a registration network of Estienne et al.?") from None
    has_deep = any(k.startswith("deep_heads.") for k in ours)
    if not keep_deep_supervision:
        ours = {k: v for k, v in ours.items() if not k.startswith("deep_heads.")}
    try:
        in_ch = ours["encoder.stem.conv_in.weight"].shape[1]
        c0 = ours["encoder.stem.conv_in.weight"].shape[0]
        n_levels = 1 + max(int(m.group(1)) for k in ours if (m := re.match(r"encoder\.levels\.(\d+)\.", k)))
        chans = [c0] + [ours[f"encoder.levels.{i}.down.conv.weight"].shape[0] for i in range(n_levels)]
        convs = [1 + max([int(m.group(1)) for k in ours if (m := re.match(rf"encoder\.levels\.{i}\.convs\.(\d+)\.", k))],
                         default=-1) for i in range(n_levels)]
        mult = chans[0] // 4 if chans[0] % 4 == 0 else 1
        cfg = ModelConfig(in_channels=in_ch, base_channels=tuple(c // mult for c in chans), channel_multiplier=mult,
                          encoder_convs=tuple(convs), deep_supervision=keep_deep_supervision and has_deep,
                          orientation="estienne2020")
        model = RegistrationNet(cfg)
        model.load_state_dict(ours)
    except (KeyError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"{path}: original checkpoint does not fit the seed architecture ({first[:200]})") from None
    return model.eval()
