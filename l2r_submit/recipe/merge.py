"""The pretraining dataset of the recipe: the challenge's training scans and every prepared cohort's, in one
dataset JSON of the challenge's format, validated on the challenge's val pairs.

A dataset JSON's paths must resolve inside its folder (:func:`l2r_submit.core.dataset.inside_root`
resolves symlinks, so a symlink out of it is refused): the challenge's images and label maps are hard-linked
into ``<folder>/challenge/`` (copied when the link fails, e.g. across file systems), and the prepared
cohorts must already lie under the folder (the recipe prepares them into ``<folder>/cohorts/``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..core import dataset, io

CHALLENGE_DIR = "challenge"


def link_or_copy(src: Path, dst: Path) -> str:
    """Make ``dst`` hold ``src``'s bytes: a hard link, or a copy when linking fails; atomic (a temporary
    name, then rename). A ``dst`` that already is ``src`` (same inode) is kept.

    Returns:
        ``kept``, ``linked`` or ``copied``.
    Raises:
        OSError: neither a link nor a copy could be made (``filename`` names ``dst``).
    """
    if dst.exists() and os.path.samefile(src, dst):
        return "kept"
    how = {}

    def write(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
            how["done"] = "linked"
        except OSError:  # another file system, or links not allowed here
            shutil.copyfile(src, tmp)
            how["done"] = "copied"

    io.atomic_write(dst, write)
    return how["done"]


def _rel(path: Path, root: Path) -> str:
    return "./" + Path(os.path.relpath(path, root)).as_posix()


def _raw(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def merge(challenge_json: Path, cohort_jsons: list[Path], out_json: Path) -> dict:
    """Write the pretraining dataset JSON ``out_json``; returns counts (cases per source; challenge files
    linked, copied and kept).

    Training list: every training entry of the challenge (files linked into ``challenge/``), then every
    cohort case (its ``annotated`` list kept). ``registration_val``: the challenge's val pairs (so
    validation stays on challenge data); no test pairs. Image file names must be unique (pseudo-labels
    of all cases share one folder, named by them).

    Raises:
        ValueError: one line naming the file and the problem (an unreadable JSON, a challenge JSON without
            val pairs, a missing challenge file, a cohort JSON outside ``out_json``'s folder, another volume
            shape, a file name twice, ``out_json`` a folder), found before any file is linked.
        OSError: a file could not be linked or copied.
    """
    root = out_json.parent
    if out_json.is_dir():
        raise ValueError(f"{out_json}: is a folder; --out names the merged dataset JSON to write")
    challenge = dataset.load(challenge_json)
    if not challenge.splits.get("val"):
        raise ValueError(f"{challenge_json}: no registration_val pairs (a cohort's JSON?); the first JSON must be "
                         "the challenge's, whose val pairs validate every training step")
    # everything is checked before the first file is linked: a refusal leaves nothing behind
    wanted: list[Path] = [p for case in challenge.training for p in (case.image, case.label)]
    for pair in challenge.splits["val"]:
        wanted += [p for case in (pair.fixed, pair.moving) for p in (case.label,) if p.is_file()]
        wanted += [pair.fixed.image, pair.moving.image]
    for path in wanted:
        if not path.is_file():
            raise ValueError(f"{challenge_json}: {os.path.relpath(path, challenge.root)} does not exist")
    cohort_items: list[dict] = []
    per_source = {"challenge": len(challenge.training)}
    for path in cohort_jsons:
        if not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root)):
            raise ValueError(f"{path}: a cohort's dataset JSON must lie under {root} (its paths must resolve there)")
        cohort = dataset.load(path)
        if cohort.shape != challenge.shape:
            raise ValueError(f"{path}: volumes of {'x'.join(map(str, cohort.shape))}, the challenge's are "
                             f"{'x'.join(map(str, challenge.shape))}")
        raw = _raw(path)["training"]
        for entry, case in zip(raw, cohort.training):
            item = {"image": _rel(case.image, root), "label": _rel(case.label, root)}
            if "annotated" in entry:
                item["annotated"] = entry["annotated"]
            cohort_items.append(item)
        per_source[path.parent.name] = len(cohort.training)
    names = [c.image.name for c in challenge.training] + [Path(e["image"]).name for e in cohort_items]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{out_json}: image file name {twice[0]} appears twice; pseudo-labels are named by it")

    root.mkdir(parents=True, exist_ok=True)
    counts = {"kept": 0, "linked": 0, "copied": 0}
    brought: dict[Path, str] = {}

    def bring(path: Path) -> str:
        """``path`` (a challenge file) linked under ``challenge/``; its path relative to the merged JSON."""
        if path not in brought:
            rel = Path(os.path.relpath(path, challenge.root))
            counts[link_or_copy(path, root / CHALLENGE_DIR / rel)] += 1
            brought[path] = _rel(root / CHALLENGE_DIR / rel, root)
        return brought[path]

    training = [{"image": bring(case.image), "label": bring(case.label)} for case in challenge.training]
    val = []
    for pair in challenge.splits["val"]:
        for case in (pair.fixed, pair.moving):
            if case.label.is_file():
                bring(case.label)
        val.append({"fixed": bring(pair.fixed.image), "moving": bring(pair.moving.image)})
    training += cohort_items
    src = _raw(challenge_json)
    merged = {
        "name": f"{challenge.name}_pretraining",
        "description": "l2r recipe: the challenge's training scans and the prepared cohorts ("
                       + (", ".join(k for k in per_source if k != "challenge") or "none")
                       + "); the challenge's val pairs",
        "tensorImageShape": {"0": list(challenge.shape)},
        "modality": src.get("modality", {"0": "CT"}),
        "labels": src.get("labels", {}),
        "numTraining": len(training), "training": training, "numTest": 0, "test": [],
        "numRegistration_val": len(val), "registration_val": val,
        "numRegistration_test": 0, "registration_test": [],
    }
    if not merged["labels"]:
        del merged["labels"]

    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
        dataset.load(tmp, root)  # every path resolves inside the folder before the file takes its name

    io.atomic_write(out_json, write)
    return {"cases": per_source, "files": counts}
