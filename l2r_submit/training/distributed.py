"""Distributed data parallel under ``torchrun``: the launch environment, the process group, each rank's
share of an epoch, and the few collectives the trainer needs.

``torchrun`` (``python -m torch.distributed.run``) starts one process per device and gives each
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without them (or with
``WORLD_SIZE=1``) a run is a plain single process and nothing here talks to other processes.

Sharding keeps the data-derived determinism: item ``i`` of an epoch is the same whatever the world
size (it derives from seed, epoch and ``i``), and global batch ``k`` (items ``kB .. kB + B - 1``, ``B`` =
``--batch-size``) is split into ``world_size`` consecutive pieces, one per rank, so the union over the
ranks of each batch is exactly the single-process batch.
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist

from ..core.io import one_line

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run. ``world_size == 1``: a single process, no collectives.

    ``owns_group``: :func:`start` joined the process group for this caller, so :func:`stop` leaves it; a group
    an outer caller had already joined (e.g. ``l2r recipe`` running several training steps in one process)
    is left to that caller.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, logs and curves (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            tdist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects; ``[obj]`` in a single process)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def main_says(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (decisions that must agree, e.g. the time budget)."""
        if not self.distributed:
            return flag
        box = [flag]
        tdist.broadcast_object_list(box, src=0)
        return bool(box[0])

    def sum_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of ``x`` over the ranks, differentiable. With the gradient average of
        ``DistributedDataParallel`` a term built from these sums gets exactly its single-process gradient."""
        if not self.distributed:
            return x
        return _SumOverRanks.apply(x)

    def weighted_mean(self, values: dict[str, float], weight: float) -> dict[str, float]:
        """``sum_r weight_r * values_r`` over the ranks (weights: each rank's share of the batch)."""
        if not self.distributed:
            return values
        keys = list(values)  # the same order on every rank: the same step made them
        t = torch.tensor([weight * values[k] for k in keys], dtype=torch.float64)
        tdist.all_reduce(t)
        return {k: float(v) for k, v in zip(keys, t.tolist())}


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is the all-reduce of the incoming gradients: every rank's loss
    holds the global sum, so each rank's inputs receive the gradient of all ranks' losses."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        tdist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        tdist.all_reduce(out)
        return out


def _env_int(name: str, env: dict[str, str]) -> int:
    text = env.get(name, "")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"distributed launch: {name}='{text}' is not an integer (start with torchrun)") from None


def read_env(env: dict[str, str] | None = None) -> Dist:
    """The launch environment as a :class:`Dist` (no process group yet).

    Raises:
        ValueError: an inconsistent launch environment, in one line (a missing variable, a rank outside
            the world, a bad number).
    """
    env = dict(os.environ if env is None else env)
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return Dist()
    world = _env_int("WORLD_SIZE", env)
    if world < 1:
        raise ValueError(f"distributed launch: WORLD_SIZE={world}, expected at least 1")
    if world == 1:
        return Dist()
    missing = [v for v in LAUNCH_VARS if not env.get(v)]
    if missing:
        raise ValueError(f"distributed launch: WORLD_SIZE={world} but {', '.join(missing)} not set; "
                         "start with torchrun --nproc_per_node N -m l2r_submit train ...")
    rank, local = _env_int("RANK", env), _env_int("LOCAL_RANK", env)
    if not 0 <= rank < world:
        raise ValueError(f"distributed launch: RANK={rank} outside WORLD_SIZE={world}")
    if local < 0 or local > rank:
        raise ValueError(f"distributed launch: LOCAL_RANK={local} with RANK={rank} is inconsistent")
    return Dist(rank=rank, world_size=world, local_rank=local)


CUDA_BACKEND = "cpu:gloo,cuda:nccl"
"""The process group of a CUDA run: NCCL for CUDA tensors (DDP's gradients), gloo for CPU ones."""


def start(device: torch.device, env: dict[str, str] | None = None,
          timeout: datetime.timedelta | None = None) -> tuple[Dist, torch.device]:
    """Join the process group of a ``torchrun`` launch (:data:`CUDA_BACKEND` on CUDA, gloo on CPU) and pick
    this rank's device (``cuda:LOCAL_RANK``). A single process returns ``(Dist(), device)`` and starts nothing.
    A group already joined (by an outer caller) is used as it is and not owned (:func:`stop` leaves it).
    ``timeout``: of the group's collectives when this call joins it (None: torch's default).

    Raises:
        ValueError: an inconsistent launch environment, or fewer GPUs on this machine than local ranks.
    """
    dist = read_env(env)
    if not dist.distributed:
        return dist, device
    if device.type == "cuda":
        n = torch.cuda.device_count()
        if dist.local_rank >= n:
            raise ValueError(f"distributed launch: LOCAL_RANK={dist.local_rank} but this machine has {n} GPUs; "
                             f"give --nproc_per_node {n} or less")
        torch.cuda.set_device(dist.local_rank)
        # NCCL serves CUDA tensors only; the loss terms' all-reduce (weighted_mean) and the object collectives
        # are CPU tensors, which NCCL alone refuses ("No backend type associated with device type cpu")
        device, backend = torch.device("cuda", dist.local_rank), CUDA_BACKEND
    else:
        backend = "gloo"
    owns = not tdist.is_initialized()
    if owns:
        extra = {} if timeout is None else {"timeout": timeout}
        try:
            tdist.init_process_group(backend=backend, rank=dist.rank, world_size=dist.world_size, **extra)
        except (RuntimeError, ValueError) as exc:
            line = one_line(exc, 300) or type(exc).__name__
            raise ValueError(f"distributed launch: cannot join the process group ({backend}): {line}") from None
    return Dist(dist.rank, dist.world_size, dist.local_rank, backend, owns_group=owns), device


def stop(dist: Dist) -> None:
    """Leave the process group :func:`start` joined for ``dist`` (a no-op in a single process, and for a group
    an outer caller joined: joining a group again after leaving it is not reliable with gloo)."""
    if dist.distributed and dist.owns_group and tdist.is_initialized():
        # every rank past its last collective first: a rank that tore the group down while another still
        # read from it aborted both ('terminate called without an active exception', SIGABRT; seen in CI)
        try:
            tdist.barrier()
        except RuntimeError:  # a peer already gone (it failed): nothing left to wait for
            pass
        gc.collect()  # DDP wrappers of finished trainings hold the group: freed now, not in the interpreter's exit
        tdist.destroy_process_group()


def check_batch(global_batch: int, world_size: int) -> int:
    """The per-rank batch. Raises ValueError (one line) when ``global_batch`` does not divide evenly."""
    if global_batch % world_size:
        raise ValueError(f"--batch-size {global_batch} is the global batch; it must be a multiple of the "
                         f"{world_size} processes (each takes batch/processes items per step)")
    return global_batch // world_size


def rank_batches(n_items: int, global_batch: int, rank: int, world_size: int) -> list[tuple[list[int], int]]:
    """This rank's item indices of every global batch of an epoch, with that batch's global size.

    Batch ``k`` covers items ``k*B .. min((k+1)*B, n) - 1``; rank ``r`` takes the ``r``-th of ``world_size``
    consecutive near-equal pieces (``numpy.array_split``), so the ranks' pieces are the batch, in order.

    Raises:
        ValueError: a last batch with fewer items than ranks (a rank would have nothing to train on).
    """
    out = []
    for start in range(0, n_items, global_batch):
        idx = np.arange(start, min(start + global_batch, n_items))
        if len(idx) < world_size:
            raise ValueError(f"an epoch of {n_items} items ends with a batch of {len(idx)}, fewer than the "
                             f"{world_size} processes; choose a batch size or item count that leaves none short")
        out.append(([int(i) for i in np.array_split(idx, world_size)[rank]], len(idx)))
    return out
