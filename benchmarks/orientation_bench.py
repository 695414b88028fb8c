"""Another array orientation: the same real pairs stored with the patient's long axis on array axis 0.

The search's second start lines the two bodies up across the patient only (README, "A second start"), so it
must know which array axis runs head to feet. ``l2r predict`` reads it from the fixed image's header
(``core.frame.head_feet_axis``) unless ``--search-centre`` names the axes. Here test_data's two real
inter-patient pairs (0004 <- 0006 and 0006 <- 0004), optionally with the moving image also translated across
the patient (``--offsets``, in the challenge frame's axes, as ``benchmarks/offset_bench.py`` does), are
written three ways into a temporary dataset and registered by ``predict.run`` with the default stages:

* ``as stored``: test_data's arrays and headers (axis 2 head to feet);
* ``transposed``: arrays and labels transposed (2, 1, 0), the header permuted with them, so it still says
  where head and feet are (now array axis 0);
* ``transposed, identity header``: the same arrays with an identity header (2 mm), which says axis 2: the
  header is wrong, as in files written without one; only ``--search-centre 1,2`` helps there.

Printed per case: the mean Dice over labels 1-13 present in both maps (``offset_bench.mean_dice``), the
zero-field Dice, the second start's axes, centroid shift and kept start (run.json's ``search_start``),
and the seconds of the stages. One process, CPU.

    python benchmarks/orientation_bench.py [--offsets "0,0,0;-20,10,0"] [--threads 2]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from offset_bench import AIR_HU, DATA, mean_dice, parse_offsets, translate  # noqa: E402

PAIRS = ("0004_0000<--0006_0000", "0006_0000<--0004_0000")
ORDER = (2, 1, 0)  # the patient's long axis (axis 2 in the challenge's frame) onto array axis 0
LAYOUTS = ("as stored", "transposed", "transposed, identity header")


def write_case(root: Path, fixed: tuple[np.ndarray, np.ndarray], moving: tuple[np.ndarray, np.ndarray],
               affine: np.ndarray, layout: str) -> Path:
    """A one-pair CT dataset of ``fixed`` <- ``moving`` (image, labels) in ``layout``; returns its JSON."""
    import nibabel as nib

    transposed = layout != "as stored"
    header = affine if layout == "as stored" else (
        affine[:, list(ORDER) + [3]] if layout == "transposed" else np.diag([2.0, 2.0, 2.0, 1.0]))
    (root / "imagesTr").mkdir(parents=True)
    for name, (image, _) in (("0001", fixed), ("0002", moving)):
        array = image.transpose(ORDER) if transposed else image
        nib.save(nib.Nifti1Image(np.ascontiguousarray(array, np.float32), header),
                 root / "imagesTr" / f"Case_{name}_0000.nii.gz")
    shape = list(fixed[0].transpose(ORDER).shape if transposed else fixed[0].shape)
    spec = {"name": "Case", "modality": {"0": "CT"}, "tensorImageShape": {"0": shape}, "training": [],
            "registration_val": [{"fixed": "./imagesTr/Case_0001_0000.nii.gz",
                                  "moving": "./imagesTr/Case_0002_0000.nii.gz"}], "registration_test": []}
    path = root / "Case_dataset.json"
    path.write_text(json.dumps(spec))
    return path


@click.command()
@click.option("--offsets", default="0,0,0;-20,10,0", show_default=True,
              help="Semicolon list of whole-voxel offsets of the moving image, challenge-frame axes.")
@click.option("--threads", type=int, default=2, show_default=True)
def main(offsets: str, threads: int) -> None:
    import nibabel as nib

    from l2r_submit.core import dataset, io
    from l2r_submit.registration import predict

    val = {p.key: p for p in dataset.load(DATA).pairs("val")}
    print(f"default stages; CPU, {threads} threads; layouts: {'; '.join(LAYOUTS)}")
    print(f"{'pair':<22} {'offset':<12} {'layout':<29} {'zero':>6} {'Dice':>6}  axes    shift               kept    s")
    for key in PAIRS:
        pair = val[key]
        fixed_vol = io.read_volume(pair.fixed.image, np.float32)
        fixed = (fixed_vol.array, io.read_labels(pair.fixed.label))
        moving_image = io.read_volume(pair.moving.image, np.float32).array
        moving_seg = io.read_labels(pair.moving.label)
        for offset in parse_offsets(offsets):
            moving = (translate(moving_image, offset, AIR_HU), translate(moving_seg, offset, 0))
            for layout in LAYOUTS:
                turn = (lambda a: a.transpose(ORDER)) if layout != "as stored" else (lambda a: a)
                with tempfile.TemporaryDirectory() as tmp:
                    path = write_case(Path(tmp) / "data", fixed, moving, fixed_vol.affine, layout)
                    cfg = predict.PredictConfig(dataset.load(path), Path(tmp) / "out", threads=threads,
                                                progress=False)
                    run = predict.run(cfg)
                    entry = next(iter(run["pairs"].values()))
                    if entry["status"] != "done":
                        raise SystemExit(f"{key} {offset} {layout}: {entry.get('error')}")
                    field = np.asarray(nib.load(Path(tmp) / "out" / entry["outputs"][0]).dataobj)
                    disp = np.moveaxis(field, -1, 0)
                    zero = mean_dice(turn(fixed[1]), turn(moving[1]), np.zeros_like(disp))
                    dice = mean_dice(turn(fixed[1]), turn(moving[1]), disp)
                    start = entry.get("search_start", {})
                    print(f"{key:<22} {','.join(map(str, offset)):<12} {layout:<29} {zero:6.3f} {dice:6.3f}  "
                          f"{str(start.get('axes')):<7} {str(start.get('shift')):<19} {start.get('kept', ''):<7} "
                          f"{sum(entry['stage_seconds'].values()):.0f}", flush=True)


if __name__ == "__main__":
    main()
