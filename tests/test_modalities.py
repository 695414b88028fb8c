"""Datasets of two modalities (e.g. MR moving, CT fixed): each image is normalised as its own modality."""

import json
import shutil

import numpy as np
import pytest
import torch

from l2r_submit.core import dataset
from l2r_submit.registration import features, instance, predict, search, stages

from conftest import invoke
from test_search import smooth_volume


def mr_like(volume: torch.Tensor) -> torch.Tensor:
    """The same texture in MR-like units, 400 to 1400: above the CT window, where it would be one flat value."""
    return 400.0 + 1000.0 * (volume - volume.min()) / (volume.max() - volume.min())


def test_ct_flags():
    assert features.ct_flags(True) == (True, True) and features.ct_flags(False) == (False, False)
    assert features.ct_flags((False, True)) == (False, True)


def test_each_image_is_normalised_as_its_own_modality():
    """A 20-voxel translation between an MR-like moving image and a CT fixed one: found with the pair's own
    flags; with the CT window on both, the MR-like image is flat and nothing is found."""
    big = smooth_volume((120, 48, 48), seed=7)
    fixed, moving = big[:, :, 10:82], mr_like(big[:, :, 30:102])  # pull map -20 along axis 0
    assert features.normalise_intensity(moving, mode=True).std() == 0  # the CT window sees a flat image
    cfg = search.SearchConfig(grid=6, hw=4)
    inner = (slice(None), slice(30, 66), slice(12, 36), slice(12, 36))
    found = search.search(moving, fixed, cfg, ct=(False, True))[0][inner]
    assert abs(found[0].mean().item() + 20) < 2.5 and found[1:].abs().mean().item() < 0.5
    blind = search.search(moving, fixed, cfg, ct=True)[0][inner]
    assert blind[0].mean().item() > -5  # the truth is -20
    built = stages.build(("search", "adam"), None, cfg, instance.IOConfig(4, field="velocity", reg=0.125),
                         (False, True))
    disp, _ = stages.run(built, moving, fixed)
    assert abs(disp[0][inner][0].mean().item() + 20) < 2.5
    with pytest.raises(ValueError, match="mse"):
        instance.refine(disp, moving, fixed, instance.IOConfig(2, similarity="mse"), ct=(False, True))


def test_the_refinement_normalises_moving_and_fixed_by_their_own_flags():
    """From a zero field, a 4-voxel translation: found when the MR-like moving image gets percentiles;
    with the flags swapped it gets the CT window (flat) and nothing is found."""
    big = smooth_volume((56, 32, 32), seed=9)
    fixed, moving = big[:, :, 4:52], mr_like(big[:, :, 8:56])  # pull map -4 along axis 0
    cfg = instance.IOConfig(40, field="velocity", reg=0.25)
    zero = torch.zeros((1, 3, *fixed.shape[2:]))
    inner = (0, 0, slice(12, 36), slice(8, 24), slice(8, 24))  # axis 0 of the field, inside
    right = instance.refine(zero, moving, fixed, cfg, ct=(False, True))[inner]
    swapped = instance.refine(zero, moving, fixed, cfg, ct=(True, False))[inner]
    assert abs(right.mean().item() + 4) < 1.0
    assert abs(swapped.mean().item()) < 1.0


def write_mixed_dataset(root, fixed, moving, ct_moving=None):
    """An MR-CT dataset: one val pair, CT ``fixed`` <- MR ``moving``; with ``ct_moving``, also a second pair of
    two CT images, ``fixed`` <- ``ct_moving``."""
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True)
    images = (("0001_0001", fixed), ("0002_0000", moving)) + ((("0003_0001", ct_moving),) if ct_moving is not None
                                                              else ())
    for name, vol in images:
        nib.save(nib.Nifti1Image(vol[0, 0].numpy().astype(np.float32), np.eye(4)),
                 root / "imagesTr" / f"MRCT_{name}.nii.gz")
    val = [{"fixed": "./imagesTr/MRCT_0001_0001.nii.gz", "moving": "./imagesTr/MRCT_0002_0000.nii.gz"}]
    if ct_moving is not None:
        val.append({"fixed": "./imagesTr/MRCT_0001_0001.nii.gz", "moving": "./imagesTr/MRCT_0003_0001.nii.gz"})
    data = {"name": "MRCT", "modality": {"0": "MR", "1": "CT"}, "tensorImageShape": {"0": list(fixed.shape[2:])},
            "training": [], "registration_val": val, "registration_test": []}
    path = root / "MRCT_dataset.json"
    path.write_text(json.dumps(data))
    return path


def test_predict_reads_each_images_modality(tmp_path):
    big = smooth_volume((48, 24, 24), seed=8)
    fixed, moving = big[:, :, 4:28], mr_like(big[:, :, 12:36])
    path = write_mixed_dataset(tmp_path / "mrct", fixed, moving)
    ds = dataset.load(path)
    pair = ds.pairs("val")[0]
    assert ds.modality == "MR" and ds.modalities == {"0": "MR", "1": "CT"}
    assert ds.is_ct_image(pair.fixed) and not ds.is_ct_image(pair.moving)
    assert predict.modality_name(ds) == "0: MR, 1: CT"
    out = tmp_path / "out"
    args = ["predict", path, "--out", out, "--device", "cpu", "--quiet",
            "--stages", "search,adam", "--io-iters", "2", "--search-grid", "4", "--search-hw", "3"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["settings"]["modality"] == "0: MR, 1: CT"
    entry = next(iter(manifest["pairs"].values()))
    assert entry["status"] == "done"
    import nibabel as nib

    disp = np.asarray(nib.load(out / entry["outputs"][0]).dataobj)  # (I, J, K, 3), pull map in voxels
    assert abs(disp[12:36, 6:18, 6:18, 0].mean() + 8) < 2.0  # the known translation, found with each image's flag
    res = invoke(*args, "--io-similarity", "mse", "--overwrite")
    assert res.exit_code == 2 and "use mind" in res.output, res.output


def test_a_pair_with_a_non_ct_image_gets_its_own_iterations():
    """``iters_non_ct`` replaces ``iters`` when an image is not CT, unless it is floored against a CT image: with
    ``iters`` 0 a pair of two CT images is left as it came, and so is an MR-like image against a CT with flat
    air (the MR-like image is floored); an MR-like image against a CT without flat air, and two MR-like
    images, are refined (the 4-voxel translation of the test above is found)."""
    big = smooth_volume((56, 32, 32), seed=9)
    fixed, moving = big[:, :, 4:52], mr_like(big[:, :, 8:56])  # pull map -4 along axis 0
    cfg = instance.IOConfig(0, field="velocity", reg=0.25, iters_non_ct=40)
    for flags in ((False, True), (True, False), False, ("percentiles", "ct"), ("percentiles", "percentiles"),
                  ("floored", "percentiles"), ("floored", "floored")):  # not against a CT image: 120 by default
        assert instance.for_pair(cfg, flags).iters == 40
    for flags in (True, (True, True), ("floored", "ct"), ("ct", "floored")):
        assert instance.for_pair(cfg, flags) is cfg
    assert instance.for_pair(cfg, ("floored", "ct_lung")).iters == 40  # a chest in the lung window: 120 by default
    zero = torch.zeros((1, 3, *fixed.shape[2:]))
    inner = (0, 0, slice(12, 36), slice(8, 24), slice(8, 24))
    assert features.pair_modes(moving, fixed, (False, True)) == ("floored", "ct")  # ~9% of the CT below -200
    assert torch.equal(instance.refine(zero, moving, fixed, cfg, ct=(False, True)), zero)
    soft = fixed.clamp(min=-190.0)  # no flat air: the MR-like image is read by its percentiles
    assert features.pair_modes(moving, soft, (False, True)) == ("percentiles", "ct")
    assert abs(instance.refine(zero, moving, soft, cfg, ct=(False, True))[inner].mean().item() + 4) < 1.0
    assert abs(instance.refine(zero, moving, mr_like(fixed), cfg, ct=False)[inner].mean().item() + 4) < 1.0
    assert torch.equal(instance.refine(zero, big[:, :, 8:56], fixed, cfg, ct=True), zero)
    with pytest.raises(ValueError, match="iters_non_ct"):
        instance.IOConfig(40, iters_non_ct=-1)


def test_predict_defaults_for_a_pair_with_a_non_ct_image():
    """After the search: 40 iterations, 120 when an image is not CT; an explicit --io-iters sets both unless
    --io-iters-non-ct is given too; without the search the rule is not applied (unmeasured)."""
    from l2r_submit.registration import defaults

    after = defaults.io_for_stages(None, None)
    assert (after.iters, after.iters_non_ct) == (40, defaults.DEFAULT_IO_ITERS_NON_CT) == (40, 120)
    assert defaults.io_for_stages(None, None, 30).iters_non_ct is None
    assert defaults.io_for_stages(None, None, 30, iters_non_ct=60).iters_non_ct == 60
    assert defaults.io_for_stages(("adam",), None).iters_non_ct is None


def test_cli_io_iters_non_ct(tmp_path):
    """--io-iters-non-ct reaches the refinement of an MR-like/CT pair whose CT has no flat air (neither image
    floored), and not that of the same pair with the CT's air flat (the MR-like image floored: --io-iters)."""
    big = smooth_volume((48, 24, 24), seed=8)
    import nibabel as nib

    for name, ct_image, used in (("soft", big[:, :, 4:28].clamp(min=-190.0), True), ("flat", big[:, :, 4:28], False)):
        path = write_mixed_dataset(tmp_path / name, ct_image, mr_like(big[:, :, 12:36]))
        out = tmp_path / f"out_{name}"
        args = ["predict", path, "--out", out, "--device", "cpu", "--quiet",
                "--stages", "search,adam", "--search-grid", "4", "--search-hw", "3", "--io-iters", "2"]
        fields = {}
        for n in ("0", "3"):  # the only pair is MR against CT
            assert invoke(*args, "--io-iters-non-ct", n, "--overwrite").exit_code == 0
            run = json.loads((out / "run.json").read_text())
            entry = next(iter(run["pairs"].values()))
            assert (run["settings"]["io"]["iters"], run["settings"]["io"]["iters_non_ct"]) == (2, int(n))
            assert entry["settings"]["io"]["iters_non_ct"] == int(n)  # compared on a rerun: an image is not CT
            assert entry["intensity"]["moving"] == ("percentiles" if used else "floored")
            assert entry["io_iters"] == (int(n) if used else 2)  # the count this pair got, recorded
            fields[n] = np.asarray(nib.load(out / entry["outputs"][0]).dataobj)
        assert np.allclose(fields["0"], fields["3"]) != used  # floored: --io-iters' 2 both times
    res = invoke(*args, "--io-iters-non-ct", "-1", "--overwrite")
    assert res.exit_code == 2 and "--io-iters-non-ct" in res.output
    res = invoke(*args[:-2], "--io-iters", "0", "--io-iters-non-ct", "5", "--overwrite")
    assert res.exit_code == 2 and "--io-iters 0" in res.output and "Traceback" not in res.output


def test_changing_the_non_ct_iterations_redoes_only_pairs_with_a_non_ct_image(tmp_path):
    big = smooth_volume((48, 24, 24), seed=8)
    path = write_mixed_dataset(tmp_path / "mrct", big[:, :, 4:28], mr_like(big[:, :, 12:36]), big[:, :, 8:32])
    out = tmp_path / "out"
    args = ["predict", path, "--out", out, "--device", "cpu", "--quiet",
            "--stages", "search,adam", "--search-grid", "4", "--search-hw", "3", "--io-iters", "2"]
    assert invoke(*args, "--io-iters-non-ct", "3").exit_code == 0
    first = json.loads((out / "run.json").read_text())["pairs"]
    ct_key, mr_key = "0001_0001<--0003_0001", "0001_0001<--0002_0000"
    assert "iters_non_ct" not in first[ct_key]["settings"]["io"] and first[mr_key]["settings"]["io"]["iters_non_ct"] == 3
    # how each image was normalised for the pair (features.pair_modes), recorded for a pair with a non-CT image
    assert first[mr_key]["intensity"] == {"moving": "floored", "fixed": "ct"}  # the CT clipped below its window: flat
    assert "intensity" not in first[ct_key]
    assert invoke(*args, "--io-iters-non-ct", "3", "--sequential").exit_code == 0  # full path, nothing changed
    again = json.loads((out / "run.json").read_text())["pairs"]
    assert again[ct_key]["status"].startswith("skipped") and again[mr_key]["status"].startswith("skipped")
    assert again[mr_key]["intensity"] == first[mr_key]["intensity"]  # kept with the field it describes
    assert first[ct_key]["io_iters"] == again[ct_key]["io_iters"] == 2
    assert first[mr_key]["io_iters"] == again[mr_key]["io_iters"] == 2  # floored against the soft-window CT
    assert invoke(*args, "--io-iters-non-ct", "4").exit_code == 0
    after = json.loads((out / "run.json").read_text())["pairs"]
    assert after[ct_key]["status"].startswith("skipped")  # two CT images: the count is not theirs
    assert after[mr_key]["status"] == "done" and "iters_non_ct" in after[mr_key]["redone"]
    res = invoke(*args, "--io-iters-non-ct", "4")  # asked the very same: the torch-free quick path
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output


def test_pairs_of_the_same_subjects_in_two_channels_get_a_qc_picture_each(tmp_path):
    # both pairs are 0001 <- 0002; the picture was named by subject ids only, so the second overwrote the first
    big = smooth_volume((48, 24, 24), seed=8)
    path = write_mixed_dataset(tmp_path / "mrct", big[:, :, 4:28], mr_like(big[:, :, 12:36]))
    import nibabel as nib

    nib.save(nib.Nifti1Image(big[0, 0, 8:32].numpy().astype(np.float32), np.eye(4)),
             tmp_path / "mrct" / "imagesTr" / "MRCT_0002_0001.nii.gz")
    data = json.loads(path.read_text())
    data["registration_val"].append({"fixed": "./imagesTr/MRCT_0001_0001.nii.gz",
                                     "moving": "./imagesTr/MRCT_0002_0001.nii.gz"})
    path.write_text(json.dumps(data))
    out, qc = tmp_path / "out", tmp_path / "qc"
    res = invoke("predict", path, "--out", out, "--device", "cpu", "--quiet", "--qc", qc,
                 "--stages", "search", "--search-grid", "4", "--search-hw", "1")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in qc.glob("qc_*.png")) == ["qc_0001_0001_0002_0000.png", "qc_0001_0001_0002_0001.png"]
    assert dataset.qc_name("0001_0000<--0002_0000") == "qc_0001_0002.png"  # two 0000 images: the name as before


def test_a_declared_ct_without_negative_values_is_normalised_as_another_modality(tmp_path):
    """CT stored as HU + 1024 (or MR in a JSON without "modality") went through the CT window, clipped to a few
    values, and ended below the zero field; its percentiles normalise it now, as an MR image's, with a note."""
    import json

    import nibabel as nib
    import numpy as np

    from conftest import invoke, write_tiny_dataset

    fields = {}
    for name, modality in (("offset_ct", "CT"), ("declared_mr", "MR")):
        path = write_tiny_dataset(tmp_path / name)
        spec = json.loads(path.read_text())
        spec["modality"] = {"0": modality}
        spec["registration_val"] = spec["registration_val"][:1]
        path.write_text(json.dumps(spec))
        for image in (tmp_path / name / "imagesTr").iterdir():
            img = nib.load(image)
            nib.save(nib.Nifti1Image((np.asarray(img.dataobj) + 1024).astype(np.int16), img.affine), image)
        result = invoke("predict", path, "--out", tmp_path / name / "out", "--threads", "1", "--io-iters-non-ct", "5")
        assert result.exit_code == 0, result.output
        fields[name] = np.asarray(nib.load(tmp_path / name / "out" / "disp_0001_0000_0002_0000.nii.gz").dataobj)
        record = json.loads((tmp_path / name / "out" / "run.json").read_text())["pairs"]["0001_0000<--0002_0000"]
        if modality == "CT":
            assert "declared CT, but no voxel is below 0" in result.output
            assert len(record["not_hu"]) == 2
            assert record["io_iters"] == 5 and record["settings"]["io"]["iters_non_ct"] == 5
            # its field depends on --io-iters-non-ct: a rerun with another count redoes it (it was kept as
            # "skipped (outputs exist)", its record saying a CT pair), the same count keeps it
            args = ("predict", path, "--out", tmp_path / name / "out", "--threads", "1")
            again = invoke(*args, "--io-iters-non-ct", "5")
            assert again.exit_code == 0 and "nothing to do" in again.output, again.output
            again = invoke(*args, "--io-iters-non-ct", "6", "--sequential")
            assert again.exit_code == 0, again.output
            redone = json.loads((tmp_path / name / "out" / "run.json").read_text())["pairs"]["0001_0000<--0002_0000"]
            assert redone["status"] == "done" and "iters_non_ct" in redone["redone"] and redone["io_iters"] == 6
            again = invoke(*args, "--io-iters-non-ct", "6")  # another request: the full path, nothing changed
            kept = json.loads((tmp_path / name / "out" / "run.json").read_text())["pairs"]["0001_0000<--0002_0000"]
            assert kept["status"].startswith("skipped") and kept["io_iters"] == 6 and kept["not_hu"], kept
            again = invoke(*args, "--io-iters-non-ct", "6", "--sequential", "--quiet")  # and again: still kept
            kept = json.loads((tmp_path / name / "out" / "run.json").read_text())["pairs"]["0001_0000<--0002_0000"]
            assert again.exit_code == 0 and kept["status"].startswith("skipped"), (again.output, kept)
            hu_copy = tmp_path / "hu"  # the same dataset with its images in HU: redone once, then kept
            shutil.copytree(tmp_path / name, hu_copy)
            for image in (hu_copy / "imagesTr").iterdir():
                img = nib.load(image)
                nib.save(nib.Nifti1Image((np.asarray(img.dataobj) - 1024).astype(np.int16), img.affine), image)
            hu_args = ("predict", hu_copy / path.name, "--out", hu_copy / "out", "--threads", "1", "--quiet")
            assert invoke(*hu_args, "--io-iters-non-ct", "6").exit_code == 0
            hu = json.loads((hu_copy / "out" / "run.json").read_text())["pairs"]["0001_0000<--0002_0000"]
            assert hu["status"] == "done" and "other images" in hu["redone"] and "not_hu" not in hu, hu
            assert "iters_non_ct" not in hu["settings"]["io"] and hu["io_iters"] == 40  # two CT images now
            assert invoke(*hu_args, "--io-iters-non-ct", "6", "--sequential").exit_code == 0
            hu = json.loads((hu_copy / "out" / "run.json").read_text())["pairs"]["0001_0000<--0002_0000"]
            assert hu["status"].startswith("skipped"), hu
            assert invoke(*args, "--io-iters-non-ct", "5").exit_code == 0  # back to the field compared below
        else:
            assert "declared CT" not in result.output and "not_hu" not in record
    np.testing.assert_array_equal(fields["offset_ct"], fields["declared_mr"])


def test_short_names_are_refused_where_no_evaluator_reads_them(tmp_path):
    """`--names short` on fixed _0001 <- moving _0000 wrote disp_0001_0001, which no evaluator version looks for
    (its field then counted as missing); two pairs of one subject blamed 'different folders'."""
    from l2r_submit.core.dataset import Case, Pair
    from l2r_submit.registration import pair_plan

    def case(modality: str) -> Case:
        return Case("0001", modality, tmp_path / f"img_0001_{modality}.nii.gz",
                    tmp_path / f"lab_0001_{modality}.nii.gz")

    forward, backward = Pair(case("0000"), case("0001")), Pair(case("0001"), case("0000"))
    written = pair_plan.plan_outputs(tmp_path, [forward], "nii.gz", "short")[forward]
    assert written == [tmp_path / "disp_0001_0001.nii.gz"]
    with pytest.raises(ValueError, match=r"--names short: 0001_0001<--0001_0000 \(modality 0001 <- 0000\): no "
                                         r"evaluator reads a short name for it"):
        pair_plan.plan_outputs(tmp_path, [forward, backward], "nii.gz", "short")
    assert len(pair_plan.plan_outputs(tmp_path, [forward, backward], "nii.gz", "long")) == 2
    same = Pair(case("0000"), case("0000"))  # allowed alone, but it shares the short name with `forward`
    with pytest.raises(ValueError, match="the short name has no modality index"):
        pair_plan.plan_outputs(tmp_path, [forward, same], "nii.gz", "short")


def write_thorax_dataset(root, moving, fixed):
    """A ThoraxCBCT-like dataset, its JSON's keys as Learn2Reg's: the fan-beam CT ``moving`` (channel 0000) and
    two cone-beam CTs of it, ``fixed`` +- 20 (0001, 0002); val pairs 0011_0001 <- 0011_0000 and 0011_0002 <-
    0011_0000 (one subject pair, two channel pairs)."""
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True)
    for name, vol in (("0011_0000", moving), ("0011_0001", fixed + 20.0), ("0011_0002", fixed - 20.0)):
        nib.save(nib.Nifti1Image(vol[0, 0].numpy().astype(np.float32), np.eye(4)),
                 root / "imagesTr" / f"ThoraxCBCT_{name}.nii.gz")
    val = [{"fixed": f"./imagesTr/ThoraxCBCT_0011_{c}.nii.gz", "moving": "./imagesTr/ThoraxCBCT_0011_0000.nii.gz"}
           for c in ("0001", "0002")]
    data = {"name": "ThoraxCBCT", "modality": {"0": "FBCT", "1": "CBCT", "2": "CBCT"}, "labels": {},
            "registration_direction": {"fixed": 1, "moving": 0}, "img_shift": {"fixed": "followup", "moving": "baseline"},
            "tensorImageShape": {"0": list(fixed.shape[2:])}, "training": [], "registration_val": val,
            "registration_test": []}
    path = root / "ThoraxCBCT_dataset.json"
    path.write_text(json.dumps(data))
    return path


def test_a_thoraxcbct_json_reads_its_fan_beam_ct_in_hounsfield_units(tmp_path):
    """Learn2Reg's ThoraxCBCT JSON names its channels ``{"0": "FBCT", "1": "CBCT", "2": "CBCT"}``: the planning
    fan-beam CT is in HU, the cone-beam CTs are not calibrated. Until 0.3.1 only "CT" was read as HU, so both
    images went by their percentiles (on the real chest 1.70 voxels off in the lungs against 0.75 with the FBCT
    as CT: README, "Lung CT and the CT window", lung_window_bench.py --settings "pct;cbct"). Now the FBCT is CT, and against a partner in HU-like units (air
    below -500) it gets the lung window."""
    assert [dataset.is_ct_name(n) for n in ("CT", " ct\t", "FBCT", "fb-ct", "Fan-beam CT", "FB_CT")] == [True] * 6
    assert not any(dataset.is_ct_name(n) for n in ("CBCT", "MR", "MRI", "PET", "PET-CT", "T1"))
    big = smooth_volume((48, 24, 24), seed=11)
    tissue = -100.0 + 400.0 * (big - big.min()) / (big.max() - big.min())  # -100..300 HU: no lung
    tissue[..., :4] = -1000.0  # air outside the body
    path = write_thorax_dataset(tmp_path / "thorax", tissue[:, :, 10:34], tissue[:, :, 4:28])
    ds = dataset.load(path)
    pair = ds.pairs("val")[0]
    assert ds.is_ct_image(pair.moving) and not ds.is_ct_image(pair.fixed)
    out = tmp_path / "out"
    res = invoke("predict", path, "--out", out, "--device", "cpu", "--quiet", "--stages", "search,adam",
                 "--io-iters", "2", "--io-iters-non-ct", "3", "--search-grid", "4", "--search-hw", "3")
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["settings"]["modality"] == "0: FBCT, 1: CBCT, 2: CBCT"
    assert len(manifest["pairs"]) == 2
    for entry in manifest["pairs"].values():
        assert entry["status"] == "done"
        assert entry["intensity"]["moving"] == "ct_lung", entry["intensity"]  # the CBCT's air is HU-like
        assert entry["intensity"]["fixed"] in ("floored", "percentiles"), entry["intensity"]
        assert entry["io_iters"] == 3  # a lung-window CT against another modality: --io-iters-non-ct


def test_pairs_of_one_subject_pair_in_two_channels_are_named_apart(tmp_path):
    """ThoraxCBCT's two val pairs share the subjects-only name 0011_0011: ``--pairs 0011_0011`` silently ran the
    second one; now it is refused naming both, and each is named by its case key or its field's name."""
    from l2r_submit.core.selection import select_pairs

    volume = torch.full((1, 1, 8, 8, 8), -1000.0)
    path = write_thorax_dataset(tmp_path / "thorax", volume, volume)
    ds = dataset.load(path)
    first, second = ds.pairs("val")
    assert select_pairs(ds, None, ("0011_0001_0011_0000",)) == [first]
    assert select_pairs(ds, None, ("0011_0002<--0011_0000", "0011_0001_0011_0000")) == [second, first]
    with pytest.raises(ValueError, match=r"--pairs 0011_0011: names 2 pairs \(0011_0001<--0011_0000, "
                                         r"0011_0002<--0011_0000\)"):
        select_pairs(ds, None, ("0011_0011",))
    res = invoke("predict", path, "--out", tmp_path / "out", "--device", "cpu", "--pairs", "0011_0011")
    assert res.exit_code == 2 and "names 2 pairs" in res.output and not (tmp_path / "out").exists(), res.output
    (tmp_path / "fields").mkdir()
    res = invoke("evaluate", path, tmp_path / "fields", "--pairs", "0011_0011")
    assert res.exit_code == 2 and "names 2 pairs" in res.output, res.output
