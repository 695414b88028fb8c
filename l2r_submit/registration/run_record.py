"""What run.json records per pair, writing it, and the rerun check that reads it.

Each finished pair's entry holds the images it was made from, the settings its field depends on
(:func:`output_settings`: derived from the config, so a setting added later is compared too) and the
size, sha256, inode, mtime and ctime of each file written. :func:`redo_reason` keeps a pair only when
all of these still match; a file whose status is unchanged is not read at all (:func:`unchanged`), one
whose status changed (a copy, a touch) is hashed: hashing a compressed field is over ten times faster
than decompressing and validating it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from .. import __version__
from ..core import io
from ..core.dataset import Dataset, Pair, is_ct_name


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


RUN_ONLY_FIELDS = frozenset({"dataset", "out_dir", "split", "pairs", "checkpoint", "weights_dir", "device",
                             "qc_dir", "overwrite", "threads", "progress", "pipeline", "shard", "request",
                             "keep_freed_memory"})
"""PredictConfig (:mod:`l2r_submit.registration.predict_config`) fields that do not change what a pair's field holds (where
to read and write, which pairs, how fast, whether the allocator keeps freed memory). Every other field, including
any added later, is part of :func:`output_settings` and so of the rerun check."""


def _plain(value: object) -> object:
    """A config value as run.json stores it (dataclasses as dicts, tuples as lists, paths as strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    return json.loads(json.dumps(value, default=str))  # tuples -> lists, Paths -> str: what run.json holds


def output_settings(cfg: object, checkpoint_sha256: str) -> dict:
    """The settings a pair's field depends on: every config field not in :data:`RUN_ONLY_FIELDS`, plus
    the weights' sha256 (which file they came from does not matter). JSON-plain, to compare with run.json."""
    out = {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in RUN_ONLY_FIELDS}
    out["checkpoint_sha256"] = checkpoint_sha256
    return out


def mixes_ct(ds: Dataset) -> bool:
    """True when the dataset's channels are CT and another modality (each image is then normalised as its
    own channel's)."""
    return len({is_ct_name(v) for v in ds.modalities.values()}) > 1


def both_ct(ds: Dataset, pair: Pair, entry: object = None) -> bool:
    """True when both images of ``pair`` are CT (by their channels' modality): the refinement then runs
    ``IOConfig.iters``, not ``iters_non_ct``. ``entry``: the pair's earlier record in run.json; one that
    lists ``not_hu`` (a declared CT image without a voxel below 0, normalised as another modality, so the
    pair may run ``iters_non_ct``) makes it False. That is decided on the images; :func:`redo_reason` redoes a
    pair whose images changed anyway."""
    if isinstance(entry, dict) and entry.get("not_hu"):
        return False
    return ds.is_ct_image(pair.moving) and ds.is_ct_image(pair.fixed)


def modality_name(ds: Dataset) -> str:
    """The dataset's modality as run.json records it: channel "0"'s name, or every channel's
    (``"0: MR, 1: CT"``) when the JSON mixes CT with another modality (only then are images normalised
    differently from channel "0"; MR with PET keeps the old name, so earlier fields are not redone)."""
    if mixes_ct(ds):
        return ", ".join(f"{k}: {v}" for k, v in sorted(ds.modalities.items()))
    return ds.modality


def run_settings(cfg: object, names: tuple[str, ...], checkpoint_sha256: str, modality: str) -> dict:
    """What the run's fields depend on, as recorded in run.json (``field_settings``): the config's
    settings (:func:`output_settings`, so a field added later counts too), but only those of the stages
    that run (``names``), the weights only when the network runs, the dataset's modality and the package
    version (a new version may compute other fields from the same settings). Each pair records and
    compares :func:`pair_settings` of it."""
    out = output_settings(cfg, checkpoint_sha256)
    out["stages"] = list(names)
    del out["network"]  # said by "stages"
    for stage, keys in (("network", ("checkpoint_sha256",)), ("affine", ("affine",)), ("search", ("search",)),
                        ("adam", ("io",))):
        if stage not in names:
            for key in keys:
                out.pop(key, None)
    return {**out, "modality": modality, "package_version": __version__}


def request_settings(cfg: object, names: tuple[str, ...], modality: str) -> dict:
    """run.json's top-level ``settings``: the run's options, with a stage's settings only when the stage
    runs (``names``), so the record never shows settings that changed nothing (``--io-iters 0`` drops
    ``io``, ``--no-network`` makes ``network`` false)."""
    out = {"split": cfg.split, "format": cfg.fmt, "names": cfg.names, "network": "network" in names,
           "overwrite": cfg.overwrite, "stages": list(names), "modality": modality}
    for stage, key, value in (("adam", "io", cfg.io), ("search", "search", cfg.search),
                              ("affine", "affine", cfg.affine)):
        if stage in names:
            out[key] = asdict(value)
    return out


def pair_settings(settings: dict, ct_pair: bool) -> dict:
    """:func:`run_settings` as one pair's field depends on them: a pair of two CT images (``ct_pair``,
    :func:`both_ct`) leaves out the refinement's ``iters_non_ct``, which it does not use, so changing
    that count redoes only the pairs with a non-CT image (even those that end up not using it, an image
    floored against a CT in the soft-tissue window: that is decided on the images, after this check)."""
    if not ct_pair or not isinstance(settings.get("io"), dict):
        return settings
    return {**settings, "io": {k: v for k, v in settings["io"].items() if k != "iters_non_ct"}}


STAT_KEYS = ("inode", "mtime_ns", "ctime_ns")
"""What :func:`file_record` keeps of a file's status besides its size, to skip hashing it on a rerun."""


def _stat_record(st: os.stat_result) -> dict[str, int]:
    return {"inode": st.st_ino, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def file_record(paths: list[Path]) -> dict[str, dict]:
    """Size, sha256, inode, modification and status-change times (ns) of each file, keyed by name
    (recorded at write time, checked at rerun: :func:`redo_reason`)."""
    out = {}
    for path in paths:
        digest = sha256(path)
        st = path.stat()  # after hashing: a write during the hash shows as another mtime/ctime at rerun
        out[path.name] = {"size": st.st_size, "sha256": digest, **_stat_record(st)}
    return out


def unchanged(path: Path, want: dict) -> bool:
    """The file still holds what ``want`` (its :func:`file_record` entry) describes.

    Without reading it when its size, inode, mtime and ctime are all as recorded: any write to a file
    moves its mtime and ctime, ``utime`` can put the mtime back but moves the ctime, which no call can
    set, and a file put in its place (rename, copy) has another inode. Otherwise (or for a record
    without them) the file is hashed and compared with the recorded sha256, so a copied folder is kept.

    Raises:
        OSError: the file is missing or unreadable.
    """
    st = path.stat()
    if st.st_size != want.get("size"):
        return False
    if all(k in want for k in STAT_KEYS) and _stat_record(st) == {k: want[k] for k in STAT_KEYS}:
        return True
    return sha256(path) == want.get("sha256")


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings as one level of dotted names (``io.iters``)."""
    out: dict = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def settings_diff(old: object, new: dict) -> str:
    """``io.iters 0 -> 100, ...``: the settings that differ, as dotted names."""
    if not isinstance(old, dict):
        return "no settings recorded"
    a, b = _flat(old), _flat(new)
    return ", ".join(f"{k} {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in sorted(set(a) | set(b))
                     if a.get(k) != b.get(k))


def redo_reason(entry: object, outputs: list[Path], settings: dict, inputs: dict[str, dict]) -> str | None:
    """Why a pair must be redone, or None when its recorded outputs can be kept.

    Kept only when run.json's entry says the pair was made from the same images (``inputs``: the pair's
    :func:`pair_inputs` now) with the same settings and every output file still holds what was recorded
    (:func:`unchanged`: its status, or else its sha256; never decompressed).
    """
    if not isinstance(entry, dict) or entry.get("status") not in ("done", "skipped (outputs exist)"):
        return "no finished record"
    recorded = entry.get("settings")
    if isinstance(recorded, dict):  # a key recorded by an earlier version and now known to change no field
        recorded = {k: v for k, v in recorded.items() if k not in RUN_ONLY_FIELDS}
    if recorded != settings:
        return f"made with other settings: {settings_diff(recorded, settings)}"
    if not same_inputs(entry.get("inputs"), inputs):
        return "made from other images (or the images changed since)"
    files = entry.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(p.name for p in outputs):
        return "no file record"
    for path in outputs:
        want = files[path.name]
        try:
            if not isinstance(want, dict) or not unchanged(path, want):
                return f"{path.name} changed since it was written"
        except OSError:
            return f"{path.name} missing or unreadable"
    return None


def pair_inputs(pair: Pair, earlier: object = None, hashes: dict[Path, str] | None = None) -> dict[str, dict]:
    """The pair's images: absolute paths (so a rerun from another working folder still matches), size,
    status (:data:`STAT_KEYS`) and sha256, so that an image replaced at the same path is noticed even with
    its size and mtime put back (``cp -p``, ``touch -r``: the ctime and inode still move).

    The sha256 is taken over from ``earlier`` (the pair's ``inputs`` in the last run.json) when the image's
    path, size and status are still as recorded there, else computed once per image (``hashes``: a cache
    shared over the pairs of a run)."""
    out: dict[str, dict] = {}
    before = earlier if isinstance(earlier, dict) else {}
    for role, case in (("fixed", pair.fixed), ("moving", pair.moving)):
        path = Path(case.image).absolute()
        try:
            st = path.stat()
        except OSError:
            out[role] = {"path": str(path)}
            continue
        now = {"path": str(path), "size": st.st_size, **_stat_record(st)}
        old = before.get(role)
        if isinstance(old, dict) and "sha256" in old and all(old.get(k) == v for k, v in now.items()):
            now["sha256"] = old["sha256"]
        else:
            cache = hashes if hashes is not None else {}
            try:
                now["sha256"] = cache[path] if path in cache else cache.setdefault(path, sha256(path))
            except OSError:
                pass
        out[role] = now
    return out


def same_inputs(recorded: object, current: dict[str, dict]) -> bool:
    """The images a field was made from (``recorded``, its run.json ``inputs``) are those of ``current``
    (:func:`pair_inputs` now): the same paths and contents (sha256). A record of an earlier version,
    without sha256, is compared by path, size and mtime, as that version did."""
    if not isinstance(recorded, dict) or set(recorded) != set(current):
        return False
    for role, now in current.items():
        old = recorded[role]
        if not isinstance(old, dict) or old.get("path") != now["path"] or "size" not in now:
            return False
        keys = ("sha256",) if "sha256" in old else ("size", "mtime_ns")
        if any(old.get(k) is None or old.get(k) != now.get(k) for k in keys):
            return False
    return True


def stage_means(entries: list[dict]) -> dict[str, float]:
    """Mean seconds per pair of each step (read, network, search, adam, write) over the pairs done."""
    steps = [{"read": e.get("io_seconds", {}).get("read", 0.0), **e.get("stage_seconds", {}),
              "write": e.get("io_seconds", {}).get("write", 0.0)} for e in entries if e.get("status") == "done"]
    names = dict.fromkeys(n for s in steps for n in s)
    return {n: round(sum(s.get(n, 0.0) for s in steps) / len(steps), 3) for n in names}


def summary(manifest: dict) -> tuple[str, int]:
    """A one-line summary of a predict run and the number of problems (pairs failed or not tried, QC pictures
    not drawn, an unwritten record): the pairs' states, this run's
    wall seconds per pair tried and each step's mean seconds per pair done (steps overlap when pipelined)."""
    run_pairs = [manifest["pairs"][k] for k in manifest.get("selected", manifest["pairs"]) if k in manifest["pairs"]]
    states = [p["status"] for p in run_pairs]
    done = [p["seconds"] for p in run_pairs if p["status"] == "done"]
    failed = states.count("failed")
    not_tried = states.count("not tried")
    skipped = sum(s.startswith("skipped") for s in states)
    rate = ""
    if done and "run_seconds" in manifest:
        steps = ", ".join(f"{k} {v:.2f}" for k, v in manifest.get("seconds_per_pair", {}).items())
        how = "pipelined" if manifest.get("pipelined") else "sequential"
        wall = manifest["run_seconds"] / (len(done) + failed)
        rate = (f", {wall:.2f} s per pair ({steps} s; {how})" if not failed  # a failed pair is quick: say so
                else f", {wall:.2f} s per pair tried (per pair done: {steps} s; {how})")
    elif done:
        rate = f", {sum(done) / len(done):.1f} s per pair"
    no_qc = sum("qc_error" in p for p in run_pairs if p["status"] == "done")
    extra = (f", {not_tried} not tried" if not_tried else "") + (f", {no_qc} QC pictures not drawn" if no_qc else "")
    bad = failed + not_tried + no_qc + ("manifest_error" in manifest)
    return f"{len(done)} pairs done, {skipped} skipped, {failed} failed{extra}{rate} ({manifest['device']})", bad


def error_line(exc: BaseException) -> str:
    """A pair's error in one line: the file and the problem for OS errors, the type for unexpected ones."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: cannot be written or read ({exc.strerror or exc})"
    line = io.one_line(exc)
    if not isinstance(exc, (ValueError, RuntimeError, MemoryError, OSError)):
        line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return (line or type(exc).__name__)[:500]


def save_manifest(path: Path, manifest: dict) -> None:
    """Write run.json (``path``); a failure is recorded in ``manifest['manifest_error']`` (printed once), not raised."""
    try:
        _write_manifest(path, manifest)
        manifest.pop("manifest_error", None)
    except OSError as exc:
        if "manifest_error" not in manifest:
            print(f"error: {error_line(exc)}", file=sys.stderr)
        manifest["manifest_error"] = error_line(exc)


def _write_manifest(path: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2) + "\n"
    io.atomic_write(path, lambda tmp: Path(tmp).write_text(text))
