"""Translation of a scan onto a reference scan: masked normalised cross-correlation over every integer shift.

The paper registered each external scan to one challenge training image by a translation (ANTs,
``type_of_transform='Translation'``). Here the translation is found without an optimiser that can stop in
a local optimum: the normalised cross-correlation is computed for EVERY integer shift at once with FFTs,
counting only the voxels where both fields of view overlap (the masked NCC of Padfield, "Masked object
registration in the Fourier domain", IEEE TIP 2012). Scans of other cohorts cover other lengths of the
body (liver-only, chest to pelvis...), and the challenge's volumes are padded with air beyond a scan's
ends: a field of view (:func:`field_of_view`: axial slices that are not air alone) keeps padding out of
the score. Without it a neck-to-abdomen scan was put 22 cm too low on test_data's 0004, its thorax over
0004's abdomen (tests/test_cohorts.py, the vertebra test). Steps:

1. both images clipped to a CT window (-250..350 HU: fat, soft tissue, contrast, bone edges) and averaged
   into 4 mm blocks;
2. masked NCC of every shift by FFT; shifts whose overlap is under ``min_overlap`` of the smaller field of
   view are ignored, and so are shifts that move the body's in-plane centre more than ``inplane_mm`` from
   where the two bodies' centres coincide (the body, HU > -500, is centred in every axial slice of a CT);
3. the best 4 mm shift refined at 2 mm over its 27 neighbours (NCC over every voxel where both have data).

Shifts are in voxels of the 2 mm grid: output voxel p of the reference grid takes source voxel p + shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW_HU = (-250.0, 350.0)
BODY_HU = -500.0
PADDING_HU = -1000.0


@dataclass(frozen=True)
class AlignConfig:
    """Settings of the search.

    Attributes:
        factor: block size of the coarse search (2 at 2 mm = 4 mm blocks).
        min_overlap: least overlap, as a fraction of the smaller volume, for a shift to count.
        inplane_mm: largest in-plane distance between the bodies' centres after the shift (mm).
        axial_axis: the array axis that runs head-feet (shared by source and reference after reorientation).
    """

    factor: int = 2
    min_overlap: float = 0.3
    inplane_mm: float = 40.0
    axial_axis: int = 2


def _blocks(x: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``-cubed blocks. Shape: (I, J, K) -> (I//f, J//f, K//f) float64."""
    x = x.astype(np.float64)
    if factor > 1:
        shape = [n // factor for n in x.shape]
        x = x[:shape[0] * factor, :shape[1] * factor, :shape[2] * factor]
        x = x.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))
    return x


def _slab(image: np.ndarray, axial_axis: int) -> tuple[int, int]:
    """First and one-past-last axial slice that is not air alone (<= -1000 HU); (0, 0) if there is none."""
    other = tuple(a for a in range(3) if a != axial_axis)
    keep = np.nonzero((image > PADDING_HU).any(axis=other))[0]
    return (int(keep[0]), int(keep[-1]) + 1) if keep.size else (0, 0)


def field_of_view(image: np.ndarray, axial_axis: int) -> np.ndarray:
    """Where the scan holds data: the axial slices from the first to the last that is not air alone
    (<= -1000 HU). Padding beyond a scan's ends looks like that; a real slice always crosses the body.

    Shape: (I, J, K) -> (I, J, K) bool.
    """
    lo, hi = _slab(image, axial_axis)
    keep = np.zeros(image.shape[axial_axis], bool)
    keep[lo:hi] = True
    view = [None, None, None]
    view[axial_axis] = slice(None)
    return np.broadcast_to(keep[tuple(view)], image.shape)


def _prepare(image: np.ndarray, factor: int, axial_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Windowed image and field of view, ``factor``-block averaged (the mask: blocks wholly inside)."""
    x = _blocks(np.clip(image.astype(np.float32), *WINDOW_HU), factor)
    mask = _blocks(field_of_view(image, axial_axis), factor) > 0.999
    return x, mask


def masked_ncc(reference: np.ndarray, source: np.ndarray, reference_mask: np.ndarray,
               source_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NCC and overlap size of every integer shift, over the voxels inside both masks (fields of view).

    Entry t (taken modulo the FFT size per axis, so negative shifts sit at the end) compares
    ``reference[p]`` with ``source[p + t]`` over the voxels p where both masks are set.

    Shape: (I, J, K) and (I', J', K'), masks the same -> two arrays of shape (I + I' - 1, J + J' - 1,
    K + K' - 1) (rounded up to fast FFT sizes).
    """
    from scipy import fft

    size = [fft.next_fast_len(a + b - 1, real=True) for a, b in zip(reference.shape, source.shape)]
    mask_r, mask_s = reference_mask.astype(np.float64), source_mask.astype(np.float64)
    reference, source = reference * mask_r, source * mask_s

    def spec(x: np.ndarray) -> np.ndarray:
        return fft.rfftn(x, size, workers=-1)

    r1, r2, rm = np.conj(spec(reference)), np.conj(spec(reference ** 2)), np.conj(spec(mask_r))
    s1, s2, sm = spec(source), spec(source ** 2), spec(mask_s)

    def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return fft.irfftn(a * b, size, workers=-1)

    n = np.maximum(np.round(corr(rm, sm)), 0.0)
    sum_r, sum_s = corr(r1, sm), corr(rm, s1)
    safe = np.maximum(n, 1.0)
    cov = corr(r1, s1) - sum_r * sum_s / safe
    var_r = np.maximum(corr(r2, sm) - sum_r ** 2 / safe, 0.0)
    var_s = np.maximum(corr(rm, s2) - sum_s ** 2 / safe, 0.0)
    denom = np.sqrt(var_r * var_s)
    ncc = np.where((denom > 1e-6 * safe) & (n > 0), cov / np.maximum(denom, 1e-12), -np.inf)
    return ncc, n


def _shifts(size: tuple[int, ...], source_shape: tuple[int, ...]) -> list[np.ndarray]:
    """Shift value of each FFT index per axis: index i < I' is shift i, the others i - size (negative)."""
    return [np.where(np.arange(m) < n, np.arange(m), np.arange(m) - m) for m, n in zip(size, source_shape)]


def body_centre(image: np.ndarray) -> np.ndarray:
    """Mean voxel index of the body (HU > -500). Shape: (I, J, K) -> 3-vector."""
    idx = np.nonzero(image > BODY_HU)
    if not idx[0].size:
        return (np.array(image.shape) - 1) / 2.0
    return np.array([i.mean() for i in idx])


def find_shift(reference: np.ndarray, source: np.ndarray, cfg: AlignConfig = AlignConfig()) -> tuple[np.ndarray, float]:
    """The integer shift (2 mm voxels) that best aligns ``source`` onto ``reference``, and its NCC.

    Shape: reference (I, J, K), source (I', J', K'), both 2 mm HU arrays in the same axis orientation ->
    (3,) int shift with ``aligned[p] = source[p + shift]``, and a float.

    Raises:
        ValueError: no shift reaches the least overlap (the volumes are too small).
    """
    f = cfg.factor
    (ref_c, ref_m), (src_c, src_m) = _prepare(reference, f, cfg.axial_axis), _prepare(source, f, cfg.axial_axis)
    if not ref_m.any() or not src_m.any():
        raise ValueError("an image is air alone (no slice above -1000 HU)")
    ncc, n = masked_ncc(ref_c, src_c, ref_m, src_m)
    least = cfg.min_overlap * min(ref_m.sum(), src_m.sum())
    score = np.where(n >= least, ncc, -np.inf)
    expected = (body_centre(source) - body_centre(reference)) / f  # shift that puts the bodies' centres together
    limit = cfg.inplane_mm / (2.0 * f)
    for axis, values in enumerate(_shifts(score.shape, src_c.shape)):
        if axis == cfg.axial_axis:
            continue
        bad = np.abs(values - expected[axis]) > limit
        view = [None, None, None]
        view[axis] = slice(None)
        score = np.where(bad[tuple(view)], -np.inf, score)
    if not np.isfinite(score).any():
        raise ValueError("no translation overlaps the reference enough (volumes too small or empty)")
    best = np.unravel_index(int(np.argmax(score)), score.shape)
    coarse = np.array([values[i] for values, i in zip(_shifts(score.shape, src_c.shape), best)]) * f
    return refine(reference, source, coarse, cfg.axial_axis)


def _box_ncc(reference: np.ndarray, source: np.ndarray, shift: np.ndarray) -> float:
    """NCC of ``reference[p]`` and ``source[p + shift]`` over every voxel where both exist. (Every other voxel
    would be 8 times faster but misses a step edge that falls between two sampled voxels: a one-voxel shift
    can then score 1.0.)"""
    ref_sl, src_sl = [], []
    for n_r, n_s, t in zip(reference.shape, source.shape, shift):
        lo, hi = max(0, -t), min(n_r, n_s - t)
        if hi <= lo:
            return -np.inf
        ref_sl.append(slice(lo, hi))
        src_sl.append(slice(lo + t, hi + t))
    a = reference[tuple(ref_sl)].astype(np.float64).ravel()
    b = source[tuple(src_sl)].astype(np.float64).ravel()
    a -= a.mean()
    b -= b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denom) if denom > 0 else -np.inf


def refine(reference: np.ndarray, source: np.ndarray, start: np.ndarray, axial_axis: int) -> tuple[np.ndarray, float]:
    """The best of ``start`` and its 26 neighbours at full resolution (windowed images, each cut to its field
    of view along the body axis).

    Shape: (I, J, K), (I', J', K'), (3,) -> (3,) int, float.
    """
    (r0, r1), (s0, s1) = _slab(reference, axial_axis), _slab(source, axial_axis)
    cut = lambda lo, hi: tuple(slice(lo, hi) if a == axial_axis else slice(None) for a in range(3))  # noqa: E731
    ref_w = np.clip(reference[cut(r0, r1)].astype(np.float32), *WINDOW_HU)
    src_w = np.clip(source[cut(s0, s1)].astype(np.float32), *WINDOW_HU)
    offset = np.zeros(3, int)
    offset[axial_axis] = r0 - s0  # shift between the cut arrays = shift between the whole ones + r0 - s0
    best, best_score = np.asarray(start, int), -np.inf
    for step in np.ndindex(3, 3, 3):
        shift = np.asarray(start, int) + np.array(step) - 1
        score = _box_ncc(ref_w, src_w, shift + offset)
        if score > best_score:
            best, best_score = shift, score
    return best, float(best_score)
