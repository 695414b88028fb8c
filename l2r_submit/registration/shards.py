"""Pairs shared out over N ranks (processes, each on its own GPU or its share of the CPU cores).

Rank K of N predicts every N-th selected pair from the K-th and records them in its own file,
``run.shardKofN.json``, beside the fields. When a rank ends it merges, under a lock, every rank's
latest record into ``run.json``; the last rank to end therefore leaves the complete one, and
``run.json["shards"]`` says which ranks had finished at each merge. A rank that was killed leaves its
record as far as it got: the next run (sharded or not) reads every record (:func:`previous_pairs`),
keeps the pairs finished and redoes the others.

Ranks come from ``--shard K/N`` or, under ``torchrun``, from its ``RANK`` and ``WORLD_SIZE``
(read once, by the command line). No process group is needed: ranks share only the output folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Mapping, Sequence, TypeVar

T = TypeVar("T")

_RECORD = re.compile(r"^run\.shard(\d+)of(\d+)\.json$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N), 0 <= K < N.

    Raises:
        ValueError: not two integers K/N with 0 <= K < N.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/2 and 1/2")
    return int(match[1]), int(match[2])


def from_environment(env: Mapping[str, str]) -> tuple[int, int] | None:
    """torchrun's rank and world size (``RANK``, ``WORLD_SIZE``), or None outside torchrun or for one rank.

    Raises:
        ValueError: values that are not a rank below the world size.
    """
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    shard = parse_shard(f"{env['RANK']}/{env['WORLD_SIZE']}") if env["WORLD_SIZE"].strip() != "1" else None
    return shard


def shard_pairs(pairs: Sequence[T], k: int, n: int) -> list[T]:
    """Rank ``k`` of ``n``'s pairs: every n-th from the k-th (the split is the same in every rank)."""
    return list(pairs[k::n])


def shard_name(shard: tuple[int, int]) -> str:
    return f"{shard[0]}/{shard[1]}"


def record_name(shard: tuple[int, int] | None) -> str:
    """The file a rank records its pairs in: ``run.json`` without shards."""
    return "run.json" if shard is None else f"run.shard{shard[0]}of{shard[1]}.json"


def threads_per_rank(threads: int | None, shard: tuple[int, int] | None, device_type: str) -> int | None:
    """CPU threads for one rank: as asked; else, for N ranks on CPU, the available cores shared out
    (at least one each); else None (torch's default)."""
    if threads is not None or shard is None or device_type != "cpu":
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // shard[1])


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pairs"), dict) else None


def set_aside_unreadable(out_dir: Path) -> list[str]:
    """Rename each run record in ``out_dir`` that is a file but not a readable record (truncated, not
    JSON, another JSON) to ``NAME.unreadable-<time>`` and return one note per file: the pairs only it
    recorded are then redone, and the next run.json, which keeps every readable entry, does not silently
    replace what it held. Records are written atomically, so such a file was damaged outside a run. Done
    under the lock of :func:`merge` (ranks may start together), and only when a damaged record is seen."""
    def damaged() -> list[Path]:
        paths = [out_dir / "run.json", *(p for p in out_dir.glob("run.shard*of*.json") if _RECORD.match(p.name))]
        return [p for p in paths if p.is_file() and _read(p) is None]

    if not damaged():
        return []
    notes = []
    try:
        with open(out_dir / ".run.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for path in damaged():  # again under the lock: another rank may have set it aside already
                stem = f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
                names = (path.with_name(stem + (f"-{n}" if n else "")) for n in range(1000))
                kept = next(k for k in names if not k.exists())  # an earlier copy is never replaced
                os.replace(path, kept)
                notes.append(f"{path}: not a readable run record (truncated or not a run.json); kept as "
                             f"{kept.name}, the pairs only it recorded are redone")
    except OSError as exc:
        notes.append(f"{out_dir}: a damaged run record cannot be set aside ({exc.strerror or exc}); "
                     "the pairs only it recorded are redone")
    return notes


def _records(out_dir: Path) -> list[tuple[Path, dict]]:
    """run.json and every shard record in ``out_dir``, oldest first (by modification time)."""
    paths = [out_dir / "run.json", *(p for p in out_dir.glob("run.shard*of*.json") if _RECORD.match(p.name))]
    found = []
    for path in paths:
        try:
            found.append((path.stat().st_mtime_ns, path))
        except OSError:
            continue
    return [(p, d) for _, p in sorted(found) if (d := _read(p)) is not None]


def previous_pairs(out_dir: Path) -> dict:
    """The per-pair entries of earlier runs in ``out_dir``: run.json's, then each shard record's own pairs
    (those it selected), the newer file winning ({} when there is none)."""
    pairs: dict = {}
    for path, data in _records(out_dir):
        if path.name == "run.json":
            pairs.update(data["pairs"])
        else:
            own = set(data.get("selected") or [])
            pairs.update({k: v for k, v in data["pairs"].items() if k in own})
    return pairs


def merge(out_dir: Path, n: int) -> list[str] | None:
    """Merge the latest record of each of the ``n`` ranks into ``run.json`` (under a lock on
    ``out_dir/.run.lock``): every earlier entry (run.json's), then each rank's own pairs; ``selected`` is the union
    of the ranks'; ``shards`` says which ranks had finished (their record holds ``run_seconds``).
    Returns the shard names merged, or None when run.json could not be written (a one-line error printed).
    """
    import sys

    from ..core.io import atomic_write

    try:
        with open(out_dir / ".run.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            ranks = {}
            for k in range(n):
                data = _read(out_dir / record_name((k, n)))
                if data is not None:
                    ranks[k] = data
            if not ranks:
                return []
            first = ranks[min(ranks)]
            merged = {key: value for key, value in first.items()
                      if key not in ("pairs", "selected", "shard", "run_seconds", "seconds_per_pair")}
            merged["pairs"] = previous_pairs(out_dir)
            merged["selected"] = [key for k in sorted(ranks) for key in ranks[k].get("selected", [])]
            merged["shards"] = {shard_name((k, n)): {"finished": "run_seconds" in ranks[k] if k in ranks else False,
                                                     "device": ranks[k].get("device") if k in ranks else None,
                                                     "run_seconds": ranks[k].get("run_seconds") if k in ranks else None}
                                for k in range(n)}
            text = json.dumps(merged, indent=2) + "\n"
            atomic_write(out_dir / "run.json", lambda tmp: Path(tmp).write_text(text))
    except OSError as exc:
        print(f"error: {out_dir / 'run.json'}: cannot be written ({exc.strerror or exc})", file=sys.stderr)
        return None
    return [shard_name((k, n)) for k in sorted(ranks)]
