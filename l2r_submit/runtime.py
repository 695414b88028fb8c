"""Run-time choices made once, at the edge: the device and the seeds."""

from __future__ import annotations

import random
import sys

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu (with a one-line notice on stderr); ``cpu``; ``cuda``.

    Raises:
        ValueError: ``cuda`` asked for but not available, or an unknown name.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        print("note: no CUDA device found, running on CPU", file=sys.stderr)
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no CUDA device is available (use --device cpu)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device: '{name}' received, expected auto, cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices). Call once, at the start of a run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_threads(n: int | None) -> None:
    """Use ``n`` intra-op threads (None: torch's default, the available cores)."""
    if n is not None and n > 0:
        torch.set_num_threads(n)
