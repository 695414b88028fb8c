"""The pairs a command works on: a split's pairs, or only those named with ``--pairs`` (``l2r predict``,
``l2r evaluate``). Pure functions of the dataset (no torch)."""

from __future__ import annotations

from .dataset import Dataset, Pair


def parse_pairs_option(texts: tuple[str, ...]) -> tuple[str, ...] | None:
    """The names of a repeatable, comma-separated ``--pairs``; None when it was not given.

    Raises:
        ValueError: it was given but names no pair (``--pairs ,``).
    """
    if not texts:
        return None
    wanted = tuple(dict.fromkeys(p.strip() for text in texts for p in text.split(",") if p.strip()))
    if not wanted:
        raise ValueError(f"--pairs {','.join(texts)!r}: no pair names given (expected e.g. 0001_0004,0002_0004)")
    return wanted


def select_pairs(ds: Dataset, split: str | None, wanted: tuple[str, ...] | None) -> list[Pair]:
    """Pairs of the split, optionally only those named (``FFFF_0000<--MMMM_0000`` or ``FFFF_MMMM``).

    Raises:
        ValueError: a named pair that is not in the split.
    """
    pairs = ds.pairs(split)
    if wanted is not None and not wanted:
        raise ValueError("--pairs: no pair names given (expected e.g. 0001_0004,0002_0004)")
    if not wanted:
        return list(dict.fromkeys(pairs))

    def names(ps: list[Pair]) -> dict[str, Pair]:
        return {p.key: p for p in ps} | {f"{p.fixed.id}_{p.moving.id}": p for p in ps}

    by_name = names(pairs)
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        here = split or next((n for n, ps in ds.splits.items() if ps == pairs and ps), "default")
        elsewhere = [f"{w} (in split '{n}')" for w in unknown
                     for n, ps in ds.splits.items() if ps is not pairs and w in names(ps)]
        hint = f"; found elsewhere: {', '.join(elsewhere)}; pass --split" if elsewhere else ""
        raise ValueError(f"--pairs: not in split '{here}': {', '.join(unknown)}{hint}")
    return list(dict.fromkeys(by_name[w] for w in wanted))
