"""benchmarks/peer_bench.run_convexadam reuses a recorded ConvexAdam run only for the same pairs and settings:
a search-only run (lambda_weight 0) must never stand in for the full method, nor the reverse."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peer_bench  # noqa: E402


def _record(folder: Path, settings: dict | None) -> None:
    folder.mkdir(parents=True)
    record = {"seconds": {"a": 10.0, "b": 30.0}, "peak_rss_kib": 2**20}
    if settings is not None:
        record["settings"] = settings
    (folder / "seconds.json").write_text(json.dumps(record))


def test_a_run_with_the_same_settings_is_reused(tmp_path):
    _record(tmp_path / "ca", {"lambda_weight": 0})
    seconds, rss = peer_bench.run_convexadam(Path("/bin/false"), ["a", "b"], tmp_path / "ca", 2, {"lambda_weight": 0})
    assert (seconds, rss) == (20.0, 1.0)


def test_a_record_without_settings_is_the_default_run(tmp_path):
    _record(tmp_path / "ca", None)  # written before settings were recorded: ConvexAdam's defaults
    assert peer_bench.run_convexadam(Path("/bin/false"), ["a"], tmp_path / "ca", 2) == (10.0, 1.0)


@pytest.mark.parametrize("recorded, asked", [({}, {"lambda_weight": 0}), ({"lambda_weight": 0}, None),
                                             (None, {"lambda_weight": 0})])
def test_other_settings_run_again(tmp_path, recorded, asked):
    _record(tmp_path / "ca", recorded)
    with pytest.raises(SystemExit, match="ConvexAdam failed"):  # /bin/false stands for the peer Python
        peer_bench.run_convexadam(Path("/bin/false"), ["a"], tmp_path / "ca", 2, asked)


def test_other_pairs_run_again(tmp_path):
    _record(tmp_path / "ca", {})
    with pytest.raises(SystemExit, match="ConvexAdam failed"):
        peer_bench.run_convexadam(Path("/bin/false"), ["a", "c"], tmp_path / "ca", 2)
