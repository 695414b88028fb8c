"""Cohort preparation: an external CT cohort brought into the challenge's frame (``l2r cohort prepare``).

Per case: read the image and its label map with their affine; map the labels to challenge ids
(:mod:`l2r_submit.recipe.cohorts`); permute/flip the array axes to the reference's orientation; resample
to 2 mm (linear image, nearest labels; :mod:`l2r_submit.core.frame`); split kidneys into right and left by
the patient's side (KiTS); find the translation onto the reference image
(:mod:`l2r_submit.recipe.align`); crop or pad to the reference's shape (-1024 HU and label 0 outside);
write both on the reference's grid (its affine), int16 HU and uint8 labels.

Output folder: ``imagesTr/<cohort>_<case>_0000.nii.gz``, ``labelsTr/`` the same names, ``integrity.json``
(every case: ok with its source files, shift and NCC; skipped or failed with the reason; rewritten after
each case) and last ``dataset.json`` (the challenge's format, each entry with ``annotated``). Every file is
written atomically; a case whose two files and record exist is not redone; a file that changed nothing is
not rewritten, so a second run writes nothing.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.contract import L2R_SHAPE, LABEL_NAMES
from ..core.folders import NO_FURTHER_WRITES, clean_stale_tmp
from ..core.frame import SPACING_MM, place, remap, reorient_like, resample_to_2mm, resampled_affine, world_axis
from ..core.io import Volume, atomic_write, read_labels, read_volume, write_volume
from .align import BODY_HU, AlignConfig, find_shift
from .cohorts import Layout, SourceCase, find_cases, nothing_to_prepare
from .prepare_checks import (case_settings, check_ct, check_out_outside_src, check_volume, legacy_settings,
                             other_settings)

HU_RANGE = (-1024, 3071)
LOW_NCC = 0.45
"""An alignment scoring under this gets a warning (the case is still written). Measured on test_data's 0004 as
the reference: right placements score 0.93-0.95 (0001, 0003: the same patient), 0.67 (0006) and 0.62 (the chest
CT of ../shared/data), other patients; wrong ones 0.25 (a header with wrong voxel sizes) and 0.30 (a label map
given as the reference, now refused). A small reference box scores lower: 0.41 for the vertebra test's right
placement of the chest CT."""


@dataclass
class PrepareConfig:
    """What ``l2r cohort prepare`` was asked.

    Attributes:
        layout: the cohort layout (label map, exclusions).
        src: the cohort's folder.
        out: the output folder.
        reference: a challenge image (2 mm) that every case is translated onto.
        cohort: prefix of the written names (the layout's name for the fixed layouts).
        limit: prepare at most this many usable cases (None: all).
        skip_failed: write dataset.json without the cases that failed (they stay recorded as failed).
        log: where progress lines go (None: nowhere).
    """

    layout: Layout
    src: Path
    out: Path
    reference: Path
    cohort: str
    limit: int | None = None
    skip_failed: bool = False
    log: Callable[[str], None] | None = None
    align: AlignConfig = field(default_factory=AlignConfig)


@dataclass(frozen=True)
class Reference:
    """The challenge image every case goes onto. ``array`` (I, J, K) HU, ``affine`` its header's.

    Its voxels are taken as 2 mm (the challenge's volumes are); only the axis directions of its affine are
    used, and the affine is written unchanged into every output. ``note``: a header that disagrees.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path
    note: str | None = None


def load_reference(path: Path) -> Reference:
    """Read the reference image (a header whose voxels are not 2 mm gives a note, not an error).

    Raises:
        ValueError: unreadable, a singular affine, NaN or inf values, or not a CT in HU (no value below
            -500 HU: a label map, say); one line naming the file.
    """
    vol = read_volume(path, dtype=np.float32)
    check_volume(path, vol)
    check_ct(path, vol.array)
    note = None
    if not np.allclose(vol.spacing, SPACING_MM, atol=0.01):
        note = (f"note: {path}: its header gives {tuple(round(s, 3) for s in vol.spacing)} mm voxels; taken as "
                f"the challenge's 2 mm (only its axis directions are used)")
    return Reference(vol.array, vol.affine, path, note)


def split_kidneys(labels: np.ndarray, image: np.ndarray, affine: np.ndarray, kidney: int = 2,
                  right: int = 2, left: int = 3) -> tuple[np.ndarray, list[str]]:
    """Kidney voxels relabelled right or left by the patient's side, decided in world (RAS) coordinates.

    The midline is the world x of the body's centre (HU > -500); each connected kidney component goes to
    the side of its centre (RAS: x grows towards the patient's right). A component with more than a quarter
    of its voxels on each side (a horseshoe kidney) is cut at the midline voxel by voxel.

    Shape: labels and image (I, J, K), affine (4, 4) -> labels (I, J, K) uint8 and notes.
    """
    from scipy import ndimage

    mask = labels == kidney
    if not mask.any():
        return labels, ["no kidney voxels"]
    world_x = lambda idx: affine[0, :3] @ idx + affine[0, 3]  # noqa: E731 - index (3, n) -> world x (n,)
    body = np.array(np.nonzero(image > BODY_HU))
    midline = float(world_x(body).mean()) if body.size else float(world_x(np.array(image.shape)[:, None] / 2)[0])
    comps, count = ndimage.label(mask)
    out = labels.copy()
    notes = []
    for c in range(1, count + 1):
        idx = np.nonzero(comps == c)
        x = world_x(np.array(idx))
        on_right = x > midline
        frac = float(on_right.mean())
        if 0.25 < frac < 0.75:
            out[idx] = np.where(on_right, right, left)
            notes.append(f"kidney component of {x.size} voxels across the midline: cut there")
        else:
            out[idx] = right if frac >= 0.5 else left
    return out, notes


def prepare_case(case: SourceCase, layout: Layout, ref: Reference,
                 align: AlignConfig = AlignConfig()) -> tuple[np.ndarray, np.ndarray, dict]:
    """One case in the reference's frame.

    ``annotated`` lists the layout's organs that the written label map holds; a mapped organ it lacks (not in
    the source's labels, or outside the reference's box once placed) is left out with a warning, and so is an
    alignment whose NCC is under :data:`LOW_NCC`; ``warnings`` holds those (printed), ``notes`` the rest.

    Shape: -> image (reference shape) int16 HU, labels (reference shape) uint8 challenge ids, and the record.

    Raises:
        ValueError: an unreadable file, a singular affine, NaN or inf voxels, or a label map that does not fit
            its image (one line, naming it).
    """
    assert case.image is not None
    vol = read_volume(case.image, dtype=np.float32)
    check_volume(case.image, vol)
    record: dict = {"source_name": case.source_name, "image": str(case.image), "notes": [], "warnings": []}
    annotated: tuple[int, ...] = ()
    mapped = np.zeros(vol.array.shape, np.uint8)
    if case.label is not None:
        record["label"] = str(case.label)
        seg = read_labels(case.label)
        if seg.shape != vol.array.shape:
            raise ValueError(f"{case.label}: label map of shape {seg.shape}, its image {case.image} is "
                             f"{vol.array.shape}")
        if seg.size and seg.min() < 0:
            raise ValueError(f"{case.label}: negative label values")
        present = sorted(int(v) for v in np.unique(seg) if v)
        unknown = [v for v in present if v not in layout.label_map]
        if unknown and layout.label_map:
            record["notes"].append(f"source label ids {unknown} not in the map: set to 0")
        mapped = remap(seg, layout.label_map) if layout.label_map else mapped
        annotated = layout.annotated
    else:
        record["notes"].append("no label map: image only")
    record["annotated"] = list(annotated)
    record["source_shape"] = list(vol.array.shape)
    record["source_spacing_mm"] = [round(s, 4) for s in vol.spacing]
    image, affine = reorient_like(vol.array, vol.affine, ref.affine)
    labels, _ = reorient_like(mapped, vol.affine, ref.affine)
    spacing = Volume(image, affine).spacing
    image = resample_to_2mm(image, spacing, order=1, cval=float(HU_RANGE[0]))
    labels = resample_to_2mm(labels, spacing, order=0, cval=0.0).astype(np.uint8)
    affine = resampled_affine(affine, spacing)
    if layout.split_kidneys and annotated:
        labels, notes = split_kidneys(labels, image, affine)
        record["notes"] += notes
    cfg = AlignConfig(align.factor, align.min_overlap, align.inplane_mm, world_axis(ref.affine, 2))
    try:
        shift, score = find_shift(ref.array, image, cfg)
    except ValueError as exc:
        raise ValueError(f"{case.image}: cannot be aligned to {ref.path.name}: {exc}") from None
    shape = ref.array.shape
    centre = np.asarray(shift) + np.array(shape) // 2
    image = np.clip(np.round(image), *HU_RANGE).astype(np.int16)
    record["shift_vox"] = [int(v) for v in shift]
    record["ncc"] = round(score, 4)
    labels = place(labels, centre, 0, shape)
    written = set(np.unique(labels).tolist()) - {0}
    missing = [organ for organ in annotated if organ not in written]
    if missing:
        source = set(np.unique(mapped).tolist())
        source |= {3} if layout.split_kidneys and 2 in source else set()  # the left kidney comes from the split
        gone = [organ for organ in missing if organ not in source]
        cut = [organ for organ in missing if organ in source]
        why = "; ".join(text for text in (f"{gone} not in its label map" if gone else "",
                                          f"{cut} outside the reference's box once placed" if cut else "") if text)
        record["warnings"].append(f"mapped organs {why}: not annotated (unknown, not background)")
        record["annotated"] = [organ for organ in annotated if organ in written]
    if score < LOW_NCC:
        record["warnings"].append(f"alignment NCC {score:.2f} is under {LOW_NCC}: check its placement (a header "
                                  "with wrong voxel sizes, another body part, or not a CT)")
    return place(image, centre, HU_RANGE[0], shape), labels, record


def _write_text_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text() == text:
        return False
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return True


def dataset_json(cohort: str, records: dict[str, dict], shape: tuple[int, ...]) -> dict:
    """The challenge-format dataset of the written cases (``records``: name -> ok record)."""
    training = [{"image": f"./imagesTr/{name}_0000.nii.gz", "label": f"./labelsTr/{name}_0000.nii.gz",
                 "annotated": list(rec["annotated"])} for name, rec in sorted(records.items())]
    return {
        "name": cohort, "description": f"{cohort} prepared by l2r cohort prepare: 2 mm, translated onto a "
                                       "challenge image; 'annotated' lists the organs each label map holds",
        "tensorImageShape": {"0": list(shape)}, "modality": {"0": "CT"},
        "labels": {"0": {"0": "background", **{str(k): v for k, v in LABEL_NAMES.items()}}},
        "numTraining": len(training), "training": training, "numTest": 0, "test": [],
        "numRegistration_val": 0, "registration_val": [], "numRegistration_test": 0, "registration_test": [],
    }


def run(cfg: PrepareConfig) -> int:
    """Prepare every case of the cohort; returns the exit code (0 all usable cases written, 1 some failed).

    Raises:
        ValueError: bad source folder or reference (before any case is read).
    """
    say = cfg.log or (lambda _line: None)
    check_out_outside_src(cfg.src, cfg.out)
    cases = find_cases(cfg.layout, cfg.src)
    if not any(c.skip is None for c in cases):
        raise ValueError(nothing_to_prepare(cfg.layout, cfg.src, cases))
    ref = load_reference(cfg.reference)
    settings = case_settings(cfg.layout, cfg.reference)
    if ref.note:
        say(ref.note)
    if tuple(ref.array.shape) != L2R_SHAPE:
        say(f"note: the reference is {ref.array.shape}, not the challenge's {L2R_SHAPE}: outputs take its shape")
    out = cfg.out
    for sub in (out, out / "imagesTr", out / "labelsTr"):
        sub.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(sub)
    integrity_path = out / "integrity.json"
    top = _read_json(integrity_path)
    old = top.get("cases", {}) if isinstance(top.get("cases"), dict) else {}
    legacy = legacy_settings(top, cfg.layout, cfg.reference, settings)  # an older version's cases, if knowable
    records: dict[str, dict] = {}
    usable = [c for c in cases if c.skip is None]
    if cfg.limit is not None:
        usable = usable[:cfg.limit]
    for case in cases:
        if case.skip is not None:
            records[f"{cfg.cohort}_{case.case_id}"] = {"status": "skipped", "source_name": case.source_name,
                                                       "reason": case.skip}
            say(f"[-] {cfg.cohort}_{case.case_id}: skipped: {case.skip}")
    redo = {name: what for name, rec in old.items() if rec.get("status") == "ok"
            and (what := other_settings(rec.get("settings", legacy), settings))}
    if redo:
        kinds = sorted(set(redo.values()))
        say(f"note: {len(redo)} cases in {out} were made with another {' / '.join(kinds)}: those this run "
            "prepares are made again")
    failed = 0
    stop = None
    for k, case in enumerate(usable, 1):
        name = f"{cfg.cohort}_{case.case_id}"
        img_path, lab_path = out / "imagesTr" / f"{name}_0000.nii.gz", out / "labelsTr" / f"{name}_0000.nii.gz"
        prev = old.get(name, {})
        if stop is not None:
            records[name] = {"status": "failed", "source_name": case.source_name, "reason": f"not tried: {stop}"}
            failed += 1
            continue
        if prev.get("status") == "ok" and img_path.is_file() and lab_path.is_file() and name not in redo:
            records[name] = prev if "settings" in prev else {**prev, "settings": settings}  # known via legacy
            say(f"[{k}/{len(usable)}] {name}: done already")
            continue
        start = time.perf_counter()
        try:
            image, labels, rec = prepare_case(case, cfg.layout, ref, cfg.align)
            write_volume(lab_path, labels, ref.affine)
            write_volume(img_path, image, ref.affine)
        except OSError as exc:
            records[name] = {"status": "failed", "source_name": case.source_name, "reason": f"{exc}"}
            failed += 1
            say(f"error: {name}: {exc}")
            if exc.errno in NO_FURTHER_WRITES:
                stop = f"{exc.filename}: {exc.strerror}"
            continue
        except Exception as exc:  # one bad case must not stop the others
            text = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            records[name] = {"status": "failed", "source_name": case.source_name, "reason": text}
            failed += 1
            say(f"error: {name}: {text}")
            _write_text_if_changed(integrity_path, _integrity_text(cfg, records, old))
            continue
        if name in redo:
            rec["notes"].append(f"made again: the earlier files were made with another {redo[name]}")
        rec["status"] = "ok"
        rec["settings"] = settings
        rec["seconds"] = round(time.perf_counter() - start, 2)
        records[name] = rec
        _write_text_if_changed(integrity_path, _integrity_text(cfg, records, old))
        again = f" again (another {redo[name]} before)" if name in redo else ""
        say(f"[{k}/{len(usable)}] {name}: written{again}, shift {rec['shift_vox']} voxels, NCC {rec['ncc']}, "
            f"annotated {rec['annotated']}, {rec['seconds']} s")
        for warning in rec["warnings"]:
            say(f"note: {name}: {warning}")
    _write_text_if_changed(integrity_path, _integrity_text(cfg, records, old))
    done = {n: r for n, r in records.items() if r["status"] == "ok"}
    skipped = sum(r["status"] == "skipped" for r in records.values())
    if failed and not cfg.skip_failed:
        stale = out / "dataset.json"
        note = ""
        if stale.exists():  # its presence would say the cohort is complete: it is not (the cases stay)
            stale.unlink()
            note = " (an earlier run's dataset.json removed)"
        say(f"{cfg.cohort}: {len(done)} written, {skipped} skipped, {failed} failed (integrity.json has the "
            f"reasons); dataset.json not written{note}: fix or remove those files, or pass --skip-failed")
        return 1
    _write_text_if_changed(out / "dataset.json",
                           json.dumps(dataset_json(cfg.cohort, done, ref.array.shape), indent=2) + "\n")
    say(f"{cfg.cohort}: {len(done)} cases in {out / 'dataset.json'}, {skipped} skipped, {failed} failed")
    return 0


def _integrity_text(cfg: PrepareConfig, records: dict[str, dict], old: dict[str, dict]) -> str:
    cases = {**{n: r for n, r in old.items() if r.get("status") == "ok" and n not in records}, **records}
    body = {"layout": cfg.layout.name, "cohort": cfg.cohort, "source": str(cfg.src.absolute()),  # wherever read
            "reference": str(cfg.reference.absolute()), "cases": dict(sorted(cases.items()))}
    return json.dumps(body, indent=2) + "\n"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def stderr_log(line: str) -> None:
    """Progress and error lines on stderr."""
    print(line, file=sys.stderr, flush=True)
