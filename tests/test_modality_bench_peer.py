"""benchmarks/modality_bench.peer_registration: ConvexAdam's field, (I, J, K, 3) with channel c along array axis c,
comes back in our contract (3, I, J, K) with the images in ConvexAdam's argument order (fixed first); without
the package, one line says how to get it."""

import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import modality_bench  # noqa: E402


def _fake_convexadam(monkeypatch, calls):
    def convex_adam_pt(img_fixed, img_moving, device=None):
        calls.append((img_fixed, img_moving))
        shape = img_fixed.shape
        return np.stack([np.full(shape, c + 1.0) for c in range(3)], axis=-1)  # channel c = c + 1

    module = types.ModuleType("convexAdam.convex_adam_MIND")
    module.convex_adam_pt = convex_adam_pt
    monkeypatch.setitem(sys.modules, "convexAdam", types.ModuleType("convexAdam"))
    monkeypatch.setitem(sys.modules, "convexAdam.convex_adam_MIND", module)


def test_field_is_channel_first_and_fixed_is_passed_first(monkeypatch):
    calls = []
    _fake_convexadam(monkeypatch, calls)
    moving, fixed = np.zeros((4, 5, 6), np.float32), np.ones((4, 5, 6), np.float32)
    disp = modality_bench.peer_registration()(moving, fixed)
    assert disp.shape == (3, 4, 5, 6) and disp.dtype == np.float32
    assert [float(disp[c].mean()) for c in range(3)] == [1.0, 2.0, 3.0]
    assert (calls[0][0] == 1).all() and (calls[0][1] == 0).all()  # fixed first, as ConvexAdam's signature


def test_missing_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "convexAdam", None)  # import fails
    with pytest.raises(SystemExit, match="setup_peer.sh"):
        modality_bench.peer_registration()


def test_a_pair_keeps_its_seed_when_others_are_left_out():
    """--pairs must reproduce a full run: each pair's MR-like images are seeded by its place among all val
    pairs, not among those named (a subset gave 0.428 / 0.433 where the full run gave 0.435 / 0.441)."""
    pairs = [types.SimpleNamespace(key=k) for k in ("0001_0000<--0004_0000", "0004_0000<--0006_0000",
                                                     "0006_0000<--0004_0000")]
    assert [n for n, _ in modality_bench.numbered_pairs(pairs, None)] == [0, 1, 2]
    chosen = modality_bench.numbered_pairs(pairs, "0006_0000<--0004,0004_0000<--0006")
    assert [(n, p.key) for n, p in chosen] == [(1, "0004_0000<--0006_0000"), (2, "0006_0000<--0004_0000")]
    assert modality_bench.numbered_pairs(pairs, "9999") == []
