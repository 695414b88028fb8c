"""The pairs a command works on: a split's pairs, or only those named with ``--pairs`` (``l2r predict``,
``l2r evaluate``). Pure functions of the dataset (no torch)."""

from __future__ import annotations

from .dataset import Dataset, Pair
from .disp_files import disp_names


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


def pair_names(pair: Pair) -> tuple[str, ...]:
    """The names ``--pairs`` accepts for ``pair``: its case key ``FFFF_ffff<--MMMM_mmmm``, its long field name
    without ``disp_`` and extension, ``FFFF_ffff_MMMM_mmmm``, and the short ``FFFF_MMMM`` (subjects only:
    ambiguous when one subject pair has several channel pairs, as ThoraxCBCT's ``0011_0001 <- 0011_0000``
    and ``0011_0002 <- 0011_0000``)."""
    f, m = pair.fixed, pair.moving
    long, short = (n.removeprefix("disp_") for n in disp_names(f.id, m.id, "both", f.modality, m.modality))
    return pair.key, long, short


def select_pairs(ds: Dataset, split: str | None, wanted: tuple[str, ...] | None) -> list[Pair]:
    """Pairs of the split, optionally only those named (:func:`pair_names`).

    Raises:
        ValueError: a named pair that is not in the split, or a short name that names several of its pairs.
    """
    pairs = ds.pairs(split)
    if wanted is not None and not wanted:
        raise ValueError("--pairs: no pair names given (expected e.g. 0001_0004,0002_0004)")
    if not wanted:
        return list(dict.fromkeys(pairs))

    def names(ps: list[Pair]) -> dict[str, list[Pair]]:
        out: dict[str, list[Pair]] = {}
        for p in dict.fromkeys(ps):
            for name in pair_names(p):
                if p not in out.setdefault(name, []):
                    out[name].append(p)
        return out

    by_name = names(pairs)
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        here = split or next((n for n, ps in ds.splits.items() if ps == pairs and ps), "default")
        elsewhere = [f"{w} (in split '{n}')" for w in unknown
                     for n, ps in ds.splits.items() if ps is not pairs and w in names(ps)]
        hint = f"; found elsewhere: {', '.join(elsewhere)}; pass --split" if elsewhere else ""
        raise ValueError(f"--pairs: not in split '{here}': {', '.join(unknown)}{hint}")
    for w in wanted:
        if len(by_name[w]) > 1:
            keys = [p.key for p in by_name[w]]
            raise ValueError(f"--pairs {w}: names {len(keys)} pairs ({', '.join(keys)}); name one by its case "
                             f"key or as FFFF_ffff_MMMM_mmmm (e.g. {pair_names(by_name[w][0])[1]})")
    return list(dict.fromkeys(by_name[w][0] for w in wanted))
