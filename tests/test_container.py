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


def test_out_equals_form_is_kept_and_a_bare_json_name_is_read_from_the_data_mount(tmp_path, monkeypatch):
    (tmp_path / "My_dataset.json").write_text("{}")
    # --out=/o was followed by the default --out /l2r/output, which click takes (the last wins)
    argv = container.build_argv(["--out=/o"], data_dir=tmp_path, output_dir=tmp_path / "out")[2:]
    assert "--out=/o" in argv and str(tmp_path / "out") not in argv
    monkeypatch.chdir(tmp_path / "..")  # the image's working folder is not the data mount
    argv = container.build_argv(["My_dataset.json"], data_dir=tmp_path, output_dir=tmp_path / "out")
    assert argv[1] == str(tmp_path / "My_dataset.json")


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
