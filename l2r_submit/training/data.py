"""Training data: the paper's pairing scheme, random crops, and pluggable label sources.

Volumes are read lazily in DataLoader workers, one pair at a time; nothing holds the whole dataset.
Every random choice comes from a seed derived from (run seed, epoch, index), so a resumed run sees
exactly the pairs and crops an uninterrupted run would have seen, whatever the number of workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from ..core import folders, io
from ..core.dataset import Case
from ..nets.inputs import preprocess

LabelSource = Callable[[Case], "Path | None"]
"""Given a case, the path of its label map, or None when the case has none."""


def dataset_labels(case: Case) -> Path | None:
    """The labels the dataset JSON names (true labels)."""
    return case.label if case.label.exists() else None


def folder_labels(folder: str | Path) -> LabelSource:
    """Labels from another source, e.g. pseudo-labels of a segmentation network: FOLDER/<image file name>."""
    root = Path(folder)

    def source(case: Case) -> Path | None:
        path = root / case.image.name
        return path if path.exists() else None

    return source


def check_label_folder(cases: Sequence[Case], folder: str | Path) -> None:
    """Before training with :func:`folder_labels`: the folder exists, holds a label map for every training
    image (else those pairs train without the Dice term: the paper's noisy-label step would quietly be
    unsupervised), and is not the images' own folder; the first map holds no negative value (CT, not labels).

    Raises:
        ValueError: one line naming the folder and the first file at fault.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: --labels-dir is not a folder")
    missing = [c.image.name for c in cases if not (root / c.image.name).is_file()]
    if missing:
        raise ValueError(f"{root}: --labels-dir has no label map for {len(missing)} of the {len(cases)} training "
                         f"images (first: {missing[0]}); the maps are named like the images")
    same = [c.image for c in cases if folders.same_file(root / c.image.name, c.image)]
    if same:
        raise ValueError(f"{root}: --labels-dir names the training images themselves ({same[0]}); give the folder "
                         "of their label maps")
    if cases:
        first = root / cases[0].image.name
        low = int(np.min(io.read_volume(first, np.float32).array))
        if low < 0:
            raise ValueError(f"{first}: not a label map (it holds {low}; labels are 0 and up): does --labels-dir "
                             "name a folder of images?")


def no_labels(case: Case) -> None:
    """Unsupervised training: no labels."""
    return None


def epoch_pairs(n_cases: int, epoch: int, seed: int) -> list[tuple[int, int]]:
    """The paper's scheme: every case is the moving image once per epoch, with a random other fixed case.

    Returns:
        (moving index, fixed index) pairs in a shuffled order.

    Raises:
        ValueError: fewer than two cases.
    """
    if n_cases < 2:
        raise ValueError(f"training needs at least 2 images, got {n_cases}")
    rng = np.random.default_rng([seed, epoch, 0])
    pairs = []
    for moving in rng.permutation(n_cases):
        fixed = int(rng.integers(n_cases - 1))
        pairs.append((int(moving), fixed + (fixed >= moving)))
    return pairs


def random_crop_box(shape: Sequence[int], crop: Sequence[int] | None, rng: np.random.Generator) -> tuple[slice, ...]:
    """The same random box for both images of a pair; the whole axis where the crop is larger."""
    if crop is None:
        return tuple(slice(None) for _ in shape)
    box = []
    for n, c in zip(shape, crop):
        c = min(c, n)
        start = int(rng.integers(n - c + 1))
        box.append(slice(start, start + c))
    return tuple(box)


def keep_classes(seg: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """``seg`` with every value other than 0 and ``classes`` set to 0 (background), the rule of the training
    loss for a label the dataset does not score (300, -1): ``l2r evaluate`` ignores such values, where the
    loss's one-hot counted them as the nearest class (300 as the left adrenal gland).

    Shape: (I, J, K) integers -> the same.
    """
    table = np.zeros(max(classes, default=0) + 1, seg.dtype)
    table[list(classes)] = list(classes)
    inside = (seg >= 0) & (seg < len(table))
    return np.where(inside, table[np.clip(seg, 0, len(table) - 1)], 0).astype(seg.dtype, copy=False)


class PairDataset(TorchDataset):
    """One epoch of training pairs.

    Items: ``{"moving", "fixed"}`` (C, I, J, K) float32, the C = ``n_windows`` CT windows of
    :func:`l2r_submit.nets.inputs.preprocess` computed on the WHOLE image before cropping (the min-max of the
    paper is per image), and, when both cases have labels,
    ``{"moving_seg", "fixed_seg"}`` (1, I, J, K) int64, all cropped with one box. A batch of pairs with
    labels and pairs without cannot be mixed: use one label source for a run. ``classes``: the label ids
    trained; other values are background (:func:`keep_classes`); None: the label maps as they are.
    """

    def __init__(self, cases: list[Case], pairs: list[tuple[int, int]], crop: Sequence[int] | None,
                 seed: int, epoch: int, labels: LabelSource = dataset_labels, n_windows: int = 1,
                 classes: Sequence[int] | None = None) -> None:
        self.cases, self.pairs, self.crop, self.n_windows = cases, pairs, crop, n_windows
        self.seed, self.epoch, self.labels, self.classes = seed, epoch, labels, classes

    def describe(self, index: int) -> str:
        """Item ``index`` in words, for messages: ``MOVING onto FIXED`` (the images' paths)."""
        moving_case, fixed_case = (self.cases[i] for i in self.pairs[index])
        return f"{moving_case.image} onto {fixed_case.image}"

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        moving_case, fixed_case = (self.cases[i] for i in self.pairs[index])
        moving = io.read_volume(moving_case.image, np.float32).array
        fixed = io.read_volume(fixed_case.image, np.float32).array
        if moving.shape != fixed.shape:
            raise ValueError(f"{moving_case.image}: shape {moving.shape} differs from {fixed_case.image} {fixed.shape}")
        rng = np.random.default_rng([self.seed, self.epoch, index + 1])
        box = random_crop_box(moving.shape, self.crop, rng)
        item = {name: preprocess(torch.from_numpy(vol)[None, None], self.n_windows)[0][(slice(None), *box)].contiguous()
                for name, vol in (("moving", moving), ("fixed", fixed))}
        ml, fl = self.labels(moving_case), self.labels(fixed_case)
        if ml is not None and fl is not None:
            for key, path in (("moving_seg", ml), ("fixed_seg", fl)):
                seg = io.read_labels(path)[box]
                seg = keep_classes(seg, self.classes) if self.classes is not None else seg
                item[key] = torch.from_numpy(seg.astype(np.int64))[None]
        return item
