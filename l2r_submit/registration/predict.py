"""Prediction: a dataset JSON in, one official displacement file per pair out.

Python API::

    from l2r_submit.core import dataset
    from l2r_submit.registration import predict
    cfg = predict.PredictConfig(dataset.load("test_data/AbdomenCTCT_dataset.json"), Path("out"))
    manifest = predict.run(cfg)        # also written to out/run.json

Per pair: read moving and fixed (HU), run the stages (:mod:`l2r_submit.registration.stages`: the network
moving->fixed on the whole volume under ``torch.inference_mode``, the global search, the Adam
refinement; each can be switched off), write the field atomically, optionally a QC picture. A pair
that fails is recorded and skipped; the others go on. A write failure that no later pair can escape
(disk full, read-only folder) stops the run early; the remaining pairs are recorded as not tried.
``run.json`` is written in every case.

Before any work: the pairs exist, no two pairs map to the same output file, the format suits the
volume shape, the weights load, and every output folder is a writable folder (made last, so that a
refusal leaves none behind). Each pair's entry in ``run.json``
records the settings its field was made with (:func:`run_record.run_settings`) and the size and sha256 of
each file written; a rerun skips a pair only when both still match (no decompression needed), and
redoes it otherwise.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from .. import __version__
from ..core import disp_files, folders, io, runtime
from ..core.frame import head_feet_axis
from ..nets import checkpoint, regnet
from . import pipeline, shards
from ..core.selection import select_pairs
from ..nets.config import check_min_shape
from .pair_plan import check_format_shape, plan_outputs, superseded_outputs
from .qc import draw_missing_qc, qc_path, write_qc
from .run_record import (both_ct, error_line, file_record, mixes_ct, modality_name, pair_inputs,  # noqa: F401
                         pair_settings, redo_reason, request_settings, run_settings, save_manifest, sha256,
                         stage_means, summary)
from ..core.dataset import Pair
from . import stages as stg
from .instance import IOConfig
from .search import SearchConfig
from .quick_rerun import DEFAULT_WEIGHTS_DIR, resolve_checkpoint  # noqa: F401 - torch-free, used by the CLI first
from .defaults import (DEFAULT_IO_FIELD, DEFAULT_IO_ITERS, DEFAULT_IO_ITERS_NO_SEARCH, DEFAULT_IO_REG,  # noqa: F401
                       DEFAULT_IO_REG_AFTER_SEARCH, DEFAULT_STAGES, NETWORK_STAGES, default_io, default_stage_names,
                       io_for_stages)
from .predict_config import PredictConfig, active_stages, default_stages  # noqa: F401 - the API's names, here too


def grid_note(pair: Pair, moving: io.Volume, fixed: io.Volume) -> str | None:
    """A note when the two images' voxel spacing or axis directions differ (the field ignores world geometry)."""
    if np.allclose(moving.affine[:3, :3], fixed.affine[:3, :3], rtol=1e-3, atol=1e-4):
        return None
    fmt = lambda v: "x".join(f"{x:.3g}" for x in v)  # noqa: E731
    return (f"{pair.moving.image}: spacing {fmt(moving.spacing)} mm or orientation differs from its fixed image "
            f"{pair.fixed.image} ({fmt(fixed.spacing)} mm); registering voxel grids as they are")


def predict_pair(net: regnet.RegistrationNet | None, pair: Pair, device: torch.device, io_cfg: IOConfig,
                 shape: tuple[int, ...], search: SearchConfig | None = None, ct: bool = True,
                 note: Callable[[str], None] | None = None) -> np.ndarray:
    """One pair's displacement, (3, I, J, K) float32 voxels on the fixed grid: the network (``net`` None:
    none), then the search (``search`` None: none), then the refinement (``io_cfg.iters`` 0: none).
    ``note`` receives a warning when the grids' geometry differs.

    Raises:
        ValueError: unreadable images, or shapes that differ from each other or from the dataset's.
    """
    names = tuple(n for n, on in (("network", net is not None), ("search", search is not None),
                                  ("adam", io_cfg.iters > 0)) if on)
    built = stg.build(names, net, search or SearchConfig(), io_cfg, ct)
    return register_pair(built, pair, device, shape, note)[0]


class PairImages(NamedTuple):
    """One pair's images as :func:`read_pair` returns them: ``moving``, ``fixed`` (I, J, K) float32 (HU for
    CT), ``note`` (a warning when the grids' geometry differs, or None) and ``long_axis``, the array axis
    that the fixed image's header points head to feet (:func:`l2r_submit.core.frame.head_feet_axis`; None:
    the header cannot say)."""

    moving: np.ndarray
    fixed: np.ndarray
    note: str | None
    long_axis: int | None


def read_pair(pair: Pair, shape: tuple[int, ...]) -> PairImages:
    """Read and check one pair's images (no torch: this runs in the reader thread of the pipelined path).

    Raises:
        ValueError: unreadable images, or shapes that differ from each other or from the dataset's.
    """
    moving_vol = io.read_volume(pair.moving.image, np.float32)
    fixed_vol = io.read_volume(pair.fixed.image, np.float32)
    message = grid_note(pair, moving_vol, fixed_vol)
    for case, arr in ((pair.moving, moving_vol.array), (pair.fixed, fixed_vol.array)):
        io.check_image(case.image, arr, shape)
    return PairImages(moving_vol.array, fixed_vol.array, message, head_feet_axis(fixed_vol.affine))


def in_hounsfield_units(image: np.ndarray, case, note: Callable[[str], None], details: dict) -> bool:
    """True for an image its dataset declares CT: False (and a note, and ``details["not_hu"]`` naming it) when
    no voxel is below 0. CT in Hounsfield units always has some (fat is about -100, air -1000); an image
    without is stored with an offset (HU + 1024) or is another modality (a JSON without ``modality`` is taken
    as CT). The CT window would clip it to a few values; its 1st-99th percentiles normalise it instead."""
    if float(image.min()) < 0.0:
        return True
    note(f"{case.image}: declared CT, but no voxel is below 0 (not Hounsfield units: stored as HU + 1024, or "
         "another modality): normalised by its 1st-99th percentiles, as another modality")
    details.setdefault("not_hu", []).append(str(case.image))
    return False


def register_pair(stages: list[stg.Stage], pair: Pair, device: torch.device, shape: tuple[int, ...],
                  note: Callable[[str], None] | None = None,
                  images: PairImages | None = None,
                  details: dict | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Run the stages on one pair: its displacement, (3, I, J, K) float32 voxels on the fixed grid, and
    the seconds of each stage. ``images``: what :func:`read_pair` returned (None: read them here); the
    search's centre axes follow the fixed image's header (:func:`l2r_submit.registration.stages.with_header`).
    ``note`` receives a warning when the grids' geometry differs. ``details``: filled with what the
    stages chose (:func:`l2r_submit.registration.stages.run`).

    Raises:
        ValueError: unreadable images, or shapes that differ from each other or from the dataset's.
    """
    moving_np, fixed_np, message, long_axis = images if images is not None else read_pair(pair, shape)
    del images
    stages = stg.with_header(stages, long_axis)
    if message and note is not None:
        note(message)
    moving = torch.from_numpy(moving_np)[None, None].to(device)
    fixed = torch.from_numpy(fixed_np)[None, None].to(device)
    del moving_np, fixed_np
    disp, seconds = stg.run(stages, moving, fixed, details=details)
    return disp[0].float().cpu().numpy(), seconds


def check_before_work(cfg: PredictConfig) -> tuple[list[Pair], dict[Pair, list[Path]]]:
    """Everything that can be known wrong before loading weights: pairs, images, names, format (the output
    folders are made and probed later, once the weights are read: a refusal leaves no empty folder behind).

    Returns:
        The pairs to predict and each pair's output files.

    Raises:
        ValueError: one line naming the first problem found.
    """
    ds = cfg.dataset
    pairs = select_pairs(ds, cfg.split, cfg.pairs)
    if not pairs:
        which = f"split '{cfg.split}'" if cfg.split else "registration_val nor registration_test (both empty)"
        raise ValueError(f"{ds.source}: no pairs to predict in {which}")
    stg.parse_stages(",".join(cfg.stages or DEFAULT_STAGES))  # unknown or repeated names: one line, before any work
    if not active_stages(cfg):
        raise ValueError("no registration stage left to run: --stages, --no-network and --io-iters 0 remove "
                         "them all (it would write zero fields)")
    if cfg.fmt == "npz2020" and cfg.names != "short":
        raise ValueError(f"format npz2020 with names {cfg.names}: the 2020 evaluator reads only disp_FFFF_MMMM.npz, "
                         "and the later ones fail a half-resolution field under the long name; use names short")
    check_format_shape(cfg.fmt, ds.shape, ds.source)
    plan = plan_outputs(cfg.out_dir, pairs, cfg.fmt, cfg.names)
    missing = set(ds.missing_files(pairs, images=True, labels=False))
    if missing and all(p.moving.image in missing or p.fixed.image in missing for p in pairs):
        # no pair could be registered (a wrong data folder, most often); otherwise only their pairs fail
        raise ValueError("missing image files: " + ", ".join(map(str, sorted(missing))))
    return pairs, plan


def run(cfg: PredictConfig) -> dict:
    """Predict every selected pair (of this shard); returns the run manifest (also written to
    ``out_dir/run.json``, or to this shard's record, merged into run.json: :mod:`l2r_submit.registration.shards`).

    A pair that fails (unreadable image, a write error) is recorded with a one-line error and the
    others go on; after a write error no later pair can escape (disk full, read-only), the rest are
    recorded as ``not tried``. Entries of pairs this run does not select are kept from the earlier run.json.
    With ``cfg.pipeline`` the next pair is read and the previous field written while a pair is computed
    (:mod:`l2r_submit.registration.pipeline`); the fields are the same either way.

    Raises:
        ValueError: bad input found before any work (images missing for every pair, unknown pairs, name collisions,
            an unwritable output folder, bad weights).
    """
    ds = cfg.dataset
    pairs, plan = check_before_work(cfg)
    if cfg.shard is not None:
        pairs = shards.shard_pairs(pairs, *cfg.shard)
    ckpt_path = resolve_checkpoint(cfg.checkpoint, cfg.weights_dir)
    device = runtime.resolve_device(cfg.device)
    runtime.configure_threads(shards.threads_per_rank(cfg.threads, cfg.shard, device.type))
    allocator = runtime.keep_freed_memory() if cfg.keep_freed_memory else "system default (not asked)"
    if cfg.shard is not None and device.type == "cuda":
        device = torch.device("cuda", cfg.shard[0] % torch.cuda.device_count())  # one GPU per rank
    net, _ = checkpoint.load(ckpt_path, map_location=device)
    names = active_stages(cfg)
    if "network" in names:
        check_min_shape(ds.shape, net.cfg.divisor, ds.source)
    built: dict[tuple[bool, bool], list] = {}  # the stages per (moving, fixed) CT flags of a pair

    def stages_for(pair: Pair, images: tuple | None = None) -> list:
        flags = (ds.is_ct_image(pair.moving), ds.is_ct_image(pair.fixed))
        if images is not None:  # a declared CT image that cannot be in HU is normalised as another modality
            flags = tuple(ct and in_hounsfield_units(image, case, note, chosen.setdefault(pair, {}))
                          for ct, image, case in zip(flags, images[:2], (pair.moving, pair.fixed)))
        if flags not in built:
            built[flags] = stg.build(names, net, cfg.search, cfg.io, flags, cfg.affine)
        return built[flags]

    mixed = [p.key for p in pairs if ds.is_ct_image(p.moving) != ds.is_ct_image(p.fixed)]
    if mixed and "adam" in names and cfg.io.similarity == "mse":
        raise ValueError(f"--io-similarity mse compares intensities, and {len(mixed)} pairs are CT against "
                         f"another modality (first: {mixed[0]}): use mind")
    with folders.writable_folder(cfg.out_dir, "--out"):  # the last refusals: made only now (a refused --qc
        if cfg.qc_dir is not None:  # removes the --out folder made for it)
            folders.check_writable(cfg.qc_dir, "--qc")
    for folder in (cfg.out_dir, cfg.qc_dir):
        if folder is not None:
            folders.clean_stale_tmp(folder)
    ckpt_sha = sha256(ckpt_path)
    modality = modality_name(ds)
    settings = run_settings(cfg, names, ckpt_sha, modality)
    for message in shards.set_aside_unreadable(cfg.out_dir):
        print(f"note: {message}", file=sys.stderr)
    earlier = shards.previous_pairs(cfg.out_dir)
    manifest = {
        "package_version": __version__, "checkpoint": str(ckpt_path), "checkpoint_sha256": ckpt_sha,
        "model_config": net.cfg.to_dict(), "device": str(device), "threads": torch.get_num_threads(),
        "pipelined": cfg.pipeline, "allocator": allocator,
        "settings": request_settings(cfg, names, modality),
        "selected": [p.key for p in pairs],
        "request": cfg.request, "field_settings": settings,
        # replaced pair by pair: a stopped run still describes every file in the folder (a shard: its own pairs)
        "pairs": dict(earlier) if cfg.shard is None else {},
    }
    if cfg.shard is not None:
        manifest["shard"] = shards.shard_name(cfg.shard)
    record = cfg.out_dir / shards.record_name(cfg.shard)
    notes: list[str] = []

    def note(message: str) -> None:
        if not notes:  # once per run
            print(f"note: {message} (not repeated for further pairs)", file=sys.stderr)
        notes.append(message)

    entries: dict[Pair, dict] = {}
    own_settings = {pair: pair_settings(settings, both_ct(ds, pair, earlier.get(pair.key)))  # what its field
                    for pair in pairs}  # depends on
    chosen: dict[Pair, dict] = {}  # what the stages chose per pair (register_pair's details), for its entry
    todo: list[Pair] = []
    hashes: dict[Path, str] = {}  # each image hashed once per run, and only when its status changed
    for pair in pairs:
        outputs = plan[pair]
        before = earlier.get(pair.key)
        inputs = pair_inputs(pair, before.get("inputs") if isinstance(before, dict) else None, hashes)
        entry: dict = {"outputs": [p.name for p in outputs], "inputs": inputs}
        own = own_settings[pair]
        reason = "--overwrite" if cfg.overwrite else redo_reason(before, outputs, own, inputs)
        if reason is None:
            manifest["pairs"][pair.key] = {**entry, "status": "skipped (outputs exist)", "settings": own,
                                           "files": earlier[pair.key]["files"]}
            for key in ("search_start", "affine", "intensity", "io_iters", "not_hu", "qc"):  # how its field was
                # made (not_hu also decides its settings on the next rerun: run_record.both_ct), its picture
                if key in earlier[pair.key]:
                    manifest["pairs"][pair.key][key] = earlier[pair.key][key]
            continue
        earlier_files = before.get("outputs") if isinstance(before, dict) else None
        if any(p.exists() for p in outputs) or any(  # its field on disk, under this run's names or earlier ones
                isinstance(n, str) and Path(n).name == n and (cfg.out_dir / n).is_file()
                for n in (earlier_files if isinstance(earlier_files, list) else [])):
            entry["redone"] = reason
        entries[pair] = entry
        todo.append(pair)

    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="predict", unit="pair", file=sys.stderr, disable=not cfg.progress)
    stopped: str | None = None
    qc_failed: dict[Pair, str] = {}  # pairs whose field was written but whose QC picture failed

    def write(pair: Pair, disp: np.ndarray) -> dict:
        outputs = plan[pair]
        written = disp_files.write_disp(disp, cfg.out_dir, pair.fixed.id, pair.moving.id, cfg.fmt, cfg.names,
                                pair.fixed.modality, pair.moving.modality)
        if sorted(written) != sorted(outputs):  # the names planned (and checked for collisions) are the names written
            raise RuntimeError(f"wrote {[p.name for p in written]}, planned {[p.name for p in outputs]}")
        files = file_record(written)
        if cfg.qc_dir is not None:
            try:
                write_qc(qc_path(cfg.qc_dir, pair), pair, disp)
            except Exception as exc:  # the field is written and kept: only its picture failed (said in done())
                qc_failed[pair] = error_line(exc)
        return files

    def done(pair: Pair, outcome: pipeline.Outcome) -> bool:
        nonlocal stopped
        entry = entries[pair]
        io_steps = ("read", "write")
        entry["stage_seconds"] = {k: v for k, v in outcome.seconds.items() if k not in io_steps}
        entry["io_seconds"] = {k: outcome.seconds[k] for k in io_steps if k in outcome.seconds}
        entry["seconds"] = round(sum(outcome.seconds.values()), 3)
        entry.update(chosen.pop(pair, {}))
        if outcome.error is None:
            # recorded as this run's images decided (not_hu: a declared CT read by its percentiles may run
            # iters_non_ct), so that the next rerun compares what it will compute
            entry.update(settings=pair_settings(settings, both_ct(ds, pair, entry)), files=outcome.value, status="done")
            if pair in qc_failed:  # the run's exit code says it (run_record.summary)
                entry["qc_error"] = qc_failed[pair]
                bar.write(f"error: {pair.key}: QC picture {qc_path(cfg.qc_dir, pair)} not drawn ({qc_failed[pair]}); "
                          "the field is written", file=sys.stderr)
            elif cfg.qc_dir is not None:  # the picture drawn from this field (a later --qc rerun keeps it)
                entry["qc"] = str(qc_path(cfg.qc_dir, pair).absolute())
            replaced = superseded_outputs(earlier.get(pair.key), entry["outputs"], cfg.out_dir)
            if replaced:
                entry["replaced"] = replaced
        else:
            exc = outcome.error
            message = error_line(exc)
            entry.update(status="failed", error=message)
            stale = [p.name for p in plan[pair] if p.exists()]
            if stale:  # an earlier run's files, not made with this run's settings: say so, keep them
                entry["stale_outputs"] = stale
            bar.write(f"error: {pair.key}: {message}", file=sys.stderr)
            if isinstance(exc, OSError) and exc.errno in folders.NO_FURTHER_WRITES:
                stopped = f"stopped after {message}"
        manifest["pairs"][pair.key] = entry
        save_manifest(record, manifest)
        bar.update()
        return stopped is not None

    def not_tried(pair: Pair, why: str | None) -> dict:
        entry = {**entries[pair], "status": "not tried", "error": why}
        stale = [p.name for p in plan[pair] if p.exists()]
        if stale:  # an earlier run's field, kept: not made with this run's settings
            entry["stale_outputs"] = stale
        return entry

    t0 = time.perf_counter()
    try:
        left = pipeline.run_items(
            todo, lambda pair: read_pair(pair, ds.shape),
            lambda pair, images: register_pair(stages_for(pair, images), pair, device, ds.shape, note, images,
                                               chosen.setdefault(pair, {})),
            write, done, overlap=cfg.pipeline)
    except KeyboardInterrupt:  # Ctrl-C: record where it stopped, then stop
        current = next((p for p in todo if manifest["pairs"].get(p.key) is not entries[p]), None)
        if current is not None:  # the pair being computed (the one being written was recorded first)
            manifest["pairs"][current.key] = {**entries[current], "status": "failed", "error": "interrupted"}
        for pair in todo:  # the pairs after it: recorded as not tried, as when a full disk stops the run
            if pair is not current and manifest["pairs"].get(pair.key) is not entries[pair]:
                manifest["pairs"][pair.key] = not_tried(pair, "interrupted")
        save_manifest(record, manifest)
        raise
    finally:
        bar.close()
    for pair in left:
        manifest["pairs"][pair.key] = not_tried(pair, stopped)
    manifest["run_seconds"] = round(time.perf_counter() - t0, 3)
    manifest["seconds_per_pair"] = stage_means([manifest["pairs"][p.key] for p in todo])
    this_run = [manifest["pairs"][p.key] for p in pairs]
    redone = [e["redone"] for e in this_run if e["status"] == "done" and e.get("redone", "").startswith("made with")]
    if redone:
        print(f"note: {len(redone)} pairs redone, their fields were {redone[0]}", file=sys.stderr)
    other = [e["redone"] for e in this_run if e["status"] == "done"
             and not e.get("redone", "made with").startswith(("made with", "--overwrite"))]
    replaced = [n for e in this_run if e["status"] == "done" for n in e.get("replaced", [])]
    if replaced:  # another --format or --names: the earlier file is gone, not left beside the new one
        print(f"note: {len(replaced)} earlier field files removed, each replaced by its pair's field under this "
              f"run's format and names (e.g. {replaced[0]}; run.json lists them under 'replaced')", file=sys.stderr)
    if other:  # a field changed or unreadable, other images, no record: said too (run.json has each reason)
        print(f"note: {len(other)} pairs redone, e.g. because {other[0]}", file=sys.stderr)
    if cfg.qc_dir is not None:
        skipped = [p for p in pairs if manifest["pairs"][p.key]["status"].startswith("skipped")]
        drawn = draw_missing_qc(cfg.qc_dir, cfg.fmt, ds.shape, skipped, manifest["pairs"], plan)
        if drawn:
            print(f"note: --qc: {drawn} pictures drawn from the fields kept on disk (pairs skipped, whose "
                  f"picture in {cfg.qc_dir} was missing or not of that field)", file=sys.stderr)
    not_tried = sum(e["status"] == "not tried" for e in this_run)
    if stopped and not_tried:  # with none left, the pair's own error said it all
        print(f"error: {not_tried} pairs not tried: {stopped}", file=sys.stderr)
    save_manifest(record, manifest)
    if cfg.shard is not None:
        merged = shards.merge(cfg.out_dir, cfg.shard[1])
        if "manifest_error" not in manifest and merged is not None:
            manifest["merged"] = merged
    return manifest
