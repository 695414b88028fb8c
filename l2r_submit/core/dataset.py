"""Learn2Reg datasets: the dataset JSON (2022+) and the official evaluation config (the 2020 layout:
:mod:`l2r_submit.core.dataset_2020`).

Everything here is paths and ids; no volume is read. Every path taken from a JSON or CSV is
resolved inside the data root, and a path that escapes it is an error.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from .metric_specs import (DEFAULT_METRICS, MetricSpec, default_metrics, labels_of_dataset,  # noqa: F401
                           parse_methods)  # DEFAULT_METRICS, MetricSpec: importable from here too

REQUIRED_KEYS = ("name", "tensorImageShape", "training", "registration_val", "registration_test")
KNOWN_KEYS = frozenset(REQUIRED_KEYS) | {
    "description", "licence", "license", "reference", "release", "modality", "labels", "numTraining",
    "numTest", "test", "numPairedTraining", "numPairedTest", "pairings", "provided_data",
    "registration_direction", "numRegistration_val", "numRegistration_test", "tensorImageSize",
    "tensorImageShape", "training_paired_images", "test_paired_images", "author", "task", "img_shift",
}
CONFIG_KEYS = ("task_name", "evaluation_methods", "expected_shape", "eval_pairs")
SPLITS = ("val", "test")


@dataclass(frozen=True)
class Case:
    """One image of a pair. ``id`` and ``modality`` are four-digit strings.

    ``annotated``: the label ids the case's label map annotates (a training entry's ``annotated`` list,
    e.g. ``[6]`` for a cohort that labels only the liver); voxels of other organs are unknown, not
    background. None: every label of the dataset (the challenge's own cases).
    """

    id: str
    modality: str
    image: Path
    label: Path
    annotated: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Pair:
    """A fixed/moving pair; the field lives on the fixed grid."""

    fixed: Case
    moving: Case

    @property
    def key(self) -> str:
        """The official case key ``FFFF_0000<--MMMM_0000``."""
        return f"{self.fixed.id}_{self.fixed.modality}<--{self.moving.id}_{self.moving.modality}"


def qc_name(case_key: str) -> str:
    """The picture ``l2r predict --qc`` writes for case key ``FFFF_ffff<--MMMM_mmmm`` (and the report
    reads): ``qc_FFFF_MMMM.png`` for two ``0000`` images, else ``qc_FFFF_ffff_MMMM_mmmm.png``, so pairs of
    the same subjects in other channels do not share one picture."""
    fixed, moving = case_key.split("<--")
    if fixed.endswith("_0000") and moving.endswith("_0000"):
        return f"qc_{fixed[:-5]}_{moving[:-5]}.png"
    return f"qc_{fixed}_{moving}.png"


# Modality names of a fan-beam (diagnostic) CT, in Hounsfield units, after upper-casing and dropping white
# space, hyphens, underscores and dots: Learn2Reg's ThoraxCBCT JSON names its planning CT "FBCT" (fan-beam CT).
# A cone-beam CT ("CBCT") is not among them: its intensities are not calibrated HU (read by percentiles,
# and its partner CT takes it as HU-like when it has air below -500: features.pair_modes).
CT_NAMES = frozenset({"CT", "FBCT", "FANBEAMCT"})


def is_ct_name(modality: str) -> bool:
    """True when a dataset JSON's modality name means Hounsfield units: ``CT`` or a fan-beam CT (``FBCT``),
    any case, spacing or hyphenation (:data:`CT_NAMES`); ``CBCT``, ``MR`` and others are not."""
    return "".join(c for c in modality.upper() if c not in "-_." and not c.isspace()) in CT_NAMES


@dataclass
class Dataset:
    """Pairs per split plus what is needed to score them.

    Attributes:
        root: the data folder; every path is inside it.
        name: task name written to metrics.json.
        shape: (I, J, K) of every volume and of the displacement fields.
        splits: split name -> pairs (``val``/``test`` for a dataset JSON, ``eval`` for an eval config).
        metrics: the evaluation methods.
        training: training cases (image and label) listed by a dataset JSON.
        test_images: the cases of a dataset JSON's ``test`` list (images without labels; the label path
            is where one would be).
        unknown_keys: top-level keys this tool does not know (reported, not fatal).
        source: the JSON or CSV the dataset came from.
        masked: an evaluation config's ``masked_evaluation`` (SDlogJ over the fixed image's mask).
        notes: facts about how the dataset was read (e.g. the labels it scores), reported by check.
        modality: the images' modality (the JSON's ``modality`` entry "0"; CT when it has none).
        modalities: the JSON's ``modality`` per channel ("0", "1", ...), for datasets of two modalities.
    """

    root: Path
    name: str
    shape: tuple[int, int, int]
    splits: dict[str, list[Pair]]
    metrics: tuple[MetricSpec, ...] = DEFAULT_METRICS
    training: list[Case] = field(default_factory=list)
    test_images: list[Case] = field(default_factory=list)
    unknown_keys: tuple[str, ...] = ()
    source: Path | None = None
    masked: bool = False
    notes: tuple[str, ...] = ()
    modality: str = "CT"
    modalities: dict[str, str] = field(default_factory=dict)

    @property
    def is_ct(self) -> bool:
        """True when intensities are Hounsfield units (modality CT)."""
        return is_ct_name(self.modality)

    def is_ct_image(self, case: Case) -> bool:
        """True when ``case``'s intensities are Hounsfield units: the modality of its channel (``_0001``:
        the JSON's ``modality`` "1"), the dataset's (channel "0") when the JSON does not name that channel."""
        return is_ct_name(self.modalities.get(str(int(case.modality)), self.modality))

    def pairs(self, split: str | None = None) -> list[Pair]:
        """Pairs of ``split``; with None, ``val`` when it has pairs, else ``test``, else ``eval``.

        Raises:
            ValueError: unknown split.
        """
        if split is None:
            for name in ("val", "test", "eval"):
                if self.splits.get(name):
                    return self.splits[name]
            return []
        if split not in self.splits:
            raise ValueError(f"{self.source}: no split '{split}' in this file "
                             f"(available: {', '.join(self.splits)})")
        return self.splits[split]

    def mask_of(self, case: Case) -> Path:
        """Where ``masked_evaluation`` reads ``case``'s mask: its image path as the JSON gives it (relative
        to the data folder) with ``images`` replaced by ``masks``, as the official evaluation.py does
        (MDL-UzL/L2R 8847509); a data folder whose own path holds ``images`` is left as it is.

        Raises:
            ValueError: the mask path leaves the data folder (a symlink).
        """
        rel = case.image.relative_to(self.root)
        return inside_root(self.root, str(rel).replace("images", "masks"), f"{self.source}: mask of {case.image}")

    def missing_files(self, pairs: list[Pair] | None = None, images: bool = True, labels: bool = True) -> list[Path]:
        """Images (and label maps) that pairs or training cases name but that do not exist."""
        cases = [c for p in (pairs if pairs is not None else [p for v in self.splits.values() for p in v])
                 for c in (p.fixed, p.moving)]
        if pairs is None:
            cases += self.training
        paths: dict[Path, None] = {}
        for c in cases:
            if images:
                paths[c.image] = None
            if labels:
                paths[c.label] = None
        return [p for p in paths if not p.exists()]


# ------------------------------------------------------------------------------------------ helpers


def inside_root(root: Path, rel: str, where: str) -> Path:
    """Resolve a relative path from a JSON/CSV inside ``root``.

    Raises:
        ValueError: absolute path, or a path that leaves the root (``..`` or a symlink).
    """
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"{where}: path must be a non-empty string, got {rel!r}")
    if "\0" in rel:
        raise ValueError(f"{where}: path {rel!r} holds a NUL character")
    if os.path.isabs(rel):
        raise ValueError(f"{where}: absolute path '{rel}' is not allowed; paths are relative to {root}")
    resolved = (root / rel).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ValueError(f"{where}: path '{rel}' escapes the data folder {root}")
    return root / os.path.normpath(rel)


def case_from_path(root: Path, rel: str, where: str) -> Case:
    """A case from an image path, ids read as the official parser does (fixed positions from the end).

    ``.../AbdomenCTCT_0001_0000.nii.gz``: subject = name[-16:-12], modality = name[-11:-7]; the label
    path is the image path with ``images`` replaced by ``labels``.

    Raises:
        ValueError: a path outside the root, or ids that are not four digits.
    """
    image = inside_root(root, rel, where)
    if not rel.endswith(".nii.gz"):
        raise ValueError(f"{where}: '{rel}' is not a .nii.gz path; the official parser needs one")
    subject, sep, modality = rel[-16:-12], rel[-12], rel[-11:-7]
    if not (subject.isdigit() and modality.isdigit() and len(subject) == 4 and sep == "_"):
        raise ValueError(f"{where}: cannot read case id and modality from '{rel}' "
                         f"(expected a name ending in _FFFF_MMMM.nii.gz)")
    label = inside_root(root, rel.replace("images", "labels"), where)
    return Case(subject, modality, image, label)


def _read_json(path: Path) -> dict:
    try:
        if path.is_dir():
            raise ValueError(f"{path}: is a folder; expected the dataset JSON (or an evaluation config) file")
        if not path.is_file():
            raise ValueError(f"{path}: file not found")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:  # e.g. a folder on the way that this user may not enter
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _pairs(root: Path, entries: object, where: str) -> list[Pair]:
    if not isinstance(entries, list):
        raise ValueError(f"{where}: expected a list of {{'fixed', 'moving'}} objects")
    pairs = []
    for n, entry in enumerate(entries):
        here = f"{where}[{n}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{here}: expected an object with 'fixed' and 'moving'")
        missing = {"fixed", "moving"} - entry.keys()
        unknown = entry.keys() - {"fixed", "moving"}
        if missing or unknown:
            raise ValueError(f"{here}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
        pairs.append(Pair(case_from_path(root, entry["fixed"], here), case_from_path(root, entry["moving"], here)))
    return pairs


def _shape(value: object, where: str) -> tuple[int, int, int]:
    if isinstance(value, dict):  # tensorImageShape: {"0": [192, 160, 256]}
        value = value.get("0", next(iter(value.values()), None))
    if not (isinstance(value, list) and len(value) in (3, 4) and all(type(v) is int and v > 0 for v in value)):
        raise ValueError(f"{where}: expected a list of 3 positive integers, got {value!r}")
    return tuple(value[:3])  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ loaders


def load(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Dataset:
    """Load a dataset JSON or an official evaluation config JSON (recognised by ``eval_pairs``).

    Args:
        path: the JSON file.
        root: the data folder; default the JSON's folder.

    Raises:
        ValueError: malformed JSON, missing required keys (all listed), malformed entries, unsafe paths.
    """
    path = Path(path)
    data = _read_json(path)
    root_path = Path(root) if root is not None else path.parent
    if not root_path.is_dir():
        raise ValueError(f"{root_path}: data folder not found (the folder the paths of {path.name} are relative to)")
    if "eval_pairs" in data:
        return _load_config(path, data, root_path)
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: missing required keys: {', '.join(missing)}")
    if not isinstance(data["training"], list):
        raise ValueError(f"{path}: training: expected a list of {{'image', 'label'}} objects, "
                         f"got {type(data['training']).__name__}")
    labels, notes = labels_of_dataset(data, path)
    training = []
    for n, entry in enumerate(data["training"]):
        here = f"{path}: training[{n}]"
        if not isinstance(entry, dict) or "image" not in entry:
            raise ValueError(f"{here}: expected an object with 'image' and 'label'")
        case = case_from_path(root_path, entry["image"], here)
        if "label" in entry:
            case = Case(case.id, case.modality, case.image, inside_root(root_path, entry["label"], here))
        if "annotated" in entry:
            case = replace(case, annotated=_annotated(entry["annotated"], labels, here))
        training.append(case)
    test_images = []
    if not isinstance(data.get("test") or [], list):
        raise ValueError(f"{path}: test: expected a list of {{'image'}} objects, got {type(data['test']).__name__}")
    for n, entry in enumerate(data.get("test") or []):
        image = entry.get("image") if isinstance(entry, dict) else entry
        test_images.append(case_from_path(root_path, image, f"{path}: test[{n}]"))
    splits = {s: _pairs(root_path, data[f"registration_{s}"], f"{path}: registration_{s}") for s in SPLITS}
    _check_modality(data.get("modality"), str(path))
    return Dataset(
        root=root_path, name=str(data["name"]), shape=_shape(data["tensorImageShape"], f"{path}: tensorImageShape"),
        splits=splits, metrics=default_metrics(labels), training=training, test_images=test_images,
        unknown_keys=tuple(sorted(set(data) - KNOWN_KEYS)), source=path, notes=notes + _repeated(splits),
        modality=_modality(data.get("modality")), modalities=_modalities(data.get("modality")),
    )


def _check_modality(value: object, where: str) -> None:
    """A dataset JSON's ``modality``: absent, a name, or names by channel (``{"0": "CT"}``). Anything else
    would silently fall back to CT (and the CT window), so it is refused.

    Raises:
        ValueError: another type, or an empty or non-text name.
    """
    names = value.values() if isinstance(value, dict) else [value]
    if value is not None and not (names and all(isinstance(v, str) and v.strip() for v in names)):
        raise ValueError(f"{where}: modality: expected a name or names by channel such as {{\"0\": \"CT\"}}, "
                         f"got {json.dumps(value)[:80]}")


def _annotated(value: object, labels: tuple[int, ...], where: str) -> tuple[int, ...]:
    """A training entry's ``annotated`` list: distinct label ids of the dataset's ``labels``, sorted.

    Raises:
        ValueError: not a list, an entry that is not an integer label of the dataset, or a repeated one.
    """
    if not isinstance(value, list):
        raise ValueError(f"{where}: annotated: expected a list of label ids like [6], got {value!r}")
    for n, v in enumerate(value):
        if type(v) is not int or v not in labels:
            raise ValueError(f"{where}: annotated[{n}]: {v!r} is not a label id of this dataset "
                             f"(expected one of {', '.join(map(str, labels))})")
    if len(set(value)) != len(value):
        raise ValueError(f"{where}: annotated: repeated label ids in {value}")
    return tuple(sorted(value))


def _modality(value: object) -> str:
    """The modality of channel "0" of a dataset JSON (``{"0": "CT"}``); CT when absent."""
    if isinstance(value, dict):
        value = value.get("0", next(iter(value.values()), None))
    return value if isinstance(value, str) and value.strip() else "CT"


def _modalities(value: object) -> dict[str, str]:
    """The named modalities of a dataset JSON's ``modality`` by channel (``{"0": "MR", "1": "CT"}``)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str) and v.strip()}


def _load_config(path: Path, data: dict, root: Path) -> Dataset:
    missing = [k for k in CONFIG_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: missing required keys of an evaluation config: {', '.join(missing)}")
    methods = parse_methods(path, data["evaluation_methods"])
    expected = data["expected_shape"]
    if not (isinstance(expected, list) and len(expected) == 4 and expected[3] == 3):
        raise ValueError(f"{path}: expected_shape must be [I, J, K, 3], got {expected!r}")
    masked = data.get("masked_evaluation", False)
    if not isinstance(masked, bool):
        raise ValueError(f"{path}: masked_evaluation: expected true or false, got {masked!r}")
    splits = {"eval": _pairs(root, data["eval_pairs"], f"{path}: eval_pairs")}
    return Dataset(
        root=root, name=str(data["task_name"]), shape=_shape(expected, f"{path}: expected_shape"),
        splits=splits, metrics=methods,
        unknown_keys=tuple(sorted(set(data) - set(CONFIG_KEYS) - {"masked_evaluation"})), source=path,
        masked=masked, notes=_repeated(splits),
    )


def _repeated(splits: dict[str, list[Pair]]) -> tuple[str, ...]:
    """A note per split that names a pair more than once: its field and its scores exist once (the
    evaluator keys its results by pair, so it counts such a pair once too)."""
    notes = []
    for name, pairs in splits.items():
        twice = sorted(k for k, n in Counter(p.key for p in pairs).items() if n > 1)
        if twice:
            notes.append(f"{name}: {len(twice)} pairs listed more than once (first: {twice[0]}); each is "
                         "registered and scored once")
    return tuple(notes)
