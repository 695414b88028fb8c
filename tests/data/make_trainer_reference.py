"""Writes ``trainer_reference.pt``: the weights and log rows of a tiny training run made by the training
loop as it was before the shared trainer (commit 6a38548, ``train.run`` as one function).

Run from the repository root at that commit (``git worktree add /tmp/old 6a38548``)::

    PYTHONPATH=/tmp/old python tests/data/make_trainer_reference.py tests/data/trainer_reference.pt

``tests/test_trainer.py`` trains the same run with the current code and compares.
"""

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import write_tiny_dataset  # noqa: E402

from l2r_submit.core import dataset
from l2r_submit.training import train  # noqa: E402

SETTINGS = dict(epochs=2, crop=(16, 16, 16), val_every=1, lr=1e-2, num_workers=0, device="cpu", batch_size=2, threads=1,
                **{"loss.n_classes": 5})


def reference_dataset(root: Path) -> dataset.Dataset:
    """Six tiny subjects, one val pair (0001, 0002): four training subjects, two steps of batch 2 per epoch."""
    path = write_tiny_dataset(root, n_subjects=6)
    spec = json.loads(path.read_text())
    spec["registration_val"] = spec["registration_val"][:1]
    path.write_text(json.dumps(spec))
    return dataset.load(path)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        ds = reference_dataset(Path(tmp) / "data")
        cfg = train.preset_config("symmetric", "tiny", **SETTINGS)
        train.run(cfg, ds, Path(tmp) / "run", progress=False)
        ckpt = torch.load(Path(tmp) / "run" / "last.pt", weights_only=True)
        rows = [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads(ckpt["history"])]
        torch.save({"state_dict": ckpt["state_dict"], "history": json.dumps(rows)}, sys.argv[1])
        print(rows)
