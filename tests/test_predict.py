import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch

from l2r_submit.nets import checkpoint, config
from l2r_submit.core import dataset
from l2r_submit.registration import instance, predict

from conftest import TINY_SHAPE, invoke


def test_predict_then_evaluate_end_to_end(tiny_dataset, tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    res = invoke("predict", tiny_dataset, "--out", out, "--checkpoint", tiny_ckpt, "--device", "cpu",
                 "--io-iters", "0", "--evaluate", "--quiet", "--qc", tmp_path / "qc")
    assert res.exit_code == 0, res.output
    assert "3 pairs done, 0 skipped, 0 failed" in res.output and "DSC" in res.output
    names = sorted(p.name for p in out.glob("disp_*"))
    assert names == ["disp_0001_0000_0002_0000.nii.gz", "disp_0001_0000_0003_0000.nii.gz",
                     "disp_0002_0000_0003_0000.nii.gz"]
    img = nib.load(out / names[0])
    assert img.shape == (*TINY_SHAPE, 3) and img.get_data_dtype() == np.float32
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["checkpoint_sha256"] == predict.sha256(tiny_ckpt)
    assert all(p["status"] == "done" and p["seconds"] > 0 for p in manifest["pairs"].values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["cases"]) == 3
    assert len(list((tmp_path / "qc").glob("qc_*.png"))) == 3


def test_no_network_refines_from_a_zero_field(tiny_dataset, tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    args = ["predict", tiny_dataset, "--out", out, "--device", "cpu", "--quiet",
            "--pairs", "0001_0002"]
    res = invoke(*args, "--no-network", "--io-iters", "0", "--stages", "network,adam")
    assert res.exit_code == 2 and "no registration stage left" in res.output
    assert invoke(*args, "--no-network", "--io-iters", "3", "--io-similarity", "mse",
                  "--stages", "network,adam").exit_code == 0
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["settings"]["network"] is False and manifest["settings"]["io"]["similarity"] == "mse"
    ds = dataset.load(tiny_dataset)
    pair = ds.pairs("val")[0]
    with_net = predict.predict_pair(checkpoint.load(tiny_ckpt)[0], pair, torch.device("cpu"),
                                    instance.IOConfig(0), ds.shape)
    without = predict.predict_pair(None, pair, torch.device("cpu"), instance.IOConfig(0), ds.shape)
    assert np.abs(with_net).max() > 0 and not without.any()  # the zero start really is zero


def test_rerun_skips_complete_outputs_and_overwrite_redoes(tiny_dataset, tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    args = ["predict", tiny_dataset, "--out", out, "--checkpoint", tiny_ckpt, "--device", "cpu", "--quiet",
            "--io-iters", "0"]
    assert invoke(*args).exit_code == 0
    (out / "disp_0001_0000_0003_0000.nii.gz").write_bytes(b"truncated")  # a damaged output is redone
    res = invoke(*args)
    assert "1 pairs done, 2 skipped, 0 failed" in res.output
    assert "3 pairs done, 0 skipped" in invoke(*args, "--overwrite").output


def test_one_failed_pair_is_isolated(tiny_dataset, tiny_ckpt, tmp_path):
    bad = tiny_dataset.parent / "imagesTr" / "AbdomenCTCT_0003_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.int16), np.eye(4)), bad)
    out = tmp_path / "out"
    res = invoke("predict", tiny_dataset, "--out", out, "--checkpoint", tiny_ckpt, "--device", "cpu", "--quiet",
                 "--io-iters", "0")
    assert res.exit_code == 1
    assert "1 pairs done, 0 skipped, 2 failed" in res.output
    assert "AbdomenCTCT_0003_0000.nii.gz: shape (5, 5, 5) received" in res.output
    assert (out / "disp_0001_0000_0002_0000.nii.gz").exists()
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["pairs"]["0001_0000<--0003_0000"]["status"] == "failed"


def test_2020_format_short_names_only_and_pair_subset(tiny_dataset, tiny_ckpt, tmp_path):
    """--names both wrote the half-resolution float16 field under the long name too, which the current
    evaluator fails on every pair; refused as --names long is."""
    out = tmp_path / "out"
    for names in ("both", "long"):
        res = invoke("predict", tiny_dataset, "--out", out, "--checkpoint", tiny_ckpt, "--format", "npz2020",
                     "--names", names)
        assert res.exit_code == 2 and f"--format npz2020 --names {names}: the 2020 evaluator" in res.output
    assert not out.exists()
    res = invoke("predict", tiny_dataset, "--out", out, "--checkpoint", tiny_ckpt, "--device", "cpu", "--quiet",
                 "--format", "npz2020", "--pairs", "0001_0002", "--io-iters", "0")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.glob("disp_*")) == ["disp_0001_0002.npz"]
    with np.load(out / "disp_0001_0002.npz") as f:
        assert f["arr_0"].dtype == np.float16 and f["arr_0"].shape == (3, 12, 10, 14)
    res = invoke("predict", tiny_dataset, "--out", out, "--checkpoint", tiny_ckpt, "--pairs", "0009_0001")
    assert res.exit_code == 2 and "not in split" in res.output


def test_shipped_weights_checksum_is_checked(tmp_path, tiny_ckpt):
    weights = tmp_path / "weights"
    weights.mkdir()
    target = weights / "w.pt"
    target.write_bytes(tiny_ckpt.read_bytes())
    (weights / "manifest.json").write_text(json.dumps(
        {"default": "w.pt", "files": {"w.pt": {"sha256": predict.sha256(target)}}}))
    assert predict.resolve_checkpoint(None, weights) == target
    target.write_bytes(target.read_bytes() + b"tampered")
    with pytest.raises(ValueError, match="sha256 does not match"):
        predict.resolve_checkpoint(None, weights)
    with pytest.raises(ValueError, match="no shipped weights"):
        predict.resolve_checkpoint(None, tmp_path)


def test_the_shipped_weights_match_their_manifest_and_load():
    path = predict.resolve_checkpoint(None, predict.DEFAULT_WEIGHTS_DIR)  # raises on a sha256 mismatch
    net, _ = checkpoint.load(path)
    manifest = json.loads((predict.DEFAULT_WEIGHTS_DIR / "manifest.json").read_text())
    assert net.cfg == config.PRESETS[manifest["model_preset"]]
    assert path.stat().st_size < 50 * 2**20  # "tens of MB at most"


def test_help_states_the_real_default_of_io_iters():
    res = invoke("predict", "--help")
    text = " ".join(res.output.split())
    assert f"[default: {predict.DEFAULT_IO_ITERS} after the search" in text
    assert f"{predict.DEFAULT_IO_ITERS_NO_SEARCH} without it" in text
    regs = (predict.DEFAULT_IO_REG_AFTER_SEARCH["velocity"], predict.DEFAULT_IO_REG["velocity"])
    assert "velocity {} after the search, {} without it".format(*regs) in text


@pytest.mark.parametrize("similarity", instance.SIMILARITIES)
def test_instance_optimisation_recovers_a_shift(similarity):
    x = torch.linspace(-1, 1, 24)
    blob = torch.exp(-((x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) * 5))[None, None]
    fixed = blob * 300.0 - 100.0  # HU: fat-like surround, organ-like centre
    moving = torch.roll(fixed, 2, dims=2)
    zero = torch.zeros(1, 3, 24, 24, 24)
    refined = instance.refine(zero, moving, fixed, instance.IOConfig(iters=60, lr=0.2, reg=0.1, similarity=similarity))
    from l2r_submit.core.spatial import warp_image

    inner = (slice(None), slice(None), slice(4, 20), slice(4, 20), slice(4, 20))  # warp_image pads with 0 HU
    before = torch.mean((moving - fixed)[inner] ** 2).item()
    after = torch.mean((warp_image(moving, refined) - fixed)[inner] ** 2).item()
    assert after < 0.2 * before
    centre = refined[0, 0, 8:16, 8:16, 8:16].mean().item()
    assert 1.0 < centre < 3.0  # moved the right way (pull map: +2 along axis 0), by about the right amount
    assert torch.equal(instance.refine(zero, moving, fixed, instance.IOConfig(iters=0)), zero)


def test_instance_optimisation_refuses_bad_settings_and_shapes():
    with pytest.raises(ValueError, match="similarity"):
        instance.IOConfig(10, similarity="ncc")
    with pytest.raises(ValueError, match="moving_hu"):
        instance.refine(torch.zeros(1, 3, 8, 8, 8), torch.zeros(1, 3, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8),
                        instance.IOConfig(5))


def test_sigterm_stops_like_ctrl_c_keeps_the_pairs_done_and_a_rerun_does_only_the_rest(tiny_dataset, tmp_path,
                                                                                       monkeypatch):
    """``docker stop``, Slurm and ``timeout`` send SIGTERM: without a handler the run died with no run.json,
    and the rerun redid every pair."""
    import os
    import signal

    from l2r_submit.registration import stages

    calls = []
    refine = stages.refine

    def refine_then_terminated(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # during the second pair, as a kill would come
            os.kill(os.getpid(), signal.SIGTERM)
        return refine(*args, **kwargs)

    monkeypatch.setattr(stages, "refine", refine_then_terminated)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    args = ["predict", tiny_dataset, "--out", out, "--device", "cpu", "--quiet", "--stages", "adam",
            "--io-iters", "2"]
    res = invoke(*args)
    assert res.exit_code == 143 and "stopped by SIGTERM: 1 pairs done are kept" in res.output, res.output
    status = {k: e["status"] for k, e in json.loads((out / "run.json").read_text())["pairs"].items()}
    assert sorted(status.values()) == ["done", "failed", "not tried"] and len(list(out.glob("disp_*"))) == 1
    assert signal.getsignal(signal.SIGTERM) == before  # the handler was put back
    monkeypatch.setattr(stages, "refine", refine)
    assert "2 pairs done, 1 skipped, 0 failed" in invoke(*args).output


def test_summary_says_its_wall_time_is_per_pair_tried_when_a_pair_failed():
    """A failed pair takes little time: the wall time per pair tried is then not comparable with the steps'
    means over the pairs done, and the line says which is which."""
    from l2r_submit.registration.run_record import summary

    done = {"status": "done", "seconds": 12.0}
    manifest = {"pairs": {"a": done, "b": {"status": "failed", "seconds": 0.1}}, "run_seconds": 12.2,
                "seconds_per_pair": {"read": 0.5, "adam": 10.0, "write": 1.5}, "pipelined": True, "device": "cpu"}
    line, bad = summary(manifest)
    assert line == ("1 pairs done, 0 skipped, 1 failed, 6.10 s per pair tried (per pair done: read 0.50, "
                    "adam 10.00, write 1.50 s; pipelined) (cpu)") and bad == 1
    manifest["pairs"]["b"] = done
    assert "6.10 s per pair (read 0.50, adam 10.00, write 1.50 s; pipelined)" in summary(manifest)[0]


def test_qc_on_a_rerun_that_skips_pairs_draws_missing_or_stale_pictures_from_the_kept_fields(tiny_dataset, tmp_path):
    """A skipped pair with no picture needed --overwrite (every field computed again) to get one; a picture of
    an earlier field (the pair redone without --qc) was kept as if it showed the current one."""
    out, qc = tmp_path / "out", tmp_path / "qc"
    args = ["predict", tiny_dataset, "--out", out, "--device", "cpu", "--quiet", "--stages", "adam",
            "--io-iters", "1", "--pairs", "0001_0002"]
    assert invoke(*args).exit_code == 0
    field = out / "disp_0001_0000_0002_0000.nii.gz"
    made = field.read_bytes()
    res = invoke(*args, "--qc", qc)
    assert res.exit_code == 0 and "0 pairs done, 1 skipped" in res.output
    assert "note: --qc: 1 pictures drawn from the fields kept on disk" in res.output, res.output
    picture = qc / "qc_0001_0002.png"
    assert picture.is_file() and field.read_bytes() == made  # drawn, not registered again
    # asked the same again with the picture recorded: the quick path
    assert "checked without loading torch" in invoke(*args, "--qc", qc).output
    first = picture.read_bytes()
    assert invoke(*args[:-4], "--io-iters", "3", "--pairs", "0001_0002").exit_code == 0  # redone, no --qc
    res = invoke(*args[:-4], "--io-iters", "3", "--pairs", "0001_0002", "--qc", qc)
    assert "0 pairs done, 1 skipped" in res.output and "1 pictures drawn" in res.output, res.output
    assert picture.read_bytes() != first  # the stale picture of the earlier field is replaced
    picture.unlink()  # a picture gone: the full path draws it again
    res = invoke(*args[:-4], "--io-iters", "3", "--pairs", "0001_0002", "--qc", qc)
    assert "checked without loading torch" not in res.output and picture.is_file()


def test_a_second_signal_during_the_clean_up_is_ignored_and_the_handlers_come_back():
    """Slurm signals every process and torchrun forwards SIGTERM again; a second Ctrl-C is common: none of
    them may cut short the clean-up that finishes the field being written and saves run.json."""
    import os
    import signal
    import time

    from l2r_submit.commands.common import Terminated, stop_signals

    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    cleaned = []
    with stop_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(2)
        except Terminated:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            cleaned.append(True)
    assert cleaned == [True]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_stages_given_in_another_order_are_said_to_run_in_pipeline_order(tiny_dataset, tmp_path):
    """--stages adam,search ran search then adam without a word."""
    res = invoke("predict", tiny_dataset, "--out", tmp_path / "out", "--device", "cpu", "--quiet",
                 "--stages", "adam,search", "--io-iters", "1", "--search-grid", "4", "--search-hw", "1",
                 "--pairs", "0001_0002")
    assert res.exit_code == 0 and ("note: --stages adam,search: stages always run in the order network, affine, "
                                   "search, adam; running search,adam") in res.output, res.output
    assert json.loads((tmp_path / "out" / "run.json").read_text())["settings"]["stages"] == ["search", "adam"]


def test_pairs_given_twice_are_both_taken(tiny_dataset, tmp_path):
    """--pairs A --pairs B ran only B."""
    out = tmp_path / "out"
    res = invoke("predict", tiny_dataset, "--out", out, "--device", "cpu", "--quiet", "--stages", "adam",
                 "--io-iters", "1", "--pairs", "0001_0002", "--pairs", "0002_0003")
    assert res.exit_code == 0 and "2 pairs done" in res.output, res.output
    assert sorted(json.loads((out / "run.json").read_text())["selected"]) == ["0001_0000<--0002_0000",
                                                                              "0002_0000<--0003_0000"]


def test_evaluate_with_missing_label_maps_is_refused_before_any_registration(tiny_dataset, tmp_path):
    """A test split has no labels: --evaluate registered every pair, then failed (exit 1)."""
    (tiny_dataset.parent / "labelsTr" / "AbdomenCTCT_0003_0000.nii.gz").unlink()
    out = tmp_path / "out"
    res = invoke("predict", tiny_dataset, "--out", out, "--device", "cpu", "--quiet", "--stages", "adam",
                 "--io-iters", "1", "--evaluate")
    assert res.exit_code == 2, res.output
    assert "--evaluate: 1 label map is missing for the selected pairs" in res.output
    assert "leave their pairs out with --pairs" in res.output and "test split" not in res.output
    assert not out.exists()
    res = invoke("predict", tiny_dataset, "--out", out, "--device", "cpu", "--quiet", "--stages", "adam",
                 "--io-iters", "1", "--evaluate", "--pairs", "0001_0002")  # pairs whose labels exist: go on
    assert res.exit_code == 0, res.output


def test_predict_config_takes_string_paths_and_refuses_the_wrong_kind_in_one_line(tiny_dataset, tmp_path):
    """From Python: a str out_dir failed deep inside ('str' / 'str'), a str dataset with an AttributeError,
    pairs="0001_0002" was split into characters, threads=0 was accepted."""
    from l2r_submit.core import dataset

    ds = dataset.load(tiny_dataset)
    cfg = predict.PredictConfig(ds, str(tmp_path / "out"), qc_dir=str(tmp_path / "qc"))
    assert cfg.out_dir == tmp_path / "out" and cfg.qc_dir == tmp_path / "qc"
    for kwargs, message in (({"pairs": "0001_0002"}, "pairs: a tuple of names, e.g. ('0001_0002',), not a string"),
                            ({"threads": 0}, "threads: 0 received, expected at least 1")):
        with pytest.raises(ValueError, match=re.escape(message)):
            predict.PredictConfig(ds, tmp_path / "out", **kwargs)
    with pytest.raises(ValueError, match="dataset: a loaded Dataset"):
        predict.PredictConfig(str(tiny_dataset), tmp_path / "out")
