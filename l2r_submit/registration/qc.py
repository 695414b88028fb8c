"""Visual QC: one PNG per pair with mid-slices of fixed, moving and warped moving, label contours, and
the Jacobian determinant with folds (J <= 0) marked."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..core import disp_files, io
from ..core.dataset import Pair, qc_name
from ..evaluation import metrics
from .run_record import error_line


QC_WINDOW_HU = (-160.0, 240.0)  # CT shown as a soft-tissue window (W400 / L40)
AIR_PERCENTILE_HU = -500.0  # an image whose 1st percentile is at or below this holds air in HU: CT


def display_range(volume: np.ndarray) -> tuple[float, float]:
    """The grey levels a QC panel maps to black and white: the soft-tissue window for a CT in HU (its 1st
    percentile is air, at or below ``AIR_PERCENTILE_HU``); otherwise the image's own 1st and 99th
    percentiles, so an MR image (or a CT stored with an offset) is not one saturated value.
    Shape: (I, J, K) -> (low, high)."""
    sample = volume[::4, ::4, ::4]
    lo, hi = (float(v) for v in np.percentile(sample, (1.0, 99.0)))
    if lo <= AIR_PERCENTILE_HU:
        return QC_WINDOW_HU
    return lo, max(hi, lo + 1e-6)


def _warp_image_np(moving: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """``moving`` pulled by ``disp``; outside it, the image's lowest value (air for CT and MR alike)."""
    from scipy.ndimage import map_coordinates

    coords = disp.astype(np.float64)
    for axis, n in enumerate(moving.shape):
        shape = [1, 1, 1]
        shape[axis] = n
        coords[axis] += np.arange(n).reshape(shape)
    return map_coordinates(moving, coords, order=1, cval=float(moving.min()))


def write_qc(path: Path, pair: Pair, disp: np.ndarray) -> Path:
    """Write the QC picture of one pair.

    Rows: the axial (middle of axis 2) and coronal (middle of axis 1) slices. Columns: fixed, moving,
    warped moving (each with its label contours when labels exist; grey levels by :func:`display_range`,
    the warped image as the moving one), and det(J) (blue < 1 < red, folds
    black). Shape: disp (3, I, J, K) voxels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = io.read_volume(pair.fixed.image, np.float32).array
    moving = io.read_volume(pair.moving.image, np.float32).array
    warped = _warp_image_np(moving, disp)
    ranges = {"fixed": display_range(fixed), "moving": display_range(moving)}
    segs = {}
    if pair.fixed.label.exists() and pair.moving.label.exists():
        segs["fixed"] = io.read_labels(pair.fixed.label)
        segs["moving"] = io.read_labels(pair.moving.label)
        segs["warped"] = metrics.warp_labels(segs["moving"], disp)
    jac = np.pad(metrics.jacobian_determinant(disp), 2, constant_values=1.0)
    folds = float((jac <= 0).mean())
    views = [("axial", 2), ("coronal", 1)]
    fig, axes = plt.subplots(len(views), 4, figsize=(13, 3.4 * len(views)), squeeze=False)
    for row, (view, axis) in enumerate(views):
        mid = fixed.shape[axis] // 2

        def cut(vol: np.ndarray) -> np.ndarray:
            return np.take(vol, mid, axis=axis).T[::-1]

        for col, (name, vol) in enumerate((("fixed", fixed), ("moving", moving), ("warped", warped))):
            ax = axes[row, col]
            lo, hi = ranges["fixed" if name == "fixed" else "moving"]
            ax.imshow(cut(np.clip(vol, lo, hi)), cmap="gray", vmin=lo, vmax=hi)
            if name in segs:
                ax.contour(cut(segs[name]), levels=np.arange(0.5, 14.5), linewidths=0.6, cmap="tab20")
            ax.set_title(f"{name} ({view})", fontsize=9)
            ax.axis("off")
        ax = axes[row, 3]
        im = ax.imshow(cut(jac), cmap="coolwarm", vmin=0.0, vmax=2.0)
        fold_slice = cut((jac <= 0).astype(float))
        if fold_slice.any():
            ax.contourf(fold_slice, levels=[0.5, 1.5], colors="black")
        ax.set_title(f"det J ({view}); folds {folds:.2e}", fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.suptitle(f"{pair.key}", fontsize=10)
    fig.tight_layout()
    io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=70))
    plt.close(fig)
    return path


def qc_path(qc_dir: Path, pair: Pair) -> Path:
    """Where ``--qc`` puts a pair's picture."""
    return qc_dir / qc_name(pair.key)


def draw_missing_qc(qc_dir: Path, fmt: str, shape: tuple[int, ...], skipped: list[Pair], entries: dict,
                    plan: dict[Pair, list[Path]]) -> int:
    """``--qc`` for pairs whose field is kept: a picture that run.json (``entries``) does not record as drawn
    from that field at that path (none yet, or one of an earlier field: a pair redone without ``--qc``) is
    drawn from the field file (``plan``: the pair's files, format ``fmt``), not from a new registration. A
    field that cannot be read is noted and left. Returns the number drawn."""
    drawn = 0
    for pair in skipped:
        path, entry = qc_path(qc_dir, pair), entries[pair.key]
        if entry.get("qc") == str(path.absolute()) and path.is_file():
            continue
        try:
            disp = disp_files.read_disp(plan[pair][0], shape, "2020" if fmt == "npz2020" else "2025")
            write_qc(path, pair, disp)
        except (OSError, ValueError) as exc:
            print(f"note: --qc: {pair.key}: no picture ({error_line(exc)})", file=sys.stderr)
            continue
        entry["qc"] = str(path.absolute())
        drawn += 1
    return drawn
