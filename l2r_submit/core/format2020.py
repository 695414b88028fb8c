"""The 2020 evaluator's half-resolution field form: the resampling each way (array maths only; the file
format itself is read and written by :mod:`l2r_submit.core.io`)."""

from __future__ import annotations

import numpy as np


def downsample_2020(disp: np.ndarray) -> np.ndarray:
    """Full-resolution (3, I, J, K) field to the 2020 form: each channel ``zoom(c, 0.5, order=2)``, float16.

    Like the original 2020 tooling this uses zoom's default ``mode='constant'``, which sets the last
    plane along each axis to 0 (the sample lands a rounding error past the edge). The round trip is
    therefore accurate only more than ~4 voxels from the far faces; the 2020 protocol scores what it gets.
    """
    from scipy.ndimage import zoom

    return np.stack([zoom(c.astype(np.float32), 0.5, order=2) for c in disp]).astype(np.float16)


def upsample_2020(disp_half: np.ndarray) -> np.ndarray:
    """The 2020 evaluator's upsampling: each channel ``zoom(c, 2, order=2)`` in float32. (3, i, j, k) -> (3, 2i, 2j, 2k)."""
    from scipy.ndimage import zoom

    return np.stack([zoom(c.astype(np.float32), 2, order=2) for c in disp_half])
