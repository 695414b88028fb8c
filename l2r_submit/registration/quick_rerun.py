"""A rerun with nothing to do, found without importing torch (torch's import is most of such a rerun).

Each ``l2r predict`` run records in run.json what it was asked (:func:`request_key`: the command's
options, the weights' sha256 and the sha256 of this package's code, so a default changed in the code
is another request) and the settings its fields were made with (``field_settings``). A rerun asked the
very same is a no-op when every pair it selects is recorded there as finished with those settings,
from the same images, and every file still holds what was recorded
(:func:`l2r_submit.registration.run_record.unchanged`). Anything else goes the full way
(:func:`l2r_submit.registration.predict.run`), which decides pair by pair.

Also here, torch-free: the shipped weights' folder and the checkpoint choice with its checksum.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..core.dataset import Dataset, qc_name
from ..core.selection import select_pairs
from .pair_plan import plan_outputs
from .run_record import _plain, both_ct, pair_inputs, pair_settings, same_inputs, sha256, unchanged

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"  # package data: found in an installed wheel too


def resolve_checkpoint(path: Path | None, weights_dir: Path) -> Path:
    """The checkpoint to use; files listed in ``weights_dir/manifest.json`` must match their sha256.

    Raises:
        ValueError: no checkpoint given and no shipped default, a missing file, or a checksum mismatch.
    """
    manifest_path = weights_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"files": {}}
    if path is None:
        if "default" not in manifest:
            raise ValueError(f"{manifest_path}: no shipped weights; pass --checkpoint")
        path = weights_dir / manifest["default"]
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; --checkpoint names a checkpoint file (e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    listed = manifest["files"].get(path.name) if path.resolve().parent == weights_dir.resolve() else None
    if listed is not None and sha256(path) != listed["sha256"]:
        raise ValueError(f"{path}: sha256 does not match {manifest_path} (corrupt or replaced weights file)")
    return path


def code_sha256() -> str:
    """sha256 of this package's Python files (paths in the package and contents), in path order."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def request_key(options: dict, checkpoint: Path) -> dict:
    """What a run was asked: ``options`` (every option of the command, JSON-plain), the weights' sha256
    and the code's (:func:`code_sha256`)."""
    return {"options": _plain(options), "checkpoint_sha256": sha256(checkpoint), "code_sha256": code_sha256()}


def nothing_to_do(ds: Dataset, out_dir: Path, split: str | None, wanted: tuple[str, ...] | None, fmt: str,
                  names: str, key: dict | None, qc_dir: Path | None = None) -> int:
    """The number of pairs selected when ``out_dir/run.json`` was written by a finished run asked exactly
    ``key`` and holds every one of them as finished with that run's settings, from the same images, with
    its files as recorded (and, with ``qc_dir``, each pair's QC picture there); 0 whenever anything differs
    or cannot be told here (no record, shard records, a selection error, a missing picture: the full run
    reports it)."""
    if key is None or any(out_dir.glob("run.shard*of*.json")):
        return 0
    try:
        data = json.loads((out_dir / "run.json").read_text())
        pairs = select_pairs(ds, split, wanted)
        plan = plan_outputs(out_dir, pairs, fmt, names)
    except (OSError, ValueError):
        return 0
    if not isinstance(data, dict) or data.get("request") != key or "run_seconds" not in data:
        return 0
    settings, entries = data.get("field_settings"), data.get("pairs")
    if not isinstance(settings, dict) or not isinstance(entries, dict):
        return 0
    hashes: dict[Path, str] = {}
    for pair in pairs:
        entry = entries.get(pair.key)
        if (not isinstance(entry, dict) or entry.get("status") not in ("done", "skipped (outputs exist)")
                or entry.get("settings") != pair_settings(settings, both_ct(ds, pair, entry))
                or not same_inputs(entry.get("inputs"), pair_inputs(pair, entry.get("inputs"), hashes))):
            return 0
        files = entry.get("files")
        if not isinstance(files, dict) or sorted(files) != sorted(p.name for p in plan[pair]):
            return 0
        try:
            if not all(isinstance(files[p.name], dict) and unchanged(p, files[p.name]) for p in plan[pair]):
                return 0
        except OSError:
            return 0
        picture = None if qc_dir is None else qc_dir / qc_name(pair.key)
        if picture is not None and (entry.get("qc") != str(picture.absolute()) or not picture.is_file()):
            return 0  # missing, or not drawn from this field: the full path draws it
    if hashes:  # an image's status moved (same contents): the full path records its new status once
        return 0
    return len(pairs)
