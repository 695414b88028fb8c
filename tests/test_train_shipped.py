"""weights/manifest.json is written by scripts/train_shipped.py from what ran (training itself stubbed)."""

import hashlib
import importlib.util
import json
import sys

from click.testing import CliRunner

from l2r_submit.nets import checkpoint, regnet


def _script(repo_root):
    spec = importlib.util.spec_from_file_location("train_shipped", repo_root / "scripts" / "train_shipped.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifest_agrees_with_the_run_and_keeps_the_lineage(repo_root, tmp_path, monkeypatch):
    script = _script(repo_root)
    calls = []

    def fake_run(cfg, ds, out, resume=False, epoch_data=None, max_seconds=None):
        calls.append((cfg, max_seconds))
        net = regnet.build("cpu-fast")
        checkpoint.save(out / "last.pt", net, epoch=1, metrics={"DSC": 0.5, "val_loss": 0.1, "epoch": 2})
        return {"epoch": 2}  # stopped by --max-minutes after 2 of the 5 epochs asked for

    monkeypatch.setattr(script.train, "run", fake_run)
    monkeypatch.setattr(script, "paint_from_labels", lambda labels, rng: None)  # the items are never drawn
    weights = tmp_path / "w"
    args = ["--epochs", "5", "--max-minutes", "1", "--items", "2", "--out", str(tmp_path / "run"),
            "--weights", str(weights)]
    monkeypatch.setattr(sys, "argv", ["scripts/train_shipped.py", *args])
    res = CliRunner().invoke(script.main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    cfg, max_seconds = calls[0]
    assert max_seconds == 60 and not cfg.exclude_val_subjects  # items from the val anatomies: last epoch shipped
    manifest = json.loads((weights / "manifest.json").read_text())
    [run] = manifest["trained_with"]
    assert run["command"] == "python scripts/train_shipped.py " + " ".join(args)
    assert (run["epochs_requested"], run["epochs_trained"]) == (5, 2)
    assert run["stopped_by"] == "--max-minutes 1 (after epoch 2)" and run["init"] is None
    shipped = weights / "l2r_cpu_fast.pt"
    assert manifest["files"]["l2r_cpu_fast.pt"]["sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert manifest["shipped_epoch"] == 2 and manifest["validation"] == {"DSC": 0.5, "val_loss": 0.1}
    assert json.loads(checkpoint.load(shipped)[1]["provenance"]) == manifest["trained_with"]

    init = tmp_path / "first.pt"
    init.write_bytes(shipped.read_bytes())
    args2 = ["--epochs", "2", "--init", str(init), "--out", str(tmp_path / "run2"), "--weights", str(weights)]
    monkeypatch.setattr(sys, "argv", ["scripts/train_shipped.py", *args2])
    res = CliRunner().invoke(script.main, args2, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    first, second = json.loads((weights / "manifest.json").read_text())["trained_with"]
    assert first == run and second["stopped_by"] == "--epochs"
    assert second["init"] == {"file": str(init), "sha256": hashlib.sha256(init.read_bytes()).hexdigest()}
