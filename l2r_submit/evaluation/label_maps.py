"""Label maps as the evaluator reads them: each once per run (:class:`LabelCache`), with the values present.

Shape: every map (I, J, K) int32/int64 as :func:`l2r_submit.core.io.read_labels` gives it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..core import io
from ..core.dataset import Pair


class LabelCache:
    """Label maps read once for a sequence of pairs, each kept only until the last pair that uses it.

    Shape: every map (I, J, K) int32/int64 as :func:`l2r_submit.core.io.read_labels` gives it.
    """

    def __init__(self, pairs: list[Pair]) -> None:
        self._left = Counter(path for p in pairs for path in (p.fixed.label, p.moving.label))
        self._maps: dict[Path, tuple[np.ndarray, list[int]]] = {}

    def get(self, path: Path) -> tuple[np.ndarray, list[int]]:
        """The label map of ``path`` and the values present in it; forgets it after its last use.

        Raises:
            ValueError: as :func:`l2r_submit.core.io.read_labels` (nothing is kept then).
        """
        entry = self._maps.get(path)
        if entry is None:
            entry = read_labels(path)
        self._left[path] -= 1
        if self._left[path] > 0:
            self._maps[path] = entry
        else:
            self._maps.pop(path, None)
        return entry


def read_labels(path: Path) -> tuple[np.ndarray, list[int]]:
    """A label map (:func:`l2r_submit.core.io.read_labels`) and the values present in it."""
    seg = io.read_labels(path)
    return seg, _present_labels(seg)


def _present_labels(seg: np.ndarray) -> list[int]:
    """The values present in a label map (a bincount when they are small, else a sort)."""
    lo, hi = int(seg.min()), int(seg.max())
    if lo >= 0 and hi < 1 << 20:
        return np.flatnonzero(np.bincount(seg.ravel())).tolist()
    return np.unique(seg).tolist()
