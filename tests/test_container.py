from pathlib import Path

import pytest

from l2r_submit import container


def test_defaults_follow_the_organisers_mounts(tmp_path):
    (tmp_path / "AbdomenCTCT_dataset.json").write_text("{}")
    (tmp_path / "other.json").write_text("{}")
    argv = container.build_argv(["--format", "npz"], data_dir=tmp_path, output_dir=tmp_path / "out")
    assert argv == ["predict", str(tmp_path / "AbdomenCTCT_dataset.json"), "--format", "npz", "--out", str(tmp_path / "out")]


def test_explicit_json_and_out_pass_through(tmp_path):
    (tmp_path / "d.json").write_text("{}")
    json_path = str(tmp_path / "d.json")
    argv = container.build_argv([json_path, "--out", "/o", "--io-iters", "3"], data_dir=tmp_path,
                                mounted=lambda p: False)  # --out given: the default folder is not asked about
    assert argv == ["predict", json_path, "--out", "/o", "--io-iters", "3"]


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
    assert "--out is optional: it defaults to /l2r/output" in out  # predict's own list says required


MOUNTINFO = """\
1170 1089 0:120 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/var/lib/docker/l
1171 1170 0:123 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1180 1170 8:1 /srv/ct\\040data /l2r/data ro,relatime - ext4 /dev/sda1 rw
{extra}"""


def test_without_an_output_mount_the_run_is_refused_before_any_work(tmp_path):
    """Without -v HOST:/l2r/output the fields went to the container's own folder, lost with --rm, exit 0."""
    (tmp_path / "AbdomenCTCT_dataset.json").write_text("{}")
    table = tmp_path / "mountinfo"
    cases = {"": False, "1181 1170 8:1 /home/o/out /l2r/output rw - ext4 /dev/sda1 rw": True,
             "1181 1170 8:1 /home/o/l2r /l2r rw - ext4 /dev/sda1 rw": True,  # a volume on the folder above
             "1181 1170 8:1 /home/o/x /l2r/output2 rw - ext4 /dev/sda1 rw": False}
    for extra, expected in cases.items():
        table.write_text(MOUNTINFO.format(extra=extra))
        assert container.is_mounted(Path("/l2r/output"), table) is expected, extra
    table.write_text(MOUNTINFO.format(extra="1181 1170 8:1 /x /l2r/my\\040out rw - ext4 /dev/sda1 rw"))
    assert container.is_mounted(Path("/l2r/my out"), table)  # the kernel writes the space as \\040
    assert not container.is_mounted(Path("/l2r/output"), table)
    with pytest.raises(ValueError, match="/l2r/output: no folder is mounted there, so the fields would be lost"):
        container.build_argv([], data_dir=tmp_path, output_dir=Path("/l2r/output"), mounted=lambda p: False)
    out = tmp_path / "out"
    out.mkdir()
    assert container.build_argv([], data_dir=tmp_path, output_dir=out, mounted=lambda p: True)[-1] == str(out)


def test_an_unreadable_data_folder_or_a_host_path_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "AbdomenCTCT_dataset.json").write_text("{}")
    monkeypatch.setattr(container.os, "access", lambda path, mode: False)  # as for another --user (tests run as root)
    with pytest.raises(ValueError, match=rf"{data}: cannot be read by uid \d+ \(permission denied\)"):
        container.build_argv([], data_dir=data, mounted=lambda p: True)
    monkeypatch.setattr(container.os, "access", lambda path, mode: not mode & container.os.W_OK)  # read-only
    with pytest.raises(ValueError, match=rf"{tmp_path}: not writable by uid \d+ \(permission denied\); run with --user"):
        container.build_argv([str(data / "AbdomenCTCT_dataset.json")], data_dir=data, output_dir=tmp_path,
                             mounted=lambda p: True)  # the usual cause: --user is not the folder's owner
    monkeypatch.undo()
    with pytest.raises(ValueError, match="/home/me/AbdomenCTCT_dataset.json: not found in the container; paths are"):
        container.build_argv(["/home/me/AbdomenCTCT_dataset.json"], data_dir=data, mounted=lambda p: True)
    monkeypatch.setattr(container, "DATA_DIR", data)
    monkeypatch.setattr(container, "is_mounted", lambda p: False)
    with pytest.raises(SystemExit) as exc:
        container.main([])
    assert exc.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: /l2r/output: no folder is mounted there")


def test_help_anywhere_in_the_arguments_shows_help_without_a_data_mount(capsys):
    with pytest.raises(SystemExit) as exc:
        container.main(["--split", "test", "--help"])
    assert exc.value.code == 0 and "/l2r/data" in capsys.readouterr().out


def test_relative_out_and_qc_folders_are_taken_inside_the_output_mount(tmp_path):
    """A relative --qc went to the image's working folder (/opt/l2r_submit): not writable by --user, and lost."""
    (tmp_path / "AbdomenCTCT_dataset.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    argv = container.build_argv(["--qc", "qc", "--io-iters", "3"], data_dir=tmp_path, output_dir=out,
                                mounted=lambda p: True)
    assert argv[2:] == ["--qc", str(out / "qc"), "--io-iters", "3", "--out", str(out)]
    argv = container.build_argv(["--out=fields", "--qc=/abs/qc"], data_dir=tmp_path, output_dir=out,
                                mounted=lambda p: True)
    assert argv[2:] == ["--out", str(out / "fields"), "--qc=/abs/qc"]  # absolute paths are left as given
    with pytest.raises(ValueError, match="no folder is mounted there"):  # a relative --out needs the mount too
        container.build_argv(["--out", "fields"], data_dir=tmp_path, output_dir=out, mounted=lambda p: False)
    argv = container.build_argv(["--out", "/o"], data_dir=tmp_path, output_dir=out, mounted=lambda p: False)
    assert argv[2:] == ["--out", "/o"]


def test_relative_output_edge_cases(tmp_path):
    (tmp_path / "AbdomenCTCT_dataset.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()

    def argv(*args, mounted=True):
        return container.build_argv(list(args), data_dir=tmp_path, output_dir=out, mounted=lambda p: mounted)[2:]

    for empty in (["--out="], ["--qc", ""]):  # click would take '' as the working folder
        with pytest.raises(ValueError, match="an empty folder name"):
            argv(*empty)
    with pytest.raises(ValueError, match="--out ../fields: a relative folder is taken inside .* and this one leaves it"):
        argv("--out", "../fields")
    assert argv("--qc", "a/../b") == ["--qc", str(out / "b"), "--out", str(out)]
    # click uses the last --out: an absolute one last needs no mount; a relative one last does
    assert argv("--out", "rel", "--out", "/abs", mounted=False) == ["--out", str(out / "rel"), "--out", "/abs"]
    with pytest.raises(ValueError, match="so the QC pictures would be lost"):
        argv("--out", "/abs", "--qc", "qc", mounted=False)
