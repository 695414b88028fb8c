"""Which pairs to predict and which files each writes: the checks made before any work.

Pure functions of the dataset, the options and the volume shape (no torch): output names per pair and
their collisions, and the shapes a format accepts (pair selection by name: :mod:`l2r_submit.core.selection`;
the smallest volume a network takes: :func:`l2r_submit.nets.config.check_min_shape`).
"""

from __future__ import annotations

from pathlib import Path

from ..core import disp_files, versions
from ..core.dataset import Pair


def plan_outputs(out_dir: Path, pairs: list[Pair], fmt: str, names: str) -> dict[Pair, list[Path]]:
    """Each pair's output files.

    Raises:
        ValueError: two different pairs (e.g. the same case id in two folders) map to one file name.
    """
    plan: dict[Pair, list[Path]] = {}
    owner: dict[Path, Pair] = {}
    for pair in pairs:
        if names == "short":
            check_short_name(pair)
        plan[pair] = expected_outputs(out_dir, pair, fmt, names)
        for path in plan[pair]:
            other = owner.setdefault(path, pair)
            if other != pair:
                raise ValueError(f"{path.name}: two pairs would write this file: {other.fixed.image} <- "
                                 f"{other.moving.image} and {pair.fixed.image} <- {pair.moving.image} "
                                 "(same case ids in different folders); predict them into separate --out folders"
                                 if (other.fixed.modality, other.moving.modality)
                                 == (pair.fixed.modality, pair.moving.modality) else
                                 "(the short name has no modality index); use --names long")
    return plan


def check_short_name(pair: Pair) -> None:
    """``--names short`` only for a pair whose short name an evaluator reads: the same modality, or fixed
    ``_0000`` <- moving ``_0001`` (:meth:`l2r_submit.core.versions.Version.stems`); the other direction was
    written as a name that no version looks for, and its field then counted as missing.

    Raises:
        ValueError: naming the pair and what to use instead.
    """
    fixed, moving = pair.fixed, pair.moving
    short = f"disp_{fixed.id}_{moving.id}"
    if not any(short in versions.get(v).stems(fixed.id, fixed.modality, moving.id, moving.modality)
               for v in ("2025", "2024", "2022")):
        raise ValueError(f"--names short: {pair.key} (modality {fixed.modality} <- {moving.modality}): no evaluator "
                         "reads a short name for it (only for one modality, or _0000 <- _0001); use --names long "
                         "or both")


def check_format_shape(fmt: str, shape: tuple[int, ...], source: object) -> None:
    """The 2020 half-resolution format needs even sizes (its evaluator upsamples by exactly 2).

    Raises:
        ValueError: an odd size with ``npz2020``.
    """
    if fmt == "npz2020" and any(n % 2 for n in shape):
        raise ValueError(f"{source}: --format npz2020 needs even volume sizes (the 2020 evaluator upsamples the "
                         f"half-resolution field by 2), the volumes are {tuple(shape)}; use --format nii.gz or npz")


def expected_outputs(out_dir: Path, pair: Pair, fmt: str, names: str) -> list[Path]:
    """The files one pair's field is written to, in ``out_dir``."""
    ext = disp_files.disp_extension(fmt)
    return [out_dir / (stem + ext) for stem in disp_files.disp_names(pair.fixed.id, pair.moving.id, names,
                                                               pair.fixed.modality, pair.moving.modality)]


def superseded_outputs(before: object, outputs: list[str], out_dir: Path) -> list[str]:
    """Remove the field files an earlier run wrote for a pair (its run.json entry's ``outputs``) under
    names that the pair's new field no longer has (another ``--format`` or ``--names``), once the new
    field is written: left beside it, ``l2r evaluate`` would find two candidate fields for the pair.
    Only plain ``disp_*.nii.gz``/``disp_*.npz`` names directly in ``out_dir`` are touched. Returns the
    names removed."""
    old = before.get("outputs") if isinstance(before, dict) else None
    removed = []
    for name in old if isinstance(old, list) else []:
        path = out_dir / str(name)
        if (name not in outputs and isinstance(name, str) and Path(name).name == name
                and name.startswith("disp_") and name.endswith((".nii.gz", ".npz")) and path.is_file()):
            try:
                path.unlink()
                removed.append(name)
            except OSError:
                continue
    return removed
