"""Prediction: a dataset JSON in, one official displacement file per pair out.

Python API::

    from l2r_submit import dataset, predict
    cfg = predict.PredictConfig(dataset.load("test_data/AbdomenCTCT_dataset.json"), Path("out"))
    manifest = predict.run(cfg)        # also written to out/run.json

Per pair: read moving and fixed (HU), run the stages (:mod:`l2r_submit.stages`: the network
moving->fixed on the whole volume under ``torch.inference_mode``, the global search, the Adam
refinement; each can be switched off), write the field atomically, optionally a QC picture. A pair
that fails is recorded and skipped; the others go on. Pairs whose
outputs already exist and read back valid are skipped unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__, checkpoint, io, model, runtime
from .dataset import Dataset, Pair
from . import stages as stg
from .instance import IOConfig
from .search import SearchConfig

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_IO_ITERS = 100  # chosen by accuracy per second on CPU: see README, "Predict"
DEFAULT_STAGES = ("network", "adam")  # search is opt-in: it did not beat the zero field on real pairs (README)


@dataclass(frozen=True)
class PredictConfig:
    """What to predict and how.

    Attributes:
        dataset: pairs and shape.
        out_dir: output folder (created).
        split: ``val``/``test``; None = val when it has pairs, else test.
        pairs: subset, as case keys ``FFFF_0000<--MMMM_0000`` or ``FFFF_MMMM``; None = all.
        checkpoint: weights file; None = the shipped default of ``weights_dir``.
        weights_dir: folder with ``manifest.json`` (sha256 of each file, checked at load).
        fmt, names: output format and file names (see :func:`l2r_submit.io.write_disp`).
        device: ``auto``, ``cpu`` or ``cuda``.
        io: instance optimisation settings (``iters=0``: no ``adam`` stage).
        network: False drops the ``network`` stage (the next stage starts from a zero field).
        stages: the stages to run, among ``network``, ``search``, ``adam`` (always in that order).
        search: global search settings.
        qc_dir: write one QC picture per pair there.
        overwrite: redo pairs whose outputs exist.
        threads: CPU threads (None: all available).
        progress: progress bar on stderr.
    """

    dataset: Dataset
    out_dir: Path
    split: str | None = None
    pairs: tuple[str, ...] | None = None
    checkpoint: Path | None = None
    weights_dir: Path = DEFAULT_WEIGHTS_DIR
    fmt: str = "nii.gz"
    names: str = "long"
    device: str = "auto"
    io: IOConfig = field(default_factory=lambda: IOConfig(DEFAULT_IO_ITERS))
    network: bool = True
    stages: tuple[str, ...] = DEFAULT_STAGES
    search: SearchConfig = field(default_factory=SearchConfig)
    qc_dir: Path | None = None
    overwrite: bool = False
    threads: int | None = None
    progress: bool = True


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    listed = manifest["files"].get(path.name) if path.resolve().parent == weights_dir.resolve() else None
    if listed is not None and sha256(path) != listed["sha256"]:
        raise ValueError(f"{path}: sha256 does not match {manifest_path} (corrupt or replaced weights file)")
    return path


def select_pairs(ds: Dataset, split: str | None, wanted: tuple[str, ...] | None) -> list[Pair]:
    """Pairs of the split, optionally only those named (``FFFF_0000<--MMMM_0000`` or ``FFFF_MMMM``).

    Raises:
        ValueError: a named pair that is not in the split.
    """
    pairs = ds.pairs(split)
    if not wanted:
        return pairs
    by_name = {p.key: p for p in pairs} | {f"{p.fixed.id}_{p.moving.id}": p for p in pairs}
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        raise ValueError(f"--pairs: not in split '{split or 'default'}': {', '.join(unknown)}")
    return list(dict.fromkeys(by_name[w] for w in wanted))


def expected_outputs(out_dir: Path, pair: Pair, fmt: str, names: str) -> list[Path]:
    ext = io.disp_extension(fmt)
    return [out_dir / (stem + ext) for stem in io.disp_names(pair.fixed.id, pair.moving.id, names,
                                                               pair.fixed.modality, pair.moving.modality)]


def outputs_complete(paths: list[Path], shape: tuple[int, ...], fmt: str) -> bool:
    """True when every file exists and reads back as a valid field of the right shape."""
    try:
        for p in paths:
            io.read_disp(p, shape, "2020" if fmt == "npz2020" else "2022")
    except ValueError:
        return False
    return True


def active_stages(cfg: PredictConfig) -> tuple[str, ...]:
    """The stages that run: ``cfg.stages`` without ``network`` when ``cfg.network`` is False and without
    ``adam`` when ``cfg.io.iters`` is 0."""
    return tuple(s for s in cfg.stages if not (s == "network" and not cfg.network)
                 and not (s == "adam" and cfg.io.iters <= 0))


def predict_pair(net: model.RegistrationNet | None, pair: Pair, device: torch.device, io_cfg: IOConfig,
                 shape: tuple[int, ...], search: SearchConfig | None = None, ct: bool = True) -> np.ndarray:
    """One pair's displacement, (3, I, J, K) float32 voxels on the fixed grid: the network (``net`` None:
    none), then the search (``search`` None: none), then the refinement (``io_cfg.iters`` 0: none).

    Raises:
        ValueError: unreadable images, or shapes that differ from each other or from the dataset's.
    """
    names = tuple(n for n, on in (("network", net is not None), ("search", search is not None),
                                  ("adam", io_cfg.iters > 0)) if on)
    built = stg.build(names, net, search or SearchConfig(), io_cfg, ct)
    return register_pair(built, pair, device, shape)[0]


def register_pair(stages: list[stg.Stage], pair: Pair, device: torch.device,
                  shape: tuple[int, ...]) -> tuple[np.ndarray, dict[str, float]]:
    """Read one pair and run the stages: its displacement, (3, I, J, K) float32 voxels on the fixed grid,
    and the seconds of each stage.

    Raises:
        ValueError: unreadable images, or shapes that differ from each other or from the dataset's.
    """
    moving_np = io.read_volume(pair.moving.image, np.float32).array
    fixed_np = io.read_volume(pair.fixed.image, np.float32).array
    for case, arr in ((pair.moving, moving_np), (pair.fixed, fixed_np)):
        if arr.shape != tuple(shape):
            raise ValueError(f"{case.image}: shape {arr.shape} received, the dataset declares {tuple(shape)}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{case.image}: image holds NaN or inf values")
    moving = torch.from_numpy(moving_np)[None, None].to(device)
    fixed = torch.from_numpy(fixed_np)[None, None].to(device)
    del moving_np, fixed_np
    disp, seconds = stg.run(stages, moving, fixed)
    return disp[0].float().cpu().numpy(), seconds


def run(cfg: PredictConfig) -> dict:
    """Predict every selected pair; returns the run manifest (also written to ``out_dir/run.json``).

    Raises:
        ValueError: bad input found before any work (missing images, unknown pairs, bad weights).
    """
    ds = cfg.dataset
    pairs = select_pairs(ds, cfg.split, cfg.pairs)
    if not pairs:
        raise ValueError(f"{ds.source}: no pairs to predict in split '{cfg.split or 'default'}'")
    missing = ds.missing_files(pairs, images=True, labels=False)
    if missing:
        raise ValueError("missing image files: " + ", ".join(map(str, missing)))
    ckpt_path = resolve_checkpoint(cfg.checkpoint, cfg.weights_dir)
    runtime.configure_threads(cfg.threads)
    device = runtime.resolve_device(cfg.device)
    net, _ = checkpoint.load(ckpt_path, map_location=device)
    names = active_stages(cfg)
    if not names:
        raise ValueError("no registration stage left to run (it would write zero fields)")
    stages = stg.build(names, net, cfg.search, cfg.io, ds.is_ct)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "package_version": __version__, "checkpoint": str(ckpt_path), "checkpoint_sha256": sha256(ckpt_path),
        "model_config": net.cfg.to_dict(), "device": str(device), "threads": torch.get_num_threads(),
        "settings": {"split": cfg.split, "format": cfg.fmt, "names": cfg.names, "io": asdict(cfg.io),
                     "network": cfg.network, "overwrite": cfg.overwrite,
                     "stages": list(names), "search": asdict(cfg.search), "modality": ds.modality},
        "pairs": {},
    }
    from tqdm import tqdm

    for pair in tqdm(pairs, desc="predict", unit="pair", file=sys.stderr, disable=not cfg.progress):
        outputs = expected_outputs(cfg.out_dir, pair, cfg.fmt, cfg.names)
        entry: dict = {"outputs": [p.name for p in outputs]}
        if not cfg.overwrite and outputs_complete(outputs, ds.shape, cfg.fmt):
            manifest["pairs"][pair.key] = {**entry, "status": "skipped (outputs exist)"}
            continue
        t0 = time.perf_counter()
        try:
            disp, stage_seconds = register_pair(stages, pair, device, ds.shape)
            entry["stage_seconds"] = stage_seconds
            io.write_disp(disp, cfg.out_dir, pair.fixed.id, pair.moving.id, cfg.fmt, cfg.names)
            if cfg.qc_dir is not None:
                from .qc import write_qc

                write_qc(cfg.qc_dir / f"qc_{pair.fixed.id}_{pair.moving.id}.png", pair, disp)
            entry.update(status="done", seconds=round(time.perf_counter() - t0, 3))
        except (ValueError, RuntimeError, MemoryError) as exc:
            entry.update(status="failed", error=str(exc).strip().splitlines()[0][:500],
                         seconds=round(time.perf_counter() - t0, 3))
            print(f"error: {pair.key}: {entry['error']}", file=sys.stderr)
        manifest["pairs"][pair.key] = entry
        _write_manifest(cfg.out_dir, manifest)
    _write_manifest(cfg.out_dir, manifest)
    return manifest


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2) + "\n"
    io.atomic_write(out_dir / "run.json", lambda tmp: Path(tmp).write_text(text))


def summary(manifest: dict) -> tuple[str, int]:
    """A one-line summary and the number of failed pairs."""
    states = [p["status"] for p in manifest["pairs"].values()]
    done = [p["seconds"] for p in manifest["pairs"].values() if p["status"] == "done"]
    failed = states.count("failed")
    skipped = sum(s.startswith("skipped") for s in states)
    rate = f", {np.mean(done):.1f} s per pair" if done else ""
    return f"{len(done)} pairs done, {skipped} skipped, {failed} failed{rate} ({manifest['device']})", failed
