"""Throughput paths of predict: the pipelined loop (reader and writer threads) against the sequential
one, and pairs shared out over ranks (--shard K/N, torchrun) against one process."""

import errno
import json
import os
import subprocess
import sys
import threading

import nibabel as nib
import numpy as np
import pytest

from l2r_submit.core import disp_files, io

from conftest import invoke

PAIRS = ["0001_0000<--0002_0000", "0001_0000<--0003_0000", "0002_0000<--0003_0000"]
FIELDS = ["disp_0001_0000_0002_0000.nii.gz", "disp_0001_0000_0003_0000.nii.gz", "disp_0002_0000_0003_0000.nii.gz"]


@pytest.fixture
def ckpt(tiny_ckpt):
    return tiny_ckpt


def args(dataset, out, ckpt, *extra):
    return ["predict", dataset, "--out", out, "--checkpoint", ckpt, "--device", "cpu", "--quiet", "--threads", "1",
            *extra]


def field(path):
    """The stored field, bit for bit (decompressed: the gzip header of a .nii.gz holds no content)."""
    return np.asanyarray(nib.load(path).dataobj)


def test_pipelined_and_sequential_paths_write_identical_fields(tiny_dataset, ckpt, tmp_path):
    runs = {}
    for how, flag in (("sequential", ["--sequential"]), ("pipelined", [])):
        out = tmp_path / how
        res = invoke(*args(tiny_dataset, out, ckpt, "--io-iters", "2", *flag))
        assert res.exit_code == 0, res.output
        assert "3 pairs done, 0 skipped, 0 failed" in res.output and f"s; {how})" in res.output
        manifest = json.loads((out / "run.json").read_text())
        assert manifest["pipelined"] is (how == "pipelined") and manifest["run_seconds"] > 0
        for entry in manifest["pairs"].values():  # per-stage seconds, adding up to the pair's seconds
            assert list(entry["stage_seconds"]) == ["network", "adam"] and list(entry["io_seconds"]) == ["read", "write"]
            steps = {**entry["stage_seconds"], **entry["io_seconds"]}
            assert entry["seconds"] == pytest.approx(sum(steps.values()), abs=0.01)
        assert list(manifest["seconds_per_pair"]) == ["read", "network", "adam", "write"]
        runs[how] = out
    for name in FIELDS:
        a, b = field(runs["sequential"] / name), field(runs["pipelined"] / name)
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b) and np.abs(a).max() > 0


def test_a_reader_thread_failure_fails_that_pair_only(tiny_dataset, ckpt, tmp_path, monkeypatch):
    real = io.read_volume
    threads, failed = set(), []

    def flaky(path, *a, **k):
        threads.add(threading.current_thread().name)
        if "0003" in str(path) and not failed:  # the first pair that reads image 0003
            failed.append(path)
            raise ValueError(f"{path}: corrupt gzip stream")
        return real(path, *a, **k)

    monkeypatch.setattr(io, "read_volume", flaky)
    out = tmp_path / "out"
    res = invoke(*args(tiny_dataset, out, ckpt, "--io-iters", "0"))
    assert res.exit_code == 1 and "2 pairs done, 0 skipped, 1 failed" in res.output
    assert all(name.startswith("l2r-read") for name in threads)  # read in the reader thread
    pairs = json.loads((out / "run.json").read_text())["pairs"]
    assert pairs[PAIRS[1]]["status"] == "failed" and "corrupt gzip stream" in pairs[PAIRS[1]]["error"]
    assert pairs[PAIRS[0]]["status"] == pairs[PAIRS[2]]["status"] == "done"
    assert sorted(p.name for p in out.glob("disp_*")) == [FIELDS[0], FIELDS[2]]


def test_a_writer_thread_failure_fails_that_pair_only(tiny_dataset, ckpt, tmp_path, monkeypatch):
    real = disp_files.write_disp
    threads = set()

    def flaky(disp, out_dir, fixed_id, moving_id, *a, **k):
        threads.add(threading.current_thread().name)
        if (fixed_id, moving_id) == ("0001", "0003"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(out_dir / FIELDS[1]))
        return real(disp, out_dir, fixed_id, moving_id, *a, **k)

    monkeypatch.setattr(disp_files, "write_disp", flaky)
    out = tmp_path / "out"
    res = invoke(*args(tiny_dataset, out, ckpt, "--io-iters", "0"))
    assert res.exit_code == 1 and "2 pairs done, 0 skipped, 1 failed" in res.output
    assert threads and all(name.startswith("l2r-write") for name in threads)  # written in the writer thread
    assert f"error: {PAIRS[1]}: {out / FIELDS[1]}: cannot be written or read (Input/output error)" in res.output
    pairs = json.loads((out / "run.json").read_text())["pairs"]
    assert [pairs[k]["status"] for k in PAIRS] == ["done", "failed", "done"]
    assert sorted(p.name for p in out.glob("disp_*")) == [FIELDS[0], FIELDS[2]]


def test_two_torchrun_processes_write_the_same_fields_as_one(tiny_dataset, ckpt, tmp_path, repo_root):
    one = tmp_path / "one"
    assert invoke(*args(tiny_dataset, one, ckpt, "--io-iters", "2")).exit_code == 0
    two = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "l2r_submit", *map(str, args(tiny_dataset, two, ckpt, "--io-iters", "2"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0/2: 2 pairs done" in proc.stdout and "rank 1/2: 1 pairs done" in proc.stdout
    for name in FIELDS:
        assert np.array_equal(field(one / name), field(two / name))
    merged = json.loads((two / "run.json").read_text())
    assert sorted(merged["selected"]) == PAIRS and all(merged["pairs"][k]["status"] == "done" for k in PAIRS)
    assert merged["shards"]["0/2"]["finished"] and merged["shards"]["1/2"]["finished"]


def test_a_killed_rank_s_pairs_are_redone_by_a_rerun(tiny_dataset, ckpt, tmp_path):
    out = tmp_path / "out"
    res = invoke(*args(tiny_dataset, out, ckpt, "--io-iters", "0", "--shard", "0/2"))
    assert res.exit_code == 0 and "rank 0/2: 2 pairs done" in res.output  # rank 1 never ran (killed)
    merged = json.loads((out / "run.json").read_text())
    assert merged["shards"]["1/2"] == {"finished": False, "device": None, "run_seconds": None}
    res = invoke(*args(tiny_dataset, out, ckpt, "--io-iters", "0"))  # a rerun, here in one process
    assert res.exit_code == 0 and "1 pairs done, 2 skipped, 0 failed" in res.output
    pairs = json.loads((out / "run.json").read_text())["pairs"]
    assert [pairs[k]["status"] for k in PAIRS] == ["skipped (outputs exist)", "done", "skipped (outputs exist)"]
    assert invoke(*args(tiny_dataset, out, ckpt, "--shard", "2/2")).exit_code == 2


def test_a_rerun_over_unchanged_fields_reads_none_of_them(tiny_dataset, ckpt, tmp_path, monkeypatch):
    from l2r_submit.registration import run_record

    out = tmp_path / "out"
    assert invoke(*args(tiny_dataset, out, ckpt, "--io-iters", "0")).exit_code == 0
    hashed = []
    real = run_record.sha256
    monkeypatch.setattr(run_record, "sha256", lambda path: hashed.append(path.name) or real(path))
    res = invoke(*args(tiny_dataset, out, ckpt, "--io-iters", "0"))
    assert "0 pairs done, 3 skipped" in res.output
    assert not [name for name in hashed if name.startswith("disp_")]  # no field read (only the weights hashed)


def test_a_field_rewritten_in_place_with_its_mtime_put_back_is_redone(tiny_dataset, ckpt, tmp_path):
    out = tmp_path / "out"
    assert invoke(*args(tiny_dataset, out, ckpt, "--io-iters", "0")).exit_code == 0
    path = out / FIELDS[1]
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # same size, same inode, other content
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the modification time as recorded
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_ino == st.st_ino
    res = invoke(*args(tiny_dataset, out, ckpt, "--io-iters", "0"))
    assert "1 pairs done, 2 skipped" in res.output  # the ctime moved: hashed, found changed, redone
    entry = json.loads((out / "run.json").read_text())["pairs"][PAIRS[1]]
    assert entry["redone"] == f"{FIELDS[1]} changed since it was written"


def test_a_copied_folder_is_still_skipped_by_its_hashes(tiny_dataset, ckpt, tmp_path):
    import shutil

    out = tmp_path / "out"
    assert invoke(*args(tiny_dataset, out, ckpt, "--io-iters", "0")).exit_code == 0
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)  # other inodes and ctimes, the same bytes
    assert "0 pairs done, 3 skipped" in invoke(*args(tiny_dataset, copy, ckpt, "--io-iters", "0")).output


RERUN = """
import sys
from l2r_submit.cli import main
try:
    main(sys.argv[1:], prog_name="l2r")
except SystemExit as exc:
    assert not exc.code, exc.code
assert "torch" not in sys.modules
print("no torch")
"""


def test_a_rerun_with_nothing_to_do_never_imports_torch(tiny_dataset, ckpt, tmp_path, repo_root):
    out = tmp_path / "out"
    run = [str(a) for a in args(tiny_dataset, out, ckpt, "--io-iters", "0")]
    assert invoke(*run).exit_code == 0
    proc = subprocess.run([sys.executable, "-c", RERUN, *run], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(repo_root), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 pairs done, 3 skipped, 0 failed: nothing to do" in proc.stdout and "no torch" in proc.stdout
    res = invoke(*run[:-1], "1")  # another request (--io-iters 1): the full way, which redoes every pair
    assert "3 pairs done, 0 skipped" in res.output


def test_the_quick_rerun_check_leaves_a_pair_of_other_settings_to_the_full_run(tiny_dataset, ckpt, tmp_path):
    out = tmp_path / "out"
    run = args(tiny_dataset, out, ckpt, "--io-iters", "0")
    assert invoke(*run).exit_code == 0
    record = json.loads((out / "run.json").read_text())
    record["pairs"][PAIRS[2]]["settings"]["fmt"] = "npz"  # e.g. left by an interrupted run with other settings
    (out / "run.json").write_text(json.dumps(record))
    res = invoke(*run)
    assert "1 pairs done, 2 skipped, 0 failed" in res.output and "nothing to do" not in res.output
    assert json.loads((out / "run.json").read_text())["pairs"][PAIRS[2]]["redone"].startswith("made with other settings")


def test_the_pipeline_keeps_one_item_read_ahead_and_one_written_at_most():
    from l2r_submit.registration import pipeline

    log, lock = [], threading.Lock()

    def event(name, i):
        with lock:
            log.append((name, i))

    def read(i):
        event("read", i)
        return i

    def compute(i, data):
        event("compute", i)
        return data * 10, {"net": 0.0}

    def write(i, result):
        event("write", i)
        return result

    seen = []
    left = pipeline.run_items(list(range(6)), read, compute, write, lambda i, o: seen.append((i, o.value)) or False)
    assert left == [] and seen == [(i, 10 * i) for i in range(6)]
    at = {e: n for n, e in enumerate(log)}
    for i in range(4):  # the read of i+2 starts only once i is computed; the write of i+1 only once i is written
        assert at[("read", i + 2)] > at[("compute", i)] and at[("write", i + 1)] > at[("write", i)]


def test_an_interrupt_finishes_and_reports_the_field_being_written_first():
    from l2r_submit.registration import pipeline

    written = []

    def compute(i, data):
        if i == 2:
            raise KeyboardInterrupt
        return data, {}

    def write(i, result):
        written.append(i)
        return i

    reported = []
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_items(list(range(4)), lambda i: i, compute, write, lambda i, o: reported.append(i) or False)
    assert written == reported == [0, 1]


@pytest.mark.parametrize("overlap", [True, False])
def test_ctrl_c_during_a_write_finishes_that_write_on_both_paths(overlap):
    """The sequential path wrote in the calling thread, so Ctrl-C during a write dropped that field."""
    import signal
    import time

    from l2r_submit.registration import pipeline

    import threading

    written, reported = [], []
    main = threading.main_thread().ident

    def write(i, result):
        if i == 1:  # Ctrl-C while the main thread waits for this write. Sent to the main thread itself: a
            signal.pthread_kill(main, signal.SIGINT)  # process-wide os.kill may be taken by this thread,
            time.sleep(0.3)  # and in a full run it sometimes did not interrupt the main thread's wait
        written.append(i)
        return i

    before = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # whatever an earlier test left,
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # mask and handler alike
    try:
        with pytest.raises(KeyboardInterrupt):
            pipeline.run_items(list(range(4)), lambda i: i, lambda i, data: (data, {}), write,
                               lambda i, o: reported.append(i) or False, overlap=overlap)
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    assert 1 in written and 1 in reported, (signal.SIGINT in before, written, reported)
