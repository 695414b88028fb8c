"""A CUDA device simulated on the CPU, to find code that mixes devices without a GPU.

PyTorch refuses an operation whose tensor arguments live on different devices ("Expected all tensors to be
on the same device"), and refuses ``.numpy()`` on a CUDA tensor. A CPU-only test run never meets either
rule, so a CPU tensor made inside a stage that runs on the GPU goes unnoticed until an organiser runs the
image with ``--gpus all``. :func:`simulated_cuda` makes those rules hold on the CPU:

- :class:`OnCuda` is a CPU tensor that says it lives on ``cuda:0`` (``.device``, ``.is_cuda``); every torch
  function given one checks its tensor arguments as CUDA would and wraps its tensor results again;
- inside the context, ``.to("cuda")``, ``.cuda()``, a factory given ``device="cuda"`` and ``nn.Module.to``
  give :class:`OnCuda` tensors; ``.cpu()`` and ``.to("cpu")`` give plain ones; ``torch.cuda.is_available()``
  is True and the handful of ``torch.cuda`` calls a run makes (synchronise, memory statistics, device count)
  answer as one idle device would; ``torch.Generator(device="cuda")`` is a CPU generator.

What it cannot tell: kernels, speed, memory, numerics and random streams of CUDA (everything still runs on the
CPU; a CUDA generator draws other numbers than a CPU one of the same seed; autocast stays float32), several
devices (every tensor is on ``cuda:0``), device mixing inside a backward pass (autograd runs unchecked), and mixing
rules of operations it does not list (it is strict: only copies and indexing accept CPU tensors, as CUDA does;
a 0-dimensional CPU tensor is accepted, as CUDA does, except by ``cat``/``stack``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode

CUDA = torch.device("cuda", 0)

# Operations for which CUDA accepts CPU tensors beside CUDA ones (values copied); indexing has its own rule.
_MIXED_OK = {torch.Tensor.copy_, torch.Tensor.to, torch._has_compatible_shallow_copy_type}
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_put_, torch.Tensor.index_put,
             torch.index_put}
# Joining tensors: every one on the device, 0-dimensional ones included.
_JOINING = {torch.cat, torch.concat, torch.concatenate, torch.stack, torch.hstack, torch.vstack, torch.dstack}


class DeviceMixError(RuntimeError):
    """An operation mixed simulated CUDA tensors with CPU ones (or asked a CUDA tensor for NumPy)."""


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _getter(func: Any) -> str | None:
    """The name of the property that ``func`` reads (``Tensor.device`` -> 'device'), or None."""
    if getattr(func, "__name__", None) != "__get__":
        return None
    return getattr(getattr(func, "__self__", None), "__name__", None)


def _kind(device: Any) -> str | None:
    if isinstance(device, torch.device):
        return device.type
    if isinstance(device, str):
        return device.split(":")[0]
    return None


def _target(args: tuple, kwargs: dict) -> str | None:
    """'cuda', 'cpu' or None (none named): the device of ``.to(...)``-like or factory arguments (the tensor
    whose method it is excluded)."""
    for c in [kwargs.get("device"), *args]:
        kind = c.device.type if isinstance(c, torch.Tensor) else _kind(c)
        if kind in ("cuda", "cpu"):
            return kind
    return None


def _on_cpu(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The arguments with every CUDA device named replaced by the CPU (where the work really runs)."""
    args = tuple(torch.device("cpu") if _kind(a) == "cuda" else a for a in args)
    if _kind(kwargs.get("device")) == "cuda":
        kwargs = {**kwargs, "device": torch.device("cpu")}
    return args, kwargs


def _wrap(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and not isinstance(obj, OnCuda):
        return obj.as_subclass(OnCuda)
    if isinstance(obj, list):
        return [_wrap(o) for o in obj]
    if type(obj) is tuple:
        return tuple(_wrap(o) for o in obj)
    if isinstance(obj, tuple) and not isinstance(obj, torch.Size):  # torch.return_types.*
        return type(obj)(tuple(_wrap(o) for o in obj))
    return obj


def _check_devices(func: Any, args: tuple, kwargs: dict) -> None:
    """Raise :class:`DeviceMixError` where CUDA would refuse ``func`` on these arguments: CPU tensors beside
    CUDA ones (a 0-dimensional CPU tensor is taken as a number, except when joining tensors); for indexing,
    CUDA indices into a CPU tensor, or CPU values put into a CUDA tensor through tensor indices (CPU
    indices into a CUDA tensor are accepted, and so are CPU values set through plain slices: a copy)."""
    name = getattr(func, "__name__", repr(func))
    if func in _INDEXING:
        target, index = args[0], args[1] if len(args) > 1 else kwargs.get("indices")
        values = args[2] if len(args) > 2 else kwargs.get("values")
        advanced = any(True for _ in _tensors(index))
        if not isinstance(target, OnCuda) and any(isinstance(t, OnCuda) for t in _tensors(index)):
            raise DeviceMixError(f"{name}: cuda:0 indices into a CPU tensor (CUDA refuses: indices should be "
                                 "on cpu or on the same device as the indexed tensor)")
        if isinstance(target, OnCuda) and advanced and isinstance(values, torch.Tensor) and not isinstance(
                values, OnCuda) and values.dim() > 0:
            raise DeviceMixError(f"{name}: CPU values put into a cuda:0 tensor through tensor indices")
        return
    joining = func in _JOINING
    plain = [t for t in _tensors((args, kwargs)) if not isinstance(t, OnCuda) and (joining or t.dim() > 0)]
    if plain:
        raise DeviceMixError(f"{name}: a CPU tensor of shape {tuple(plain[0].shape)} beside cuda:0 tensors "
                             "(CUDA refuses: expected all tensors to be on the same device)")


class OnCuda(torch.Tensor):
    """A CPU tensor that behaves, for device rules, as if it lived on ``cuda:0``."""

    def __reduce_ex__(self, protocol):  # saved as the plain tensor a real CUDA tensor is (no class of ours)
        with torch._C.DisableTorchFunctionSubclass():
            return torch.Tensor.__reduce_ex__(self.as_subclass(torch.Tensor), protocol)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if _getter(func) == "device":
            return CUDA
        if _getter(func) == "is_cuda":
            return True
        if _getter(func) == "is_cpu":
            return False
        if func is torch.Tensor.get_device:
            return 0
        if func in (torch.Tensor.numpy, torch.Tensor.__array__):
            raise DeviceMixError("can't convert cuda:0 device type tensor to numpy (call .cpu() first)")
        to_cpu = func is torch.Tensor.cpu or (func is torch.Tensor.to and _target(args[1:], kwargs) == "cpu")
        if not to_cpu and func not in _MIXED_OK:
            _check_devices(func, args, kwargs)
        args, kwargs = _on_cpu(tuple(args), kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
            if to_cpu:  # a real copy to another device: never the same tensor
                return (out.clone() if out is args[0] else out).as_subclass(torch.Tensor)
        return _wrap(out)


class _Mode(TorchFunctionMode):
    """Turns ``device="cuda"`` in factories and ``.to("cuda")``/``.cuda()`` of plain tensors into OnCuda."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            func, kwargs = torch.Tensor.to, {"device": CUDA, **{k: v for k, v in kwargs.items() if k != "device"}}
            args = args[:1]
        method = bool(args) and isinstance(args[0], torch.Tensor) and func.__name__ in dir(torch.Tensor)
        target = _target(args[1:] if method else (), kwargs)
        if target != "cuda" or (method and isinstance(args[0], OnCuda)):
            return func(*args, **kwargs)
        requires_grad = kwargs.pop("requires_grad", False)
        args, kwargs = _on_cpu(tuple(args), kwargs)
        out = func(*args, **kwargs)
        if (method and out is args[0]) or func in (torch.as_tensor, torch.asarray):  # a real copy to another
            out = out.clone()  # device never shares memory with its source (a tensor, a NumPy array)
        out = _wrap(out)
        return out.requires_grad_(True) if requires_grad else out


class _Generator(torch.Generator):
    """``torch.Generator(device="cuda")`` gives a CPU generator (a type, not a function: no mode sees it)."""

    def __new__(cls, device: Any = "cpu"):  # noqa: D102
        return super().__new__(cls, "cpu" if _kind(device) == "cuda" else device)


@contextlib.contextmanager
def simulated_cuda(monkeypatch) -> Iterator[None]:
    """Within: a CUDA device ``cuda:0`` simulated on the CPU (see the module's docstring)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for stat in ("max_memory_allocated", "memory_allocated", "max_memory_reserved", "memory_reserved"):
        monkeypatch.setattr(torch.cuda, stat, lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch, "Generator", _Generator)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "simulated CUDA device")
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.get_rng_state()])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: None)
    for flag in ("deterministic", "benchmark"):  # a CUDA training sets them; restored after
        monkeypatch.setattr(torch.backends.cudnn, flag, getattr(torch.backends.cudnn, flag))
    previous = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)  # Module.to keeps the OnCuda class
    try:
        with _Mode():
            yield
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(previous)
