"""Output folders: can they be written, does an output replace an input, and the temporary files a killed
run left in them.

:func:`l2r_submit.core.io.atomic_write` names its temporary files ``.tmp-<pid>-XXXXXXXX<suffix>`` beside the
final file; a process killed between the write and the rename leaves one behind.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

_TMP_NAME = re.compile(r"^\.tmp-(?:(\d+)-)?[A-Za-z0-9_]{6,}(\.nii\.gz|\.[A-Za-z0-9]+)?$")
LEGACY_TMP_AGE_S = 3600.0  # a temporary file without a pid is taken as stale after an hour


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():  # a previous life of this pid (a restarted container): nothing written yet
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def clean_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files of :func:`atomic_write`'s naming that a killed process left in ``folder``.

    A ``.tmp-<pid>-*`` file is stale when that process no longer runs (so a concurrent writer's file
    is left alone); an older ``.tmp-*`` file without a pid when it is over an hour old. Call this at
    the start of a run, before the run's own writes.

    Returns:
        The files removed (a missing folder: none).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = _TMP_NAME.match(entry.name)
        if not match or not entry.is_file():
            continue
        pid = match.group(1)
        try:
            stale = (not _pid_alive(int(pid))) if pid else time.time() - entry.stat().st_mtime > LEGACY_TMP_AGE_S
            if stale:
                entry.unlink()
                removed.append(entry)
        except OSError:  # vanished meanwhile, or not ours to remove: leave it
            continue
    return removed


def check_not_a_file(folder: Path, what: str) -> None:
    """An output folder must not be an existing file, nor lie under one (a cheap check, before any work).

    Raises:
        ValueError: naming the path, the option it came from (``what``) and the file in the way.
    """
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                place = "" if parent == folder else f" ({parent} is a file)"
                raise ValueError(f"{folder}: {what} names an existing file, not a folder{place}")
            return


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """``a`` and ``b`` name one file: the same path once resolved, or (both existing) the same inode."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_not_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], what: str) -> None:
    """An output file must not be one of the command's inputs (it would be replaced before or while
    it is read).

    Raises:
        ValueError: naming the output, the option it came from (``what``) and the input.
    """
    for path in inputs:
        if path is not None and same_file(out, path):
            also = "" if Path(path) == Path(out) else f" ({path})"
            raise ValueError(f"{out}: {what} would overwrite an input of this command{also}; write to another file")


def check_writable(folder: str | os.PathLike, what: str) -> list[Path]:
    """Create ``folder`` if needed and prove a file can be created and removed in it. Returns the folders
    it made (``folder`` and missing parents, deepest first).

    Raises:
        ValueError: the path (or a parent) is a file, or the folder cannot be created or written,
            naming the path and the option it came from (``what``).
    """
    folder = Path(folder)
    check_not_a_file(folder, what)
    whole = Path(os.path.abspath(folder))  # '..' resolved first: 'a/../b' must not count an existing b as made
    made = [p for p in (whole, *whole.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{folder}: {what} is not writable ({exc.strerror or exc})") from None
    return made


@contextmanager
def writable_folder(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """:func:`check_writable`, then the block; when the block raises ValueError (a refusal: bad weights,
    too few images) the folders made here are removed again as far as they are still empty, so a refused
    command leaves no empty output folder behind. Anything written in them is kept."""
    made = check_writable(folder, what)
    try:
        yield
    except ValueError:
        for path in made:  # deepest first
            try:
                path.rmdir()
            except OSError:  # not empty (something was written), or gone: keep it and its parents
                break
        raise


LOCK_NAME = ".l2r-in-use.lock"


@contextmanager
def exclusive_use(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold ``folder`` for this process for the block: a second run into the same folder at the same time
    (two trainings would each write half of the checkpoints and logs) is refused in one line. The lock is
    an exclusive ``flock`` on ``folder/.l2r-in-use.lock``, released when the block ends or the process dies;
    the file holds the pid of the run that holds it. The file stays (removing a lock file is racy), except
    when the block raised ValueError (a refusal), so that a refused run leaves its new folder empty.

    Raises:
        ValueError: another process holds ``folder``; naming its pid.
    """
    import fcntl  # POSIX only, as the project

    path = Path(folder) / LOCK_NAME
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read().strip() or "unknown"
            raise ValueError(f"{folder}: another run is writing this {what} now (pid {pid}); wait for it to end, "
                             f"or give another {what}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        except ValueError:
            path.unlink(missing_ok=True)
            raise


NO_FURTHER_WRITES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
"""errno values after which no later write to the same folder can succeed (disk full, read-only, denied)."""
