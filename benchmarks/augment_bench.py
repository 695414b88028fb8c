"""Seconds per random elastic deformation of an image and its label map (192x160x256, the AbdomenCTCT
size): ours (``l2r_submit.training.augment``, whole volume and crops) against TorchIO's RandomElasticDeformation
and MONAI's Rand3DElasticd where they are importable (they are not dependencies: install them in a
separate folder and put it on PYTHONPATH). Best of 3 (2 for the libraries), after one warm-up.

    python benchmarks/augment_bench.py [--threads 2]
"""

from __future__ import annotations

import time
from typing import Callable

import click
import numpy as np
import torch

SHAPE = (192, 160, 256)


def best(fn: Callable[[], object], n: int) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


@click.command()
@click.option("--threads", default=2, show_default=True)
def main(threads: int) -> None:
    from l2r_submit.training import augment

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.normal(0, 300, SHAPE).astype(np.float32))[None, None]
    lab = torch.from_numpy(rng.integers(0, 14, SHAPE).astype(np.int64))[None, None]
    coarse = augment.random_control_points(rng, 10.0, (4, 4, 5))
    for name, start, size in (("whole volume", None, None), ("128^3 crop", (30, 16, 60), (128,) * 3),
                              ("64^3 crop", (30, 16, 60), (64,) * 3)):
        s = best(lambda: (augment.deform(img, coarse, start, size),
                          augment.deform(lab, coarse, start, size, labels=True)), 3)
        print(f"ours (augment.deform), {name}: {s:.3f} s")
    try:
        import torchio as tio

        subject = tio.Subject(image=tio.ScalarImage(tensor=img[0]), label=tio.LabelMap(tensor=lab[0]))
        elastic = tio.RandomElasticDeformation(num_control_points=(7, 7, 7), max_displacement=10.0)
        print(f"TorchIO {tio.__version__} RandomElasticDeformation, whole volume: {best(lambda: elastic(subject), 2):.3f} s")
    except ImportError:
        print("TorchIO: not installed")
    try:
        import monai
        from monai.transforms import Rand3DElasticd

        data = {"image": img[0], "label": lab[0].float()}
        for name, size in (("whole volume", None), ("128^3 output", (128,) * 3)):
            t = Rand3DElasticd(keys=["image", "label"], sigma_range=(20, 30), magnitude_range=(100, 200), prob=1.0,
                               mode=("bilinear", "nearest"), padding_mode="zeros", spatial_size=size)
            print(f"MONAI {monai.__version__} Rand3DElasticd, {name}: {best(lambda: t(data), 2):.3f} s")
    except ImportError:
        print("MONAI: not installed")


if __name__ == "__main__":
    main()
