"""gzip streams of .nii.gz files, compressed and decompressed by ISA-L when the ``isal`` package is
installed (the same DEFLATE format, faster), by Python's zlib otherwise. Bytes only; :mod:`l2r_submit.core.io`
owns the files and their atomic writes.
"""

from __future__ import annotations

import gzip
import os


def gzip_decompress(data: bytes) -> bytes:
    """Decompress a whole gzip file (every member), checking each member's CRC-32 and length.

    ISA-L is about twice as fast as zlib here; both raise ``gzip.BadGzipFile``/``EOFError`` on a damaged
    stream (and :func:`decompress_errors` for what else the codec raises).
    """
    try:
        from isal import igzip
    except ImportError:
        return gzip.decompress(data)
    return igzip.decompress(data)


def decompress_errors() -> tuple[type[BaseException], ...]:
    """The codec's own error class for a damaged stream, beside gzip's and zlib's (empty without isal)."""
    try:
        from isal import isal_zlib
    except ImportError:
        return ()
    return (isal_zlib.error,)


def gzip_compress(raw: bytes) -> bytes:
    """One standard gzip member (DEFLATE, CRC-32, length; mtime 0, so equal data give equal files).

    ISA-L at level 1: about 4x less CPU than zlib at level 1 (what ``nib.save`` uses) for a field, a few
    percent larger (``benchmarks/io_bench.py --write``); zlib level 1 without isal. Python's gzip and
    nibabel (4.0.2, the official pin, and later) read it.
    """
    try:
        from isal import igzip
    except ImportError:
        return gzip.compress(raw, compresslevel=1, mtime=0)
    return igzip.compress(raw, compresslevel=1, mtime=0)


def write_gzip(path: str | os.PathLike, raw: bytes) -> None:
    """Write ``raw`` to ``path`` as one gzip member (:func:`gzip_compress`); not atomic by itself."""
    with open(path, "wb") as fh:
        fh.write(gzip_compress(raw))
