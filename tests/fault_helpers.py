"""Shared pieces of the fault suites (test_faults.py, test_faults_weak.py): a tiny checkpoint, the CLI
runner, and ways to damage files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from l2r_submit.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ("0001_0000<--0002_0000", "0001_0000<--0003_0000", "0002_0000<--0003_0000")
FIELDS = [f"disp_{k[:9]}_{k[12:]}.nii.gz" for k in PAIRS]


@pytest.fixture
def ckpt(tiny_ckpt):
    return tiny_ckpt


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def predict_args(ds: Path, out: Path, ckpt: Path, *extra) -> list:
    return ["predict", ds, "--out", out, "--checkpoint", ckpt, "--device", "cpu", "--quiet", "--io-iters", "0", *extra]


def error_lines(res) -> list[str]:
    """stderr lines; a traceback or an uncaught exception fails the test."""
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    return [line for line in res.stderr.splitlines() if line.strip()]


def flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))


def flip_crc(path: Path) -> None:
    """Flip a bit of the gzip trailer's stored CRC-32: the data decompress fine, the check fails."""
    data = bytearray(path.read_bytes())
    data[-6] ^= 0x01
    path.write_bytes(bytes(data))


def image(ds: Path, case: str) -> Path:
    return ds.parent / "imagesTr" / f"AbdomenCTCT_{case}_0000.nii.gz"


def deny_files_in(monkeypatch, folder: Path) -> None:
    """Make every file creation in ``folder`` fail as in a folder without write permission (root ignores
    chmod, so the tests cannot make one): ``tempfile.mkstemp(dir=folder)``, the writability probe of
    :func:`l2r_submit.core.folders.check_writable`, raises EACCES."""
    import errno
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == Path(folder):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def fail_replace(monkeypatch, hit, code: int | None = None) -> None:
    """Make ``os.replace`` (the last step of every atomic write) fail with OSError ``code`` (ENOSPC by
    default, a full disk) for each destination ``hit(Path)`` is true of."""
    import errno
    import os

    code = errno.ENOSPC if code is None else code
    real = os.replace

    def replace(src, dst):
        if hit(Path(dst)):
            raise OSError(code, os.strerror(code))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
