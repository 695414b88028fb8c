import pytest

from l2r_submit import container


def test_defaults_follow_the_organisers_mounts(tmp_path):
    (tmp_path / "AbdomenCTCT_dataset.json").write_text("{}")
    (tmp_path / "other.json").write_text("{}")
    argv = container.build_argv(["--format", "npz"], data_dir=tmp_path, output_dir=tmp_path / "out")
    assert argv == ["predict", str(tmp_path / "AbdomenCTCT_dataset.json"), "--format", "npz", "--out", str(tmp_path / "out")]


def test_explicit_json_and_out_pass_through(tmp_path):
    argv = container.build_argv(["/x/d.json", "--out", "/o", "--io-iters", "3"], data_dir=tmp_path)
    assert argv == ["predict", "/x/d.json", "--out", "/o", "--io-iters", "3"]


def test_missing_or_ambiguous_json(tmp_path):
    with pytest.raises(ValueError, match="no dataset JSON"):
        container.find_dataset_json(tmp_path)
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(ValueError, match="several JSON files"):
        container.find_dataset_json(tmp_path)


def test_help_mentions_pass_through(capsys):
    with pytest.raises(SystemExit) as exc:
        container.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "/l2r/data" in out and "--io-iters" in out
