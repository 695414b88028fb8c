"""The paper's recipe as an ordered plan of ``l2r`` commands, with a done-marker per step.

Estienne et al. 2020 (Learn2Reg 2020, Task 3; the authors' repository TheoEst/abdominal_registration):
external CT cohorts brought into the challenge's frame, a segmentation network trained on them with a
partial-label loss, its predictions (noisy labels) for every scan, two pretrainings of the registration
network on all scans (unsupervised; with the noisy labels), each fine-tuned on the challenge's true labels.
Both pretrainings start from scratch and run 300 epochs (the authors' README: ``--zeros-init``, no
``--model-abspath``); each fine-tuning starts from its pretraining (``--model-abspath``) and runs 300 epochs.

Every step is an ``l2r`` argument list (what ``--dry-run`` prints is what runs); when a step is done is
:mod:`l2r_submit.recipe.markers`' job. Nothing here imports torch or numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..training.checks import parse_crop

COHORT_LAYOUTS = ("msd_liver", "msd_pancreas", "msd_hepatic_vessel", "msd_spleen", "msd_colon", "kits19",
                  "tcia_pancreas")
"""Layouts ``l2r cohort prepare`` reads that the recipe can name (``nifti`` needs a label map: prepare it
by hand and it is not a recipe cohort)."""
SEGMENTER_LAYOUTS = frozenset({"msd_liver", "msd_pancreas", "msd_spleen", "kits19", "tcia_pancreas"})
"""Cohorts the segmenter trains on (with the challenge's scans), as the authors' ``main_seg`` command: MSD
hepatic vessel and colon annotate no challenge organ; they get pseudo-labels and join the pretraining."""
ROWS = {"symmetric": "0.40", "pretrain": "0.52", "noisy": "0.63"}
"""``--rows`` name -> the paper's validation Dice of that row (authors' README: 0.400, 0.522, 0.625)."""
DEFAULT_ROWS = ("pretrain", "noisy")
PAPER_EPOCHS = {"segment-train": 400, "registration": 300}


@dataclass(frozen=True)
class Step:
    """One step of the recipe.

    Attributes:
        name: the step's name (``--epochs NAME=N``, ``--redo NAME``, the marker's file name).
        argv: the ``l2r`` arguments (without ``l2r`` itself and without ``--resume``).
        outputs: files or folders that must exist once the step is done.
        needs: names of the earlier steps whose outputs it reads.
        all_ranks: a training step, run by every process under ``torchrun`` (the others: rank 0 alone).
        epochs: the epochs it trains (None: not a training step).
        run_dir: the training run's folder (``--resume`` is added when it holds ``last.pt``).
        folder: the folder the step writes, moved aside by ``--redo`` (None: its outputs are moved).
        about: what the step makes, and the paper's row it reproduces.
    """

    name: str
    argv: tuple[str, ...]
    outputs: tuple[Path, ...]
    needs: tuple[str, ...] = ()
    all_ranks: bool = False
    epochs: int | None = None
    run_dir: Path | None = None
    folder: Path | None = None
    about: str = ""

    def command(self, resume: bool = False) -> tuple[str, ...]:
        """The argument list that runs: ``argv``, plus ``--resume`` to continue a stopped training run."""
        return self.argv + (("--resume",) if resume else ())

    def can_resume(self) -> bool:
        """Whether a stopped run of this step left ``last.pt`` to continue."""
        return self.run_dir is not None and (self.run_dir / "last.pt").is_file()

    def written(self) -> tuple[Path, ...]:
        """What ``--redo`` moves aside: the step's folder, or its outputs."""
        return (self.folder,) if self.folder is not None else self.outputs


@dataclass(frozen=True)
class Options:
    """What ``l2r recipe paper`` was asked.

    Attributes:
        challenge_json: the challenge's dataset JSON.
        cohorts: (layout, source folder) per external cohort, in the order given.
        out: the recipe's folder.
        model: ``paper`` or ``tiny`` (both networks).
        epochs: step name (or ``all``) -> epochs, over the paper's (:data:`PAPER_EPOCHS`).
        crop: step name (or ``all``) -> crop text (``144,144,144`` or ``none``) for training steps.
        batch_size: step name (or ``all``) -> global batch for training steps.
        rows: the paper's rows to reproduce (:data:`ROWS`).
        skip_failed: cohort cases that fail to prepare are left out (listed in their integrity.json).
        device, threads, workers, quiet: passed to the steps that take them.
    """

    challenge_json: Path
    cohorts: tuple[tuple[str, Path], ...]
    out: Path
    model: str = "paper"
    epochs: dict[str, int] = field(default_factory=dict)
    crop: dict[str, str] = field(default_factory=dict)
    batch_size: dict[str, int] = field(default_factory=dict)
    rows: tuple[str, ...] = DEFAULT_ROWS
    skip_failed: bool = False
    device: str = "auto"
    threads: int | None = None
    workers: int | None = None
    quiet: bool = False


def parse_cohort(text: str) -> tuple[str, Path]:
    """``LAYOUT=PATH`` -> (layout, path). Raises ValueError (one line) for another form or layout."""
    layout, sep, path = text.partition("=")
    if not sep or not path:
        raise ValueError(f"--cohort {text}: expected LAYOUT=PATH, e.g. msd_liver=data/Task03_Liver")
    if layout not in COHORT_LAYOUTS:
        hint = " (nifti needs --label-map: prepare it with l2r cohort prepare)" if layout == "nifti" else ""
        raise ValueError(f"--cohort {text}: layout '{layout}' unknown{hint}; layouts: {', '.join(COHORT_LAYOUTS)}")
    return layout, Path(path)


def parse_step_values(items: tuple[str, ...], option: str, names: list[str], kind: Callable[[str], object]) -> dict:
    """``STEP=VALUE`` items of a per-step option -> {step: value}; STEP is a step name or ``all``; ``kind``
    is ``int`` (a positive integer), ``str`` or a check that returns the value (e.g. :func:`crop_text`).

    Raises:
        ValueError: a malformed item, an unknown step, a step given twice or a value that ``kind`` refuses.
    """
    out: dict = {}
    for item in items:
        step, sep, value = item.partition("=")
        if not sep or not value:
            raise ValueError(f"{option} {item}: expected STEP=VALUE, e.g. {option} {names[0]}=2")
        if step != "all" and step not in names:
            raise ValueError(f"{option} {item}: no step '{step}'; steps: all, {', '.join(names)}")
        if step in out:  # the last one won silently
            raise ValueError(f"{option} {item}: {step} given twice; give each step one value")
        if kind is int:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{option} {item}: '{value}' is not a positive integer")
            out[step] = int(value)
        else:
            try:
                out[step] = kind(value)
            except ValueError as exc:
                raise ValueError(f"{option} {item}: {exc}") from None
    return out


def crop_text(text: str) -> str:
    """A training step's ``--crop`` text as given, once it reads as three positive sizes or ``none``: a typo is
    refused when the plan is made (also by ``--dry-run``), not hours later when the training step starts.

    Raises:
        ValueError: :func:`l2r_submit.training.checks.parse_crop`'s one line.
    """
    parse_crop(text)
    return text


def challenge_json_of(data: Path) -> Path:
    """The challenge's dataset JSON: ``data`` itself, or the one ``*_dataset.json`` in the folder ``data``.

    Raises:
        ValueError: no such file, or a folder without exactly one ``*_dataset.json``.
    """
    if data.is_file():
        return data
    if not data.is_dir():
        raise ValueError(f"--data {data}: no such file or folder")
    found = sorted(data.glob("*_dataset.json"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise ValueError(f"--data {data}: {what} *_dataset.json in this folder; give the JSON itself")
    return found[0]


def reference_image(challenge_json: Path) -> Path:
    """The challenge scan the cohorts are aligned to: its first training image (the authors used
    ``img0001``, i.e. ``AbdomenCTCT_0001_0000``). Raises ValueError when the JSON lists none."""
    from ..core import dataset

    ds = dataset.load(challenge_json)
    if not ds.training:
        raise ValueError(f"{challenge_json}: no training images; the cohorts need a reference scan")
    return ds.training[0].image


def step_names(opts: Options) -> list[str]:
    """The plan's step names in order (no file is read)."""
    names = [f"prepare-{layout}" for layout, _ in opts.cohorts] + ["merge", "segment-train", "pseudo-labels"]
    if "symmetric" in opts.rows:
        names.append("symmetric")
    if "pretrain" in opts.rows:
        names += ["pretrain-unsupervised", "finetune-unsupervised"]
    if "noisy" in opts.rows:
        names += ["pretrain-noisy", "finetune-noisy"]
    if not ({"pretrain", "noisy"} & set(opts.rows)):  # cohorts and pseudo-labels serve the pretrainings only
        names = [n for n in names if n == "symmetric"]
    return names


def build(opts: Options, reference: Path) -> list[Step]:
    """The ordered steps of ``opts`` (``reference``: the challenge scan the cohorts are aligned to).

    Layout of ``opts.out``: ``data/cohorts/<layout>/`` (prepared cohorts), ``data/pretrain_dataset.json``
    (challenge + cohorts, hard links of the challenge's files under ``data/challenge/``), ``segmenter/``,
    ``pseudo_labels/``, one folder per training step (its name with ``_`` for ``-``), ``steps/`` (markers).
    """
    out, cj = opts.out, opts.challenge_json
    data = out / "data"
    merged = data / "pretrain_dataset.json"
    cohort_json = {layout: data / "cohorts" / layout / "dataset.json" for layout, _ in opts.cohorts}
    tail = (("--quiet",) if opts.quiet else ())
    dev = ("--device", opts.device) + (("--threads", str(opts.threads)) if opts.threads else ())
    workers = ("--workers", str(opts.workers)) if opts.workers is not None else ()
    names = step_names(opts)
    steps: list[Step] = []

    def training(name: str) -> tuple[int, tuple[str, ...]]:
        default = PAPER_EPOCHS["segment-train" if name == "segment-train" else "registration"]
        epochs = opts.epochs.get(name, opts.epochs.get("all", default))
        extra: tuple[str, ...] = ("--epochs", str(epochs))
        for option, values in (("--crop", opts.crop), ("--batch-size", opts.batch_size)):
            value = values.get(name, values.get("all"))
            if value is not None:
                extra += (option, str(value))
        return epochs, extra

    for layout, src in opts.cohorts:
        name = f"prepare-{layout}"
        if name in names:
            steps.append(Step(name, ("cohort", "prepare", layout, str(src), "--out", str(cohort_json[layout].parent),
                                     "--reference", str(reference))
                              + (("--skip-failed",) if opts.skip_failed else ()) + tail,
                              (cohort_json[layout],), folder=cohort_json[layout].parent,
                              about=f"{layout} resampled, aligned and cropped to the challenge's frame"))
    if "merge" in names:
        steps.append(Step("merge", ("recipe", "merge", str(cj), *map(str, cohort_json.values()), "--out", str(merged)),
                          (merged,), needs=tuple(f"prepare-{la}" for la, _ in opts.cohorts),
                          about="the pretraining dataset: the challenge's training scans and every cohort's, "
                                "validated on the challenge's val pairs"))
    if "segment-train" in names:
        seg_dir = out / "segmenter"
        epochs, extra = training("segment-train")
        seg_jsons = [str(cohort_json[la]) for la, _ in opts.cohorts if la in SEGMENTER_LAYOUTS]
        steps.append(Step("segment-train", ("segment", "train", str(cj), *seg_jsons, "--out", str(seg_dir),
                                            "--model", opts.model) + extra + workers + dev + tail,
                          tuple(seg_dir / f for f in ("best.pt", "last.pt", "config.json", "log.jsonl")),
                          needs=tuple(f"prepare-{la}" for la, _ in opts.cohorts if la in SEGMENTER_LAYOUTS),
                          all_ranks=True, epochs=epochs, run_dir=seg_dir, folder=seg_dir,
                          about="the segmenter, partial-label Dice (each organ only where annotated)"))
    if "pseudo-labels" in names:
        steps.append(Step("pseudo-labels", ("segment", "predict", str(out / "segmenter" / "best.pt"), str(merged),
                                            "--out", str(out / "pseudo_labels")) + dev + tail,
                          (out / "pseudo_labels",), needs=("segment-train", "merge"), folder=out / "pseudo_labels",
                          about="noisy labels: one label map per scan of the pretraining dataset"))
    reg = ("--model", opts.model) + workers

    def registration(name: str, dataset: Path, preset: str, more: tuple[str, ...], needs: tuple[str, ...],
                     about: str) -> None:
        run_dir = out / name.replace("-", "_")
        epochs, extra = training(name)
        steps.append(Step(name, ("train", str(dataset), "--out", str(run_dir), "--preset", preset) + more + reg
                          + extra + dev + tail,
                          tuple(run_dir / f for f in ("best.pt", "last.pt", "config.json", "log.jsonl")),
                          needs=needs, all_ranks=True, epochs=epochs, run_dir=run_dir, folder=run_dir,
                          about=about))

    for name in names:
        if name == "symmetric":
            registration(name, cj, "symmetric", (), (), "the paper's 0.40 row: symmetric, challenge data only")
        elif name == "pretrain-unsupervised":
            registration(name, merged, "pretrain-unsupervised", (), ("merge",),
                         "unsupervised pretraining on all scans, from scratch")
        elif name == "pretrain-noisy":
            registration(name, merged, "pretrain-noisy", ("--labels-dir", str(out / "pseudo_labels")),
                         ("merge", "pseudo-labels"), "pretraining with the noisy labels on all scans, from scratch")
        elif name.startswith("finetune-"):
            source = name.replace("finetune", "pretrain")
            row = "0.52" if source.endswith("unsupervised") else "0.63"
            registration(name, cj, "finetune", ("--init", str(out / source.replace("-", "_") / "best.pt")),
                         (source,), f"the paper's {row} row: {source}'s best.pt fine-tuned on the true labels")
    return steps
