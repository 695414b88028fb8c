"""The search's second start (registration.start): the translation that lines up the bodies across the patient,
kept only when its searched field matches the descriptors better inside the fixed body (issue 13)."""

import json

import pytest
import torch

from l2r_submit.registration import predict, search, stages, start
from l2r_submit.registration import predict_args as pa

from conftest import invoke
from test_search import smooth_volume

SHIFT = 18  # voxels along axis 0: beyond the range of the search used here (grid 4, hw 2: +/-8)


def trunk_pair(shift=SHIFT):
    """A textured elliptic trunk in air (-1000), running along axis 2, as fixed and moving images of the same
    body placed ``shift`` voxels apart along axis 0: fixed(p) = moving(p + (shift, 0, 0)).
    Shape: -> (1, 1, 64, 64, 48) twice, and the fixed body mask (64, 64, 48)."""
    tex = smooth_volume((100, 64, 48), seed=3)
    i, j = torch.meshgrid(torch.arange(100.0), torch.arange(64.0), indexing="ij")
    body = (((i - 50) / 16) ** 2 + ((j - 32) / 13) ** 2 <= 1)[None, None, :, :, None].expand_as(tex)
    image = torch.where(body, tex, torch.full_like(tex, -1000.0))
    fixed, moving = image[:, :, 25:89], image[:, :, 25 - shift:89 - shift]
    return moving.contiguous(), fixed.contiguous(), body[0, 0, 25:89]


def test_the_centroid_shift_is_the_bodies_offset_across_the_patient():
    moving, fixed, _ = trunk_pair()
    assert start.centroid_shift(moving, fixed, (0, 1)).tolist() == [SHIFT, 0.0, 0.0]
    assert start.centroid_shift(moving, fixed, (1,)).tolist() == [0.0, 0.0, 0.0]  # only the axes named
    air = torch.full_like(fixed, -1000.0)
    assert not start.centroid_shift(air, fixed, (0, 1)).any()  # no body: no guess


def test_a_shift_beyond_the_range_is_found_from_the_centroids():
    moving, fixed, body = trunk_pair()
    cfg = search.SearchConfig(grid=4, hw=2)
    alone = search.search(moving, fixed, cfg)[0, 0][body]
    assert alone.mean().item() < SHIFT - 8  # from zero the search cannot reach it
    field, decision = start.centred_search(moving, fixed, search.SearchConfig(grid=4, hw=2, centre_axes=(0, 1)))
    assert decision["kept"] == "centre" and decision["gap"]["centre"] < decision["gap"]["zero"]
    inside = field[0, 0][body]
    assert abs(inside.mean().item() - SHIFT) < 1.5 and field[0, 1:, body].abs().mean().item() < 1.0


def test_aligned_bodies_keep_the_plain_search():
    moving, fixed, _ = trunk_pair(shift=0)
    cfg = search.SearchConfig(grid=4, hw=2, centre_axes=(0, 1))
    field, decision = start.centred_search(moving, fixed, cfg)
    assert decision["kept"] == "zero"
    assert torch.equal(field, search.search(moving, fixed, search.SearchConfig(grid=4, hw=2)))


def test_an_mr_like_pair_finds_its_body_by_percentiles():
    moving, fixed, body = trunk_pair()
    to_mr = lambda x: ((x + 1000.0) / 1500.0).clamp(0, 1)  # noqa: E731  air 0, tissue about 0.5-0.9
    cfg = search.SearchConfig(grid=4, hw=2, centre_axes=(0, 1))
    assert start.centroid_shift(to_mr(moving), to_mr(fixed), (0, 1), ct=False).tolist() == [SHIFT, 0.0, 0.0]
    field, decision = start.centred_search(to_mr(moving), to_mr(fixed), cfg, ct=False)
    assert decision["kept"] == "centre" and abs(field[0, 0][body].mean().item() - SHIFT) < 1.5


def test_the_search_stage_uses_the_second_start_only_as_the_first_stage():
    moving, fixed, body = trunk_pair()
    cfg = search.SearchConfig(grid=4, hw=2, centre_axes=(0, 1))
    built = stages.build(("search", "adam"), None, cfg, predict.default_io(10))
    details: dict = {}
    disp, seconds = stages.run(built, moving, fixed, details=details)
    assert abs(disp[0, 0][body].mean().item() - SHIFT) < 1.5 and set(seconds) == {"search", "adam"}
    record = details["search_start"]  # what run.json records per pair
    assert record["shift"] == [SHIFT, 0.0, 0.0] and record["kept"] == "centre"
    assert record["gap"]["centre"] < record["gap"]["zero"]
    json.dumps(details)  # JSON-ready
    offset = torch.zeros(1, 3, *fixed.shape[2:])
    offset[:, 2] = 1.0  # after another stage the search looks for an increment from that stage's field
    assert torch.equal(stages.build(("search",), None, cfg, predict.default_io(0))[0](moving, fixed, offset),
                       search.search_stage(moving, fixed, offset, cfg))


@pytest.mark.parametrize("axes", [(0, 0), (3,), (-1,)])
def test_centre_axes_are_checked(axes):
    with pytest.raises(ValueError, match="centre_axes"):
        search.SearchConfig(centre_axes=axes)


@pytest.mark.parametrize("margin", [-0.1, 1.0, float("nan")])
def test_keep_margin_is_checked(margin):
    with pytest.raises(ValueError, match="keep_margin"):
        search.SearchConfig(keep_margin=margin)


def test_cli_search_centre(tiny_dataset, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    args = ["predict", tiny_dataset, "--out", out, "--device", "cpu", "--quiet",
            "--pairs", "0001_0002", "--stages", "search", "--search-grid", "4", "--search-hw", "2"]
    assert invoke(*args, "--search-centre", "0,1").exit_code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["search"]["centre_axes"] == [0, 1]
    record = run["pairs"]["0001_0000<--0002_0000"]["search_start"]  # which start each pair kept
    assert record["kept"] in ("zero", "centre") and len(record["shift"]) == 3
    # a CT-only dataset: the non-CT iterations are not part of what a pair's field depends on
    assert "iters_non_ct" not in json.dumps(run["pairs"]["0001_0000<--0002_0000"]["settings"])
    # a rerun asked differently (not the quick path) skips the pair and keeps the record of its field
    assert invoke(*args, "--search-centre", "0,1", "--sequential").exit_code == 0
    again = json.loads((out / "run.json").read_text())["pairs"]["0001_0000<--0002_0000"]
    assert again["status"].startswith("skipped") and again["search_start"] == record, again.get("redone")
    assert invoke(*args, "--search-centre", "none", "--overwrite").exit_code == 0
    assert "search_start" not in json.loads((out / "run.json").read_text())["pairs"]["0001_0000<--0002_0000"]
    for bad in ("0,0", "3", "x", ""):
        res = invoke(*args, "--search-centre", bad, "--overwrite")
        assert res.exit_code == 2 and "--search-centre" in res.output and "Traceback" not in res.output
    assert pa.parse_axes("none") == () and pa.parse_axes(" 1,0") == (1, 0)


def test_a_shift_shorter_than_a_grid_step_is_not_tried():
    moving, fixed, _ = trunk_pair(shift=3)
    cfg = search.SearchConfig(grid=4, hw=2, centre_axes=(0, 1))
    field, decision = start.centred_search(moving, fixed, cfg)
    assert decision == {"shift": [3.0, 0.0, 0.0], "kept": "zero", "axes": [0, 1]}
    assert torch.equal(field, search.search(moving, fixed, search.SearchConfig(grid=4, hw=2)))


@pytest.mark.parametrize("centre_gap, kept", [(0.999, "zero"), (0.996, "zero"), (0.99, "centre")])
def test_a_near_tie_keeps_the_unmoved_start(monkeypatch, centre_gap, kept):
    """The centred start must lower the descriptor gap by more than ``keep_margin`` (0.5%) to be kept."""
    assert search.SearchConfig().keep_margin == 0.005
    moving, fixed, _ = trunk_pair()
    gaps = iter([1.0, centre_gap])  # the zero start's gap is computed first
    monkeypatch.setattr(start, "descriptor_gap", lambda *args: next(gaps))
    cfg = search.SearchConfig(grid=4, hw=2, centre_axes=(0, 1))
    field, decision = start.centred_search(moving, fixed, cfg)
    assert decision["kept"] == kept
    plain = search.search(moving, fixed, search.SearchConfig(grid=4, hw=2))
    assert torch.equal(field, plain) == (kept == "zero")


def test_the_centre_axes_follow_the_fixed_headers_head_feet_axis():
    cfg = search.SearchConfig()
    assert search.across_header(cfg, 0).centre_axes == (1, 2) and search.across_header(cfg, 1).centre_axes == (0, 2)
    assert search.across_header(cfg, 2) is cfg and search.across_header(cfg, None) is cfg  # the challenge's frame
    for kept in (search.SearchConfig(centre_axes=()), search.SearchConfig(centre_axes=(0, 1))):
        assert search.across_header(kept, 0) is kept  # 'none', or axes given: as they are
    assert cfg.axes == (0, 1) and search.SearchConfig(centre_axes=()).axes == ()
    built = stages.with_header(stages.build(("search", "adam"), None, cfg, predict.default_io(1)), 0)
    assert built[0].cfg.centre_axes == (1, 2) and built[1].cfg == predict.default_io(1)


def write_trunk_dataset(root, affine):
    """:func:`trunk_pair` stored with the trunk along array axis 0 and the bodies 18 voxels apart along axis 2
    (transposed), as a one-pair CT dataset whose images carry ``affine``."""
    import nibabel as nib
    import numpy as np

    moving, fixed, _ = trunk_pair()
    (root / "imagesTr").mkdir(parents=True)
    for name, vol in (("0001", fixed), ("0002", moving)):
        nib.save(nib.Nifti1Image(vol[0, 0].permute(2, 1, 0).numpy().astype(np.float32), affine),
                 root / "imagesTr" / f"Trunk_{name}_0000.nii.gz")
    data = {"name": "Trunk", "modality": {"0": "CT"}, "tensorImageShape": {"0": [48, 64, 64]}, "training": [],
            "registration_val": [{"fixed": "./imagesTr/Trunk_0001_0000.nii.gz",
                                  "moving": "./imagesTr/Trunk_0002_0000.nii.gz"}], "registration_test": []}
    (root / "Trunk_dataset.json").write_text(json.dumps(data))
    return root / "Trunk_dataset.json"


def test_predict_reads_the_long_axis_from_the_fixed_header(tmp_path):
    """The trunk runs along array axis 0 and the header says so (axis 0 head to feet): the second start lines
    the bodies up along axes 1 and 2 and finds the 18-voxel offset along axis 2, beyond the search's range.
    With an identity header (axis 2 head to feet) the axes stay 0, 1 and the offset is not found; an explicit
    --search-centre is taken as given."""
    import nibabel as nib
    import numpy as np

    head_feet_on_0 = np.array([[0, 0, 2.0, 0], [0, 2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    args = ["--device", "cpu", "--quiet", "--stages", "search", "--search-grid", "4", "--search-hw", "2"]
    found = {}
    for name, affine, extra in (("header", head_feet_on_0, ()), ("identity", np.diag([2.0, 2, 2, 1]), ()),
                                ("given", head_feet_on_0, ("--search-centre", "0,1"))):
        path = write_trunk_dataset(tmp_path / name, affine)
        out = tmp_path / f"out_{name}"
        assert invoke("predict", path, "--out", out, *args, *extra).exit_code == 0
        run = json.loads((out / "run.json").read_text())
        entry = run["pairs"]["0001_0000<--0002_0000"]
        field = np.asarray(nib.load(out / entry["outputs"][0]).dataobj)  # (I, J, K, 3) voxels
        body = np.asarray(nib.load(path.parent / "imagesTr" / "Trunk_0001_0000.nii.gz").dataobj) > -500
        found[name] = (entry["search_start"]["axes"], float(field[..., 2][body].mean()),
                       run["settings"]["search"]["centre_axes"])
    assert found["header"][0] == [1, 2] and abs(found["header"][1] - SHIFT) < 1.5 and found["header"][2] is None
    assert found["identity"][0] == [0, 1] and found["identity"][1] < SHIFT - 8
    assert found["given"][0] == [0, 1] and found["given"][2] == [0, 1]
