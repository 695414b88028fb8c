"""The external cohorts of the paper: their folder layouts, label ids and the challenge ids they map to.

Data and file listing only; reading, resampling and writing are :mod:`l2r_submit.recipe.prepare`'s.

Label ids of each source (from each cohort's own ``dataset.json`` or documentation):

==================  =====================================  =============================================
layout              source labels                          challenge ids written (``annotated``)
==================  =====================================  =============================================
msd_liver           1 liver, 2 cancer                      liver 6 = 1 or 2 ([6])
msd_pancreas        1 pancreas, 2 cancer                   pancreas 11 = 1 or 2 ([11])
msd_hepatic_vessel  1 vessel, 2 tumour                     none: image only ([])
msd_spleen          1 spleen                               spleen 1 ([1])
msd_colon           1 colon cancer primaries               none: image only ([])
kits19              1 kidney, 2 tumour                     right kidney 2, left kidney 3 by the patient's
                                                           side; tumour 0, as the authors did ([2, 3]);
                                                           a case without segmentation: image only ([])
tcia_pancreas       1 pancreas (NIH labels ``labelNNNN``)  pancreas 11 ([11])
nifti               ``--label-map SRC=DST,...``            the DSTs of the map
==================  =====================================  =============================================

A tumour inside the liver or pancreas is part of the organ (it lies within its outline); KiTS tumours are
often exophytic masses beside the kidney, and the authors set them to background (their ``convert_kits``).
Cases the authors excluded (``datasets/wrong_patients.txt`` of
TheoEst/abdominal_registration, matched on the lower-case source name exactly as their loader did) are
skipped with that reason; so are the cases each cohort's publisher lists as unusable.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

MSD_FOLDERS = {"msd_liver": "Task03_Liver", "msd_pancreas": "Task07_Pancreas",
               "msd_hepatic_vessel": "Task08_HepaticVessel", "msd_spleen": "Task09_Spleen",
               "msd_colon": "Task10_Colon"}

AUTHORS_EXCLUDED = "excluded by the paper's authors (wrong_patients.txt of TheoEst/abdominal_registration)"
_AUTHORS = {
    "msd_liver": [f"liver_{i}" for i in (0, 23, *range(28, 39), *range(40, 48), 96)],
    "msd_pancreas": [f"pancreas_{i:03d}" for i in (10, 74, 75, 77, 78, 86, 126, 131, 191, 204, 222, 303, 369, 379)],
    "msd_hepatic_vessel": [f"hepaticvessel_{i:03d}" for i in (70, 71, 72, 111, 222, 309, 314)],
    "msd_spleen": ["spleen_26"],
    # as written in their list: six entries lack the zero padding of the file names, so their loader never
    # matched them and those scans were used; matched the same way here
    "msd_colon": ["colon_027", "colon_030", "colon_38", "colon_51", "colon_59", "colon_64", "colon_75",
                  "colon_114", "colon_187", "colon_212", "colon_213", "colon_214", "colon_219"],
    "kits19": [f"case_{i:05d}" for i in (8, 10, 18, 19, 38, 45, 48, 51, 53, 55, 61, 78, 81, 84, 86, 88, 94, 109,
                                        110, 117, 126, 127, 130, 134, 143, 147, 174, 176, 180, 181, 185, 210,
                                        223, 232, 236, 245, 257, 268, 292, 297)],
    "tcia_pancreas": ["pancreas_0049"],
}
TCIA_REMOVED = {"pancreas_0025": "removed from the TCIA Pancreas-CT collection (a duplicate scan)",
                "pancreas_0070": "removed from the TCIA Pancreas-CT collection (a duplicate scan)"}


@dataclass(frozen=True)
class Layout:
    """One cohort layout.

    Attributes:
        name: the LAYOUT argument (and the prefix of the written file names).
        label_map: source label id -> challenge id (ids not listed become 0); empty: no organ annotated.
        annotated: the challenge ids a prepared label map annotates.
        split_kidneys: kidney (mapped to 2) is split into right 2 and left 3 by the patient's side.
        msd_labels: for MSD folders, a word each label name of their dataset.json must contain (lower
            case; a check that the folder is the cohort named).
        excluded: lower-case source name -> reason to skip it.
    """

    name: str
    label_map: dict[int, int]
    annotated: tuple[int, ...]
    split_kidneys: bool = False
    msd_labels: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)


def _excluded(name: str) -> dict[str, str]:
    out = {case: AUTHORS_EXCLUDED for case in _AUTHORS.get(name, ())}
    if name == "tcia_pancreas":
        out.update(TCIA_REMOVED)
    return out


LAYOUTS: dict[str, Layout] = {
    "msd_liver": Layout("msd_liver", {1: 6, 2: 6}, (6,), msd_labels={"1": "liver"}),
    "msd_pancreas": Layout("msd_pancreas", {1: 11, 2: 11}, (11,), msd_labels={"1": "pancreas"}),
    "msd_hepatic_vessel": Layout("msd_hepatic_vessel", {}, (), msd_labels={"1": "vessel"}),
    "msd_spleen": Layout("msd_spleen", {1: 1}, (1,), msd_labels={"1": "spleen"}),
    "msd_colon": Layout("msd_colon", {}, (), msd_labels={"1": "colon"}),
    "kits19": Layout("kits19", {1: 2}, (2, 3), split_kidneys=True),
    "tcia_pancreas": Layout("tcia_pancreas", {1: 11}, (11,)),
    "nifti": Layout("nifti", {}, ()),
}
LAYOUTS = {name: Layout(lay.name, lay.label_map, lay.annotated, lay.split_kidneys, lay.msd_labels, _excluded(name))
           for name, lay in LAYOUTS.items()}

NIFTI_HELP = ("nifti: SRC/imagesTr/*.nii.gz with SRC/labelsTr/<same name> (an nnU-Net-style '_0000' image "
              "suffix is dropped for the label); a case without a label file is written image-only.")
TCIA_HELP = ("tcia_pancreas: SRC/images/PANCREAS_NNNN.nii.gz (a NIfTI conversion of the TCIA DICOM) or "
             "SRC/images/PANCREAS_NNNN/ (the DICOM series anywhere below it), and SRC/labels/labelNNNN.nii.gz "
             "(the NIH pancreas labels as distributed, on the image's voxel grid).")


@dataclass(frozen=True)
class SourceCase:
    """One case of a source cohort.

    Attributes:
        source_name: its name in the source (lower case, as the exclusion lists name it).
        case_id: the id in the written names (``<cohort>_<case_id>_0000.nii.gz``): at least four digits,
            so that the challenge's name parser (``core.dataset``, ids at fixed places from the end) reads it.
            The last number of the source name once an nnU-Net channel suffix (``_0000``) is cut off; two
            files with one id are refused (:func:`find_cases`), except in the nifti layout, which numbers
            its cases in name order then.
        image: image file (or DICOM folder); None when missing.
        label: label file; None when the case has none (written image-only, ``annotated: []``).
        skip: a reason to skip the case, or None.
    """

    source_name: str
    case_id: str
    image: Path | None
    label: Path | None
    skip: str | None = None


def parse_label_map(text: str) -> dict[int, int]:
    """``"1=6,2=6"`` -> {1: 6, 2: 6}; challenge ids must be 1..13, source ids 1 and up, each given once.

    Raises:
        ValueError: a malformed entry, source id 0 or a source id given twice, quoting it.
    """
    table: dict[int, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"(\d+)\s*=\s*(\d+)", item)
        if not match:
            raise ValueError(f"--label-map: '{item}' is not SRC_ID=CHALLENGE_ID (e.g. 1=6,2=6)")
        src, dst = int(match.group(1)), int(match.group(2))
        if not 1 <= dst <= 13:
            raise ValueError(f"--label-map: '{item}': challenge ids are 1..13")
        if src == 0:  # the background would become an organ
            raise ValueError(f"--label-map: '{item}': source id 0 is the background; map organ ids (1 and up)")
        if src in table:
            raise ValueError(f"--label-map: source id {src} given twice ({src}={table[src]} and '{item}')")
        table[src] = dst
    if not table:
        raise ValueError("--label-map: empty (expected SRC_ID=CHALLENGE_ID,...)")
    return table


def get_layout(name: str, label_map: dict[int, int] | None = None) -> Layout:
    """The layout ``name``; ``nifti`` takes its label map from ``label_map``.

    Raises:
        ValueError: unknown name, or a label map given to a fixed layout / missing for ``nifti``.
    """
    if name not in LAYOUTS:
        raise ValueError(f"layout '{name}' unknown, expected one of {', '.join(LAYOUTS)}")
    layout = LAYOUTS[name]
    if name == "nifti":
        if not label_map:
            raise ValueError("layout nifti needs --label-map SRC_ID=CHALLENGE_ID,...")
        return Layout("nifti", dict(label_map), tuple(sorted(set(label_map.values()))))
    if label_map:
        raise ValueError(f"--label-map is for the nifti layout; {name} has its own label ids")
    return layout


def _nii(folder: Path) -> list[Path]:
    """``.nii.gz``/``.nii`` files of a folder, macOS ``._*`` resource forks left out, in name order."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name.lower().endswith((".nii.gz", ".nii")) and not p.name.startswith("._"))


def _stem(path: Path) -> str:
    name = path.name
    return name[:-7] if name.lower().endswith(".nii.gz") else name[:-4] if name.lower().endswith(".nii") else name


def _base(stem: str) -> str:
    """The name without an nnU-Net channel suffix: ``spleen_1_0000`` -> ``spleen_1``. The suffix is cut only
    when another number is left before it (``PANCREAS_0001`` keeps its number)."""
    match = re.fullmatch(r"(.*\d.*)_\d{4}", stem)
    return match.group(1) if match else stem


def _digits(name: str, width: int) -> str:
    found = re.findall(r"\d+", _base(name))
    return f"{int(found[-1]):0{width}d}" if found else re.sub(r"[^A-Za-z0-9]+", "-", name)


def _by_id(entries: list[tuple[str, Path]]) -> dict[str, Path]:
    """Case id -> file, refusing two files with one id (one would overwrite the other)."""
    out: dict[str, Path] = {}
    for case_id, path in entries:
        if case_id in out:
            raise ValueError(f"{out[case_id]} and {path} both give case id {case_id}: one would overwrite the "
                             "other; rename or move one of them")
        out[case_id] = path
    return out


def find_cases(layout: Layout, src: Path) -> list[SourceCase]:
    """Every case of ``src`` in ``layout``'s folder structure, the skipped ones with their reason.

    Raises:
        ValueError: ``src`` is not a folder of that layout (one line naming what is missing), or two of its
            files give one case id (naming both).
    """
    if not src.is_dir():
        raise ValueError(f"{src}: not a folder")
    if layout.name in MSD_FOLDERS:
        cases = _msd_cases(layout, src)
    elif layout.name == "kits19":
        cases = _kits_cases(src)
    elif layout.name == "tcia_pancreas":
        cases = _tcia_cases(src)
    else:
        cases = _nifti_cases(src)
    _by_id([(c.case_id, c.image or c.label or Path(c.source_name)) for c in cases])
    out = []
    for case in cases:
        reason = case.skip or layout.excluded.get(case.source_name)
        out.append(SourceCase(case.source_name, case.case_id, case.image, case.label, reason))
    return out


def nothing_to_prepare(layout: Layout, src: Path, cases: list[SourceCase]) -> str:
    """The one line refusing a cohort none of whose cases can be prepared (every case skipped, or none)."""
    if not cases:
        return f"{src}: no case found ({layout.name})"
    if layout.name == "kits19" and all(case.image is None for case in cases):
        return (f"{src}: no imaging.nii.gz in any of its {len(cases)} case_XXXXX folders: run kits19's "
                "starter_code.get_imaging first")
    reasons: dict[str, int] = {}
    for case in cases:
        kind = re.sub(r"\S*/\S*", "...", case.skip or "").split(" (")[0]  # the reason without its paths
        reasons[kind] = reasons.get(kind, 0) + 1
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    first = cases[0]
    return f"{src}: no case to prepare, all {len(cases)} skipped ({counts}; e.g. {first.source_name}: {first.skip})"


def _msd_cases(layout: Layout, src: Path) -> list[SourceCase]:
    meta_path = src / "dataset.json"
    if not (src / "imagesTr").is_dir():
        raise ValueError(f"{src}: no imagesTr/ folder (an MSD task folder such as {MSD_FOLDERS[layout.name]}/ "
                         "holds dataset.json, imagesTr/ and labelsTr/)")
    pairs: list[tuple[Path, Path]] = []
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            labels = {str(k): str(v).strip().lower() for k, v in meta.get("labels", {}).items()}
            training = [(src / e["image"], src / e["label"]) for e in meta["training"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{meta_path}: not an MSD dataset.json ({type(exc).__name__}: {exc})") from None
        for key, name in layout.msd_labels.items():
            if name not in labels.get(key, ""):
                raise ValueError(f"{meta_path}: label {key} is '{labels.get(key)}', expected '{name}...' for "
                                 f"{layout.name} ({MSD_FOLDERS[layout.name]}): is this the right LAYOUT?")
        pairs = [(i, lab) for i, lab in training if not i.name.startswith("._")]
    else:
        pairs = [(i, src / "labelsTr" / i.name) for i in _nii(src / "imagesTr")]
    return [SourceCase(_base(_stem(i)).lower(), _digits(_stem(i), 4), i if i.exists() else None, lab, None
                       if i.exists() else f"image file {i} not found") for i, lab in pairs]


def _kits_cases(src: Path) -> list[SourceCase]:
    data = src / "data" if (src / "data").is_dir() else src
    folders = sorted(p for p in data.iterdir() if p.is_dir() and p.name.startswith("case_"))
    if not folders:
        raise ValueError(f"{src}: no case_XXXXX folders (KiTS19 holds data/case_00000/imaging.nii.gz)")
    out = []
    for folder in folders:
        image, label = folder / "imaging.nii.gz", folder / "segmentation.nii.gz"
        skip = None if image.exists() else f"no imaging.nii.gz in {folder}"
        out.append(SourceCase(folder.name.lower(), _digits(folder.name, 5), image if image.exists() else None,
                              label if label.exists() else None, skip))
    return out


def _tcia_cases(src: Path) -> list[SourceCase]:
    images, labels = src / "images", src / "labels"
    if not images.is_dir():
        raise ValueError(f"{src}: no images/ folder ({TCIA_HELP})")
    found = _by_id([(_digits(_stem(entry), 4), entry) for entry in sorted(images.iterdir())
                    if not entry.name.startswith("._")
                    and (entry.is_dir() or entry.name.lower().endswith((".nii.gz", ".nii")))])
    label_files = _by_id([(_digits(_stem(p), 4), p) for p in _nii(labels)])
    out = []
    for num in sorted(set(found) | set(label_files)):
        image = found.get(num)
        if image is not None and image.is_dir():
            series = sorted({p.parent for p in image.rglob("*.dcm")})
            image = series[0] if len(series) == 1 else image
        skip = None if image is not None else f"label {label_files[num]} has no image"
        out.append(SourceCase(f"pancreas_{num}", num, image, label_files.get(num), skip))
    return out


def _nifti_cases(src: Path) -> list[SourceCase]:
    images = _nii(src / "imagesTr")
    if not images:
        raise ValueError(f"{src}: no imagesTr/*.nii.gz ({NIFTI_HELP})")
    out = []
    for image in images:
        stem = _stem(image)
        base = stem[:-5] if re.search(r"_\d{4}$", stem) else stem
        label = next((p for p in (src / "labelsTr" / image.name, src / "labelsTr" / (base + ".nii.gz"))
                      if p.exists()), None)
        digits = re.findall(r"\d+", base)
        out.append(SourceCase(stem.lower(), f"{int(digits[-1]):04d}" if digits else "", image, label, None))
    ids = [c.case_id for c in out]
    if "" in ids or len(set(ids)) < len(ids):  # names without a unique number: numbered in name order
        out = [SourceCase(c.source_name, f"{n:04d}", c.image, c.label, c.skip) for n, c in enumerate(out, 1)]
    return out
