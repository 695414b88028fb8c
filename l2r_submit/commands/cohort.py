"""``l2r cohort``: external CT cohorts brought into the challenge's frame (the paper's extra data)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from .common import Fail, file_by_file_stops

LAYOUT_NAMES = ("msd_liver", "msd_pancreas", "msd_hepatic_vessel", "msd_spleen", "msd_colon", "kits19",
                "tcia_pancreas", "nifti")


@click.group()
def cohort() -> None:
    """External CT cohorts (MSD, KiTS19, TCIA Pancreas-CT, any NIfTI folder) in the challenge's frame."""


@cohort.command()
@click.argument("layout", type=click.Choice(LAYOUT_NAMES))
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="The prepared cohort's folder.")
@click.option("--reference", type=click.Path(path_type=Path), required=True,
              help="A challenge image (2 mm, e.g. imagesTr/AbdomenCTCT_0001_0000.nii.gz): every case is translated "
                   "onto it and written on its grid.")
@click.option("--label-map", default=None, metavar="SRC=DST,...",
              help="nifti layout only: source label id -> challenge id (1..13), e.g. 1=6,2=6; other ids become 0.")
@click.option("--name", default=None,
              help="Prefix of the written names [default: the layout; nifti: SRC's folder name].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Prepare at most N usable cases.")
@click.option("--skip-failed", is_flag=True,
              help="Write dataset.json without the cases that failed (they stay in integrity.json) and exit 0.")
@click.option("--quiet", is_flag=True, help="Only errors and the final line.")
def prepare(layout: str, src: Path, out_dir: Path, reference: Path, label_map: str | None, name: str | None,
            limit: int | None, skip_failed: bool, quiet: bool) -> None:
    """Bring cohort SRC into the challenge's frame: OUT/imagesTr, OUT/labelsTr, integrity.json, dataset.json.

    \b
    Layouts (SRC is the folder named):
      msd_liver, msd_pancreas, msd_hepatic_vessel, msd_spleen, msd_colon: an MSD task folder
        (Task03_Liver/ ...: dataset.json, imagesTr/, labelsTr/; macOS ._* files ignored; imagesTr only)
      kits19: the KiTS19 repository or its data/ (case_XXXXX/imaging.nii.gz, segmentation.nii.gz);
        a case without segmentation is written image-only (annotated [])
      tcia_pancreas: images/PANCREAS_NNNN.nii.gz (NIfTI converted) or images/PANCREAS_NNNN/ (DICOM
        series, read with SimpleITK), labels/labelNNNN.nii.gz (NIH pancreas labels)
      nifti: imagesTr/*.nii.gz, labelsTr/<same name>, with --label-map
    Each case: 2 mm (linear image, nearest labels), reoriented by its affine to the reference's axes,
    translated onto the reference (masked cross-correlation), cropped or padded to its shape (-1024 HU,
    label 0 outside), labels mapped to challenge ids with the organs annotated listed per case.
    Resumable: cases already written with the same reference, label map and layout are skipped (others are
    made again). --out must lie outside SRC. Exit 0: every usable case written; 1: some failed
    (the others are written, dataset.json is not unless --skip-failed); 2: bad arguments.
    """
    from ..recipe import cohorts, prepare as prep

    try:
        table = cohorts.parse_label_map(label_map) if label_map is not None else None
        lay = cohorts.get_layout(layout, table)
    except ValueError as exc:
        raise Fail(str(exc)) from None
    if not src.is_dir():
        raise Fail(f"{src}: SRC folder not found")
    if not reference.is_file():
        raise Fail(f"{reference}: --reference file not found")
    prefix = name or (layout if layout != "nifti" else src.resolve().name.lower())
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", prefix):
        raise Fail(f"--name '{prefix}': use letters, digits, '_' and '-' (it starts every written file name)")
    from ..core.folders import writable_folder

    def log(line: str) -> None:
        if not (quiet and line.startswith("[")):
            print(line, file=sys.stderr, flush=True)

    cfg = prep.PrepareConfig(lay, src, out_dir, reference, prefix, limit, skip_failed, log)
    try:
        prep.check_out_outside_src(src, out_dir)  # before writable_folder makes anything
        with writable_folder(out_dir, "--out"), file_by_file_stops(lambda: f"the cases written are kept in {out_dir}"):
            code = prep.run(cfg)  # a refusal (e.g. an unreadable --reference) leaves no empty folder
    except ValueError as exc:
        raise Fail(str(exc)) from None
    sys.exit(code)
