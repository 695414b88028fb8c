"""The shared trainer: registration training through it equals the loop it replaced."""

import json
import sys
from pathlib import Path

import torch

from l2r_submit import train

sys.path.insert(0, str(Path(__file__).parent / "data"))
from make_trainer_reference import SETTINGS, reference_dataset  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "trainer_reference.pt"


def test_registration_training_equals_the_loop_before_the_shared_trainer(tmp_path):
    """Same seed, same data: the weights and every logged number of the pre-trainer loop (commit 6a38548,
    stored by tests/data/make_trainer_reference.py), within float tolerance, on CPU."""
    ref = torch.load(REFERENCE, weights_only=True)
    ds = reference_dataset(tmp_path / "data")
    cfg = train.preset_config("symmetric", "tiny", **SETTINGS)
    train.run(cfg, ds, tmp_path / "run", progress=False)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["state_dict"].keys() == ref["state_dict"].keys()
    for key, value in ref["state_dict"].items():
        torch.testing.assert_close(ckpt["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    rows = [{k: v for k, v in r.items() if k not in ("seconds", "world_size")} for r in json.loads(ckpt["history"])]
    expected = json.loads(ref["history"])
    assert [list(r) for r in rows] == [list(r) for r in expected]
    for got, want in zip(rows, expected):
        for key in want:
            assert abs(got[key] - want[key]) <= 1e-5 * max(1.0, abs(want[key])), key
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 1
