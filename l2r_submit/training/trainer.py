"""The training loop, written once for every network this package trains.

What differs per network comes in a :class:`Task`: the module to train, its optimizer, the items of an
epoch, the batch -> loss step, the validation, the score that picks ``best.pt`` and how a checkpoint is
written. :func:`fit` does the rest: epochs and steps, AMP on CUDA, optional gradient clipping and
accumulation, validation every N epochs, ``last.pt``/``best.pt``, ``log.jsonl``/``log.csv``/``curves.png``,
resume, a step limit and a time budget, and distributed data parallel when the process was started by
``torchrun`` (:mod:`l2r_submit.training.distributed`): each rank trains on its piece of every global batch, the
gradients are averaged by :class:`torch.nn.parallel.DistributedDataParallel`, and only rank 0 writes.

A step whose loss is NaN or infinite stops the run (:class:`TrainingFailed`) before anything of its epoch
is written, so ``last.pt`` keeps the last good epoch: a NaN input used to train NaN weights into ``last.pt``
at every epoch, without a word, until the validation failed.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..core import folders, runtime
from . import distributed
from .distributed import Dist, rank_batches
from .train_logs import plot_curves, write_logs


class TrainingFailed(RuntimeError):
    """The training itself went wrong, not its input: a non-finite loss, or a non-finite field in validation.
    One line naming the epoch, the step and the items, and what the run folder keeps."""


@dataclass(frozen=True)
class Share:
    """This rank's part of the current global batch, for losses whose terms are not plain means.

    ``weight`` = local items / global items; a per-item mean computed on the local items, multiplied by
    ``weight * world_size``, gets under DDP's gradient average the gradient of the global mean.
    """

    n_local: int
    n_global: int
    dist: Dist

    @property
    def weight(self) -> float:
        return self.n_local / self.n_global

    @property
    def mean_scale(self) -> float:
        return self.weight * self.dist.world_size


StepFn = Callable[[torch.nn.Module, dict, Share], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]
"""``(module, batch on the device, share) -> (objective to backpropagate, terms to log)``; the terms are
this rank's values, logged as their weighted mean over the ranks (``Share.weight``)."""


@dataclass
class Task:
    """What one network's training supplies to :func:`fit`.

    Attributes:
        model: the module the step calls (wrapped in DDP when distributed); its parameters are trained.
        optimizer: over ``model``'s parameters.
        epoch_items: ``epoch -> torch Dataset`` of that epoch's items (derived from seed, epoch, index).
        step: the batch -> loss function (:data:`StepFn`).
        validate: ``dist -> metrics dict`` (every rank calls it; it may shard and gather).
        score: ``(row, epoch) -> float``, higher is better; the best epoch is written to ``best.pt``.
        save: ``(path, **extra) -> None`` writes a checkpoint of the trained network with ``extra``.
        config: the run's settings (JSON), written to ``config.json`` with ``world_size``.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    epoch_items: Callable[[int], torch.utils.data.Dataset]
    step: StepFn
    validate: Callable[[Dist], dict]
    score: Callable[[dict, int], float]
    save: Callable[..., Any]
    config: dict


@dataclass(frozen=True)
class Loop:
    """Settings of the loop itself.

    Attributes:
        epochs: epochs to reach (a resumed run continues up to it).
        batch_size: the GLOBAL batch (split over the ranks).
        num_workers: DataLoader workers per rank.
        val_every: validate every N epochs (and after the last).
        grad_clip: clip the gradients' global norm to this (None: no clipping).
        accumulate: batches per optimizer step (1: none).
        max_steps: stop after this many batches (within an epoch).
        max_seconds: stop at the end of the first epoch that ends after this much wall time.
        progress: a progress bar and a line per epoch on stderr (rank 0).
    """

    epochs: int
    batch_size: int
    num_workers: int = 0
    val_every: int = 1
    grad_clip: float | None = None
    accumulate: int = 1
    max_steps: int | None = None
    max_seconds: float | None = None
    progress: bool = True


def rank_indices(n: int, dist: Dist, progress: bool, desc: str = "validation") -> Iterator[int]:
    """The items ``0..n-1`` this rank handles (``rank``, ``rank + world_size``, ...), with a progress bar on
    stderr on rank 0 when ``progress`` (a whole-volume validation takes seconds per item)."""
    from tqdm import tqdm

    return iter(tqdm(range(dist.rank, n, dist.world_size), desc=desc, unit="item", file=sys.stderr, leave=False,
                     disable=not (progress and dist.is_main)))


def claim_folder(out_dir: Path) -> contextlib.AbstractContextManager:
    """Hold ``out_dir`` for this training (:func:`l2r_submit.core.folders.exclusive_use`): two trainings
    started into one folder both passed :func:`check_fresh` (no checkpoint before the first epoch ends) and
    mixed their checkpoints and logs. Under ``torchrun`` rank 0 holds it (the rank that writes)."""
    if distributed.read_env().rank != 0:
        return contextlib.nullcontext()
    return folders.exclusive_use(out_dir, "--out")


RUN_KINDS = {"registration": ("dataset", "l2r train"), "segmenter": ("datasets", "l2r segment train")}
"""Each training's kind: the key its ``config.json`` has and the other's has not, and the command."""


def check_fresh(out_dir: Path, resume: bool, kind: str | None = None) -> None:
    """A run started without ``resume`` must not write over an earlier run's checkpoints in ``out_dir``
    (its config.json and first epoch replaced them, and its log, without a word).

    Raises:
        ValueError: ``out_dir`` holds ``last.pt`` or ``best.pt`` and ``resume`` is False, or ``best.pt``
            alone (nothing to resume from), or a run of another ``kind`` (``registration``, ``segmenter``:
            :data:`RUN_KINDS`); one line.
    """
    found = [name for name in ("last.pt", "best.pt") if (out_dir / name).exists()]
    other = _other_kind(out_dir, kind) if found else None
    if other:
        raise ValueError(f"{out_dir}: holds a {other} run ({RUN_KINDS[other][1]}), not a {kind} run; give another "
                         "--out")
    if found == ["best.pt"]:  # stopped between the two writes of its first epoch, or last.pt removed
        raise ValueError(f"{out_dir}: holds best.pt but no last.pt (the optimizer state a run resumes from), so "
                         "its run cannot be resumed; give another --out, or move best.pt away to start over here")
    if found and not resume:
        raise ValueError(f"{out_dir}: holds a training run ({', '.join(found)}); continue it with --resume, "
                         "or give another --out")


def _other_kind(out_dir: Path, kind: str | None) -> str | None:
    """The kind of the run in ``out_dir`` when its ``config.json`` says it is not ``kind`` (else None)."""
    try:
        config = json.loads((out_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if kind is None or not isinstance(config, dict):
        return None
    return next((k for k, (key, _) in RUN_KINDS.items() if k != kind and key in config
                 and RUN_KINDS[kind][0] not in config), None)


RESUME_FREE = ("epochs", "device", "threads", "num_workers")
"""Settings a resumed run may change: ``epochs`` (no learning-rate schedule depends on it, and items are
derived from (seed, epoch, index), so a run resumed with a new epoch count equals a run started with it),
and where and how fast it runs (``device``: ``auto`` and ``cpu`` were refused as different on a CPU machine;
``threads``, ``num_workers``: the items do not depend on them)."""


def resume_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that differs between a run's saved config and the one asked
    for now (nested keys dotted), leaving out :data:`RESUME_FREE` at the top level; empty: it may resume."""
    out = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in RESUME_FREE:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += resume_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def wrap_ddp(model: torch.nn.Module, device: torch.device, dist: Dist) -> torch.nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` when distributed, else itself."""
    if not dist.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def fit(task: Task, loop: Loop, out_dir: Path, device: torch.device, dist: Dist = Dist(),
        resume: dict | None = None) -> dict:
    """Train ``task`` from its current state, or continue the checkpoint dict ``resume`` (``last.pt`` of an
    earlier run of any world size: optimizer, loss scaler, RNG states, epoch, best score, history; the
    caller has loaded its weights into the model). Returns the last epoch's log row.

    Raises:
        ValueError: a resumed run that already reached ``loop.epochs``, an epoch that cannot be split
            over the ranks, an item that cannot be read (one line, also from a DataLoader worker).
        TrainingFailed: a non-finite loss, or ``task.validate``'s; nothing of that epoch is written.
    """
    use_amp = device.type == "cuda"
    if use_amp:
        runtime.deterministic_cudnn()
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, best, history = 0, -math.inf, []
    if resume is not None:
        task.optimizer.load_state_dict(resume["optimizer"])
        if resume.get("scaler") and use_amp:
            scaler.load_state_dict(resume["scaler"])
        runtime.set_rng_state(resume["rng"])
        start_epoch, best, history = resume["epoch"] + 1, resume["best"], json.loads(resume["history"])
        if start_epoch > loop.epochs:
            raise ValueError(f"{out_dir / 'last.pt'}: the run already trained {start_epoch} epochs, more than "
                             f"--epochs {loop.epochs}; a run can be extended or finished, not shortened after the fact")
    if dist.is_main:
        (out_dir / "config.json").write_text(json.dumps({**task.config, "world_size": dist.world_size}, indent=2) + "\n")
    module = wrap_ddp(task.model, device, dist)
    row: dict = {}
    steps = 0
    t_start = time.perf_counter()
    for epoch in range(start_epoch, loop.epochs):
        t0 = time.perf_counter()
        items = task.epoch_items(epoch)
        batches = rank_batches(len(items), loop.batch_size, dist.rank, dist.world_size)
        loader = torch.utils.data.DataLoader(items, batch_sampler=[idx for idx, _ in batches],
                                             num_workers=loop.num_workers)
        sums: dict[str, float] = {}
        n_batches = 0
        from tqdm import tqdm

        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{loop.epochs}", file=sys.stderr,
                   disable=not (loop.progress and dist.is_main), leave=False)
        for i, batch in enumerate(_one_line_worker_errors(bar)):
            share = Share(len(batches[i][0]), batches[i][1], dist)
            batch = {k: v.to(device) for k, v in batch.items()}
            boundary = (i + 1) % loop.accumulate == 0 or i + 1 == len(batches)
            sync = module.no_sync() if dist.distributed and not boundary else contextlib.nullcontext()
            with sync:
                objective, terms = task.step(module, batch, share)
                if i % loop.accumulate == 0:
                    task.optimizer.zero_grad(set_to_none=True)
                scaler.scale(objective / loop.accumulate if loop.accumulate > 1 else objective).backward()
            if boundary:
                if loop.grad_clip is not None:
                    scaler.unscale_(task.optimizer)
                    torch.nn.utils.clip_grad_norm_(task.model.parameters(), loop.grad_clip)
                scaler.step(task.optimizer)
                scaler.update()
            values = dist.weighted_mean({k: float(v.detach()) for k, v in terms.items()}, share.weight)
            if not all(math.isfinite(v) for v in values.values()):  # the same on every rank: a global mean
                bar.close()
                raise _non_finite_loss(epoch, i, values, items, loop.batch_size, batch, dist, out_dir, history)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            n_batches += 1
            steps += 1
            if loop.max_steps is not None and steps >= loop.max_steps:
                break
        row = {"epoch": epoch + 1, **{f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()}}
        out_of_time = dist.main_says(loop.max_seconds is not None and time.perf_counter() - t_start >= loop.max_seconds)
        final = epoch + 1 == loop.epochs or out_of_time or (loop.max_steps is not None and steps >= loop.max_steps)
        if (epoch + 1) % loop.val_every == 0 or final:
            try:
                row.update(task.validate(dist))
            except TrainingFailed as exc:  # nothing of this epoch is saved
                raise TrainingFailed(f"epoch {epoch + 1}: {exc}; {_kept(out_dir, history)}") from None
            score = task.score(row, epoch)
            if score > best:
                best = score
                if dist.is_main:
                    task.save(out_dir / "best.pt", epoch=epoch, metrics=row)
        row["seconds"] = time.perf_counter() - t0
        row["world_size"] = dist.world_size
        history.append(row)
        if dist.is_main:
            task.save(out_dir / "last.pt", epoch=epoch, optimizer=task.optimizer.state_dict(),
                      rng=runtime.rng_state(), scaler=scaler.state_dict(), best=best, history=json.dumps(history),
                      metrics=row)
            write_logs(out_dir, history)
            if loop.progress:
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      file=sys.stderr)
        dist.barrier()
        if (loop.max_steps is not None and steps >= loop.max_steps) or out_of_time:
            break
    if dist.is_main:
        plot_curves(history, out_dir / "curves.png")
    dist.barrier()
    return row or (history[-1] if history else {})


def _one_line_worker_errors(batches):
    """The batches of a DataLoader; a ValueError raised in one of its worker processes (a file that cannot be
    read, named) comes back as that one line: torch re-raises it with the worker's whole traceback in its
    message, which the CLI printed as its "one-line" error."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except ValueError as exc:
            text = str(exc)
            if not (text.startswith("Caught ValueError in DataLoader worker") and "\n" in text):
                raise
            getattr(batches, "close", lambda: None)()
            raise ValueError(text.rstrip().rsplit("\n", 1)[-1].removeprefix("ValueError: ")) from None
        yield batch


def _kept(out_dir: Path, history: list[dict]) -> str:
    """What the run folder keeps when a run stops within an epoch (``last.pt`` is written at each epoch's end)."""
    if history:
        return f"{out_dir / 'last.pt'} holds epoch {history[-1]['epoch']}, the last finished one"
    return "no epoch had finished, so no checkpoint was written"


def _non_finite_loss(epoch: int, step: int, values: dict[str, float], items: torch.utils.data.Dataset,
                     global_batch: int, batch: dict, dist: Dist, out_dir: Path, history: list[dict]) -> TrainingFailed:
    """The line of a step whose loss is NaN or infinite: the terms that are, the items of the (global) batch,
    named by ``items.describe(index)`` when the items can say (e.g. ``MOVING onto FIXED``), whether an input
    tensor held NaN or inf (on any rank), and what the run folder keeps; the epoch is not saved."""
    bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
    indices = rank_batches(len(items), global_batch, 0, 1)[step][0]
    describe = getattr(items, "describe", None)
    named = ", ".join(describe(i) for i in indices) if callable(describe) else f"items {indices}"
    finite = all(torch.isfinite(v).all().item() for v in batch.values() if torch.is_floating_point(v))
    if all(dist.gather(finite)):
        why = "its inputs are finite, so the training diverged (a lower learning rate or a gradient clip may help)"
    else:
        why = "an input of the batch holds NaN or inf values"
    return TrainingFailed(f"epoch {epoch + 1}, step {step + 1}: the loss is not finite ({bad}) on the batch of "
                          f"{named}; {why}; stopped before saving the epoch: {_kept(out_dir, history)}")
