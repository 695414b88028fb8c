"""Checkpoints: our own format, and an importer for the authors' original files.

Our file is a torch pickle of plain types only (loadable with ``weights_only=True``)::

    {"format": "l2r_submit-checkpoint", "format_version": 1, "package_version": str,
     "model_config": dict, "state_dict": {name: tensor}, optional "optimizer", "epoch", "metrics",
     "rng", "extra"}

The authors' files (Estienne et al.) are ``{"epoch", "state_dict", "val_loss", "optizmizer"}`` with keys
named after their modules, possibly prefixed ``module.`` (DataParallel). :func:`import_original`
renames them to ours, drops the deep-supervision heads unless asked, reads the input channels from
the first conv, and sets ``orientation="estienne2020"`` so inputs are fed as the authors fed them.

The authors' brain sister project (TheoEst/hippocampus_registration) saves files with the same keys
and, for its 1-channel networks, the same shapes, but computes another function (LeakyReLU, a residual
add in each decoder level). Its networks always take 1 channel, so a 3-channel file is abdominal; a
1-channel file cannot be told apart and needs ``source="abdominal"``. Brain networks are refused: this
package does not implement their blocks.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..core.io import atomic_write, one_line
from .config import ModelConfig
from .regnet import RegistrationNet

FORMAT = "l2r_submit-checkpoint"
SEG_FORMAT = "l2r_submit-segmenter"  # :data:`l2r_submit.nets.seg_checkpoint.FORMAT`, named here to be told apart
FORMAT_VERSION = 1


def save(path: str | os.PathLike, model: RegistrationNet, **extra) -> Path:
    """Write a checkpoint atomically. ``extra`` may hold optimizer, epoch, metrics, rng (plain types/tensors)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
               "model_config": model.cfg.to_dict(), "state_dict": model.state_dict(), **extra}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


SOURCES = ("auto", "abdominal", "brain")
"""Which project of the authors an original checkpoint comes from (``auto``: read it from the shapes)."""


def _numpy_val_loss_globals() -> list:
    """What the unpickler needs for a NumPy float ``val_loss`` and nothing more: the scalar constructor
    (under NumPy 2's and NumPy 1's module names), ``dtype`` and the float32/float64 dtype classes."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import scalar
    allowed: list = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    dtypes = getattr(np, "dtypes", None)  # NumPy >= 1.25
    if dtypes is not None:
        allowed += [dtypes.Float64DType, dtypes.Float32DType]
    return allowed


def _allow_numpy_val_loss() -> contextlib.AbstractContextManager:
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals(_numpy_val_loss_globals()) if safe_globals else contextlib.nullcontext()


def _torch_load(path: Path) -> dict:
    """A checkpoint dict, loaded with ``weights_only=True`` (plus exactly a NumPy float ``val_loss``).

    Raises:
        ValueError: missing, unreadable, or holding other objects than tensors and plain containers.
    """
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; a checkpoint is a file (e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise ValueError(f"{path}: an empty file (0 bytes), not a checkpoint")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # a torch zip archive or a legacy pickle
        raise ValueError(f"{path}: not a torch checkpoint file (it starts with {head!r})")
    try:
        with warnings.catch_warnings(), _allow_numpy_val_loss():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: not the user's concern
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():  # not a pickle at all
            raise ValueError(f"{path}: not a readable checkpoint (not a torch file)") from None
        raise ValueError(f"{path}: not a plain-tensor checkpoint (it holds Python objects other than tensors, "
                         "numbers and containers); refused and not loaded, since unpickling such objects "
                         "can run code") from None
    except Exception as exc:  # truncated zip, not a torch file...
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {one_line(exc, 300)})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    stray = _numpy_objects({k: v for k, v in obj.items() if k != "val_loss"})
    if stray or not isinstance(obj.get("val_loss"), (int, float, np.floating, torch.Tensor, type(None))):
        raise ValueError(f"{path}: not a plain-tensor checkpoint (NumPy objects {stray or ['val_loss']}); "
                         "refused and not loaded")
    if isinstance(obj.get("val_loss"), np.floating):
        obj["val_loss"] = float(obj["val_loss"])
    return obj


def _numpy_objects(obj: object, where: str = "") -> list[str]:
    """Where NumPy objects sit in a loaded checkpoint (only a top-level ``val_loss`` may be one)."""
    if isinstance(obj, (np.generic, np.ndarray, np.dtype)):
        return [where or "<root>"]
    if isinstance(obj, dict):
        return [w for k, v in obj.items() for w in _numpy_objects(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, (list, tuple)):
        return [w for i, v in enumerate(obj) for w in _numpy_objects(v, f"{where}[{i}]")]
    return []


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[RegistrationNet, dict]:
    """Load our checkpoint (or an original one, imported on the fly when its source is certain: see
    :func:`import_original`; a 1-channel original needs ``l2r import-weights --source abdominal`` first).

    Returns:
        (model in eval mode, the full checkpoint dict).

    Raises:
        ValueError: missing, corrupt or truncated file, unknown format version, or weights that do not
            fit the stored config -- one line naming the file.
    """
    path = Path(path)
    ckpt = _torch_load(path)
    if ckpt.get("format") != FORMAT:
        if ckpt.get("format") == SEG_FORMAT:
            raise ValueError(f"{path}: a segmenter checkpoint (l2r segment), not a registration network")
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
        raise ValueError(f"{path}: weights do not match the stored model config ({one_line(exc, 300)})") from None
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


def detect_source(state: dict) -> str | None:
    """``abdominal`` when the shapes prove it (3 input channels: the brain networks take 1), else None.

    The files store no training arguments (only epoch, state_dict, val_loss, optimizer), and the keys
    and shapes of a 1-channel abdominal network equal those of the brain sister project's.
    """
    first = next((v for k, v in state.items() if k.removeprefix("module.") == "encoder.input.add_conv.weight"), None)
    if first is not None and first.ndim == 5 and first.shape[1] == 3:
        return "abdominal"
    return None


def import_original(path: str | os.PathLike, ckpt: dict | None = None, keep_deep_supervision: bool = False,
                    source: str = "auto") -> RegistrationNet:
    """Build our network from an original checkpoint of Estienne et al.

    The architecture is read from the shapes: input channels from the first conv, channels per level
    from the down-sampling convs, convs per level from the key names. ``source``: ``abdominal`` (their
    abdominal CT project, the network this package implements), ``brain`` (refused), or ``auto``
    (abdominal when the shapes prove it, else refused with a request for an explicit source).

    Raises:
        ValueError: unreadable file, unknown keys, shapes that do not fit, a brain network, or a file
            whose source cannot be told (one line, naming the file).
    """
    path = Path(path)
    if source not in SOURCES:
        raise ValueError(f"source: '{source}' received, expected one of {', '.join(SOURCES)}")
    ckpt = ckpt if ckpt is not None else _torch_load(path)
    if ckpt.get("format") in (FORMAT, SEG_FORMAT):
        what = "an l2r_submit checkpoint" if ckpt["format"] == FORMAT else "an l2r_submit segmenter checkpoint"
        raise ValueError(f"{path}: already {what}, nothing to import; use it as it is (--checkpoint)")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no 'state_dict' in the checkpoint")
    detected = detect_source(state)
    if source == "brain":
        raise ValueError(f"{path}: a network of the authors' brain (hippocampus) project has other blocks "
                         "(LeakyReLU, a residual add in each decoder level) that l2r_submit does not implement; "
                         "not loaded")
    try:  # first: a file of other keys is no network of theirs at all, whatever its channels
        ours = {rename_original_key(k): v for k, v in state.items()}
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}; is this a registration network of Estienne et al.?") from None
    if source == "auto" and detected is None:
        raise ValueError(f"{path}: a 1-channel original checkpoint has the same keys and shapes as the authors' "
                         "brain (hippocampus) networks, which compute another function; if it is an abdominal "
                         "CT network, convert it with: l2r import-weights FILE --out OUT --source abdominal")
    has_deep = any(k.startswith("deep_heads.") for k in ours)
    if not keep_deep_supervision:
        ours = {k: v for k, v in ours.items() if not k.startswith("deep_heads.")}
    try:
        in_ch = ours["encoder.stem.conv_in.weight"].shape[1]
        c0 = ours["encoder.stem.conv_in.weight"].shape[0]
        n_levels = 1 + max((int(m.group(1)) for k in ours if (m := re.match(r"encoder\.levels\.(\d+)\.", k))),
                           default=-1)
        if n_levels == 0:
            raise ValueError("no encoder level in it")
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
        raise ValueError(f"{path}: original checkpoint does not fit the seed architecture "
                         f"({one_line(exc, 300)})") from None
    return model.eval()
