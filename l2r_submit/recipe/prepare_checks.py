"""The checks of ``l2r cohort prepare`` before work is done: where the output goes, what a volume's header
and values must be, and which settings a written case depends on (a rerun with other settings makes it again).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.folders import same_file
from ..core.io import Volume
from ..registration.run_record import sha256
from .align import BODY_HU
from .cohorts import Layout


def check_volume(path: Path, vol: Volume) -> None:
    """A volume the geometry can work with: an invertible affine and finite values.

    Raises:
        ValueError: one line naming the file and the problem.
    """
    axes = vol.affine[:3, :3]
    if not np.isfinite(vol.affine).all():
        raise ValueError(f"{path}: its affine holds NaN or inf values")
    lengths = np.linalg.norm(axes, axis=0)
    if (lengths < 1e-6).any():
        raise ValueError(f"{path}: its affine is singular (array axis {int(np.argmin(lengths))} has no direction "
                         "in space): fix the header's sform/qform")
    if abs(np.linalg.det(axes)) < 1e-6 * float(np.prod(lengths)):
        raise ValueError(f"{path}: its affine is singular (two array axes point the same way): fix the header")
    bad = int(np.size(vol.array) - np.count_nonzero(np.isfinite(vol.array)))
    if bad:
        raise ValueError(f"{path}: holds non-finite values (NaN or inf) in {bad} voxels")


def check_ct(path: Path, array: np.ndarray) -> None:
    """A reference must be a CT in HU. Every CT holds air (about -1000 HU) around the body, so a volume
    without a value under -500 HU is not one (a label map, 0..13; raw scanner values, 0..4095).

    Raises:
        ValueError: one line naming the file and its value range.
    """
    low, high = float(array.min()), float(array.max())
    if low > BODY_HU:
        labels = low >= 0 and high <= 255 and np.array_equal(array, np.round(array))
        raise ValueError(f"{path}: not a CT in HU (values {low:g}..{high:g}, none below {BODY_HU:g}, where air "
                         f"is{': a label map?' if labels else ''}); --reference must be a challenge image")


def check_out_outside_src(src: Path, out: Path) -> None:
    """The prepared cohort must not go into its source folder (the next run would read it as source cases).

    Raises:
        ValueError: ``out`` is ``src`` or lies inside it (one line).
    """
    if any(same_file(folder, src) for folder in (out, *out.resolve().parents)):
        raise ValueError(f"{out}: --out is the cohort's folder {src} or lies inside it (the written cases would "
                         "be read as source cases); choose a folder outside it")


def case_settings(layout: Layout, reference: Path) -> dict:
    """What a written case depends on besides its source files: the layout, its label map and the reference
    (its content's sha256; the path is kept for the reader). Recorded with each case of ``integrity.json``."""
    return {"layout": layout.name, "label_map": {str(k): v for k, v in sorted(layout.label_map.items())},
            "reference": str(reference.resolve()), "reference_sha256": sha256(reference)}


def other_settings(recorded: dict | None, current: dict) -> str:
    """What differs between a case's recorded settings and this run's ('' when nothing does)."""
    if not isinstance(recorded, dict):
        return "version (no settings recorded)"
    names = {"layout": "layout", "label_map": "label map", "reference_sha256": "reference"}
    return " and ".join(text for key, text in names.items() if recorded.get(key) != current[key])


def legacy_settings(top: dict, layout: Layout, reference: Path, current: dict) -> dict | None:
    """The settings of the cases an older version wrote (it recorded none per case), where its
    integrity.json tells them: a layout with a fixed label map (not ``nifti``, whose map the user gave) and
    the same reference path as now; then ``current``. None when they cannot be told (those cases are made
    again): resampling a cohort again costs hours, so a folder that can be trusted is kept."""
    ref = top.get("reference")
    if top.get("layout") != layout.name or layout.name == "nifti" or not isinstance(ref, str):
        return None
    return current if Path(ref).resolve() == reference.resolve() else None
