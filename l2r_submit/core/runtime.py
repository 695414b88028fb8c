"""Run-time choices made once, at the edge: the device, the threads, the seeds and the allocator."""

from __future__ import annotations

import ctypes
import os
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


def rng_state() -> dict:
    """Every RNG state a run draws from: Python, NumPy's global generator, torch CPU, and CUDA (all
    devices) when CUDA is available; plain types and tensors only (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state(legacy=False)
    numpy_state = {"bit_generator": np_state["bit_generator"],
                   "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                   "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                   "gauss": float(np_state["gauss"])}
    state = {"python": random.getstate(), "torch": torch.get_rng_state(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict | torch.Tensor) -> None:
    """Restore what :func:`rng_state` saved (a bare tensor: torch CPU only, as older checkpoints stored).

    Raises:
        ValueError: the state holds CUDA generators for more devices than are available.
    """
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]}})
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) > torch.cuda.device_count():
            raise ValueError(f"the run saved {len(cuda)} CUDA generators, {torch.cuda.device_count()} devices here")
        torch.cuda.set_rng_state_all(cuda)


def deterministic_cudnn() -> None:
    """cuDNN in deterministic mode with autotuning off (set once, at the start of a CUDA training run)."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def configure_threads(n: int | None) -> None:
    """Use ``n`` intra-op threads (None: torch's default, the available cores)."""
    if n is not None and n > 0:
        torch.set_num_threads(n)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
KEEP_MEMORY_ENV = "L2R_KEEP_FREED_MEMORY"  # "0": leave the C allocator as the system set it


def keep_freed_memory() -> str:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the system.

    By default glibc serves each allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and
    unmaps it when freed. A 12-channel half-resolution descriptor volume is 47 MiB, so every such tensor
    of the refinement's loop comes back as new pages, and every page faults on first touch: measured
    2.0-3.5 million minor faults and 6-11 s of system time per pair of ``l2r predict`` on 2 CPU threads.
    With mmap off (``M_MMAP_MAX`` 0) and a 2 GiB trim threshold the heap keeps its pages: the faults
    fall about tenfold and a pair's search and refinement take several seconds less (README, "Speed").
    The price is a higher peak resident set, since freed memory is not handed back while the process runs.

    Set once, at the start of a process (``l2r predict`` asks for it; a library caller chooses). Nothing is
    changed when the C library is not glibc, when the environment already sets one of glibc's own
    ``MALLOC_*`` tunables (the user's choice wins) or preloads another allocator, or when
    ``L2R_KEEP_FREED_MEMORY=0``.

    Returns:
        what was done, one phrase for run.json.
    """
    if os.environ.get(KEEP_MEMORY_ENV, "1") == "0":
        return f"system default ({KEEP_MEMORY_ENV}=0)"
    if any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
        return "system default (MALLOC_* or GLIBC_TUNABLES set in the environment)"
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc...: glibc's mallopt would not apply
        return "system default (another allocator in LD_PRELOAD)"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "system default (not glibc)"
    if not hasattr(libc, "gnu_get_libc_version"):
        return "system default (not glibc)"
    refused = [name for name, param, value in (("M_MMAP_MAX", _M_MMAP_MAX, 0),
                                                ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, 2**31 - 1),
                                                ("M_TOP_PAD", _M_TOP_PAD, 64 << 20)) if libc.mallopt(param, value) != 1]
    if refused:
        return f"glibc, partly set (mallopt refused {', '.join(refused)})"
    return "glibc, freed memory kept (mmap off, trim threshold 2 GiB)"
