"""The official Learn2Reg evaluator's versions, as rules read from each version's own source.

Source: the public repository MDL-UzL/L2R, ``evaluation/evaluation.py`` and ``evaluation/utils.py``.
Each rule names the commit it was read from. The 2020 evaluator is not in that repository's history;
its rules are those of ``l2r_conventions.md`` (half-resolution float16 npz, ddof 1, 0.3 quantiles).

======== ============================== =============================================================
version  source                         rules that differ
======== ============================== =============================================================
2025     8847509 (2025-02-10, HEAD)     same-modality pairs: only the long name
                                        ``disp_FFFF_0000_MMMM_0000``; the short name only for modality
                                        0000 -> 0001 (tried first there); ``.npz`` with one array
                                        under any key (more than one: error); SDlogJ '30' = 0.7
                                        quantile; aggregates over the configured metrics only
2024     28985b7 (2024-08-01)           names as 2022; ``.npz`` read as ``['arr_0']``; SDlogJ '30' =
                                        0.7 quantile; aggregates over the configured metrics only
2022     56f96d5 (2023-07-11; the       same modality or 0000 -> 0001: only the short name
         rules since d45540a,           ``disp_FFFF_MMMM``; other pairs: only the long name;
         2023-06-28, npz allowed)       ``.npz`` read as ``['arr_0']``; every '30' is the 0.3
                                        quantile; every case key is aggregated (so ``num_foldings``
                                        too); before d45540a only ``.nii.gz`` was read
2020     (2020 challenge tooling)       ``disp_FFFF_MMMM.npz`` only: float16 (3, I/2, J/2, K/2),
                                        upsampled by ``zoom(c, 2, order=2)``; std ddof 1; 0.3 quantiles
======== ============================== =============================================================

Common to 2025, 2024 and 2022 (aggregation unchanged since 3a37e9a, 2023-05-22): std with ddof 0
(``np.std``), no NaN skipped in the aggregates; ``.npz`` before ``.nii.gz``; non-float32 ``.npz`` arrays
cast to float32; ``.nii.gz`` read with ``get_fdata()``; Dice/HD95 NaN when a label is absent from the
fixed or moving labels, pair score ``np.nanmean``; with ``masked_evaluation: true`` (since e8c7b85,
2022-05-24) SDlogJ is the std over the voxels where the fixed image's mask (its path with ``images`` ->
``masks``) equals 1, cropped by 2; a missing mask file means an unmasked SDlogJ with a printed note;
``num_foldings`` never masked.

Not reproduced: the evaluator of May 2022 to May 2023, in place during the 2022 challenge (e.g. 8e07b39,
2022-09-09). It aggregated a pandas DataFrame (std with ddof 1; mean, std and quantile skip NaN), read only
``disp_FFFF_MMMM.nii.gz``, and until 89b1021 (2022-12-20) took a pair's Dice and HD95 as the sum over the
labels present in both maps divided by their count (a pair with none stopped the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NAMES = ("2025", "2024", "2022", "2020")
DEFAULT = "2025"


@dataclass(frozen=True)
class Version:
    """One official evaluator version.

    Attributes:
        name: protocol name (``--protocol``).
        source: the commit (hash, date) the rules were read from.
        exts: file extensions tried, in order.
        npz_any_key: the single array under any key (else the key ``arr_0`` is required).
        sdlogj_quantile: the quantile reported as SDlogJ's '30'.
        ddof: delta degrees of freedom of the aggregate std.
        aggregate_all_keys: aggregate every case entry (``num_foldings`` included), not only the
            configured metrics.
        half_resolution: the 2020 float16 channel-first half-resolution form.
    """

    name: str
    source: str
    exts: tuple[str, ...]
    npz_any_key: bool
    sdlogj_quantile: float
    ddof: int
    aggregate_all_keys: bool
    half_resolution: bool = False

    def stems(self, fixed_id: str, fixed_mod: str, moving_id: str, moving_mod: str) -> list[str]:
        """The file stems this version looks for, in the order it tries them."""
        short = f"disp_{fixed_id}_{moving_id}"
        long = f"disp_{fixed_id}_{fixed_mod}_{moving_id}_{moving_mod}"
        if self.name == "2020":
            return [short]
        if self.name == "2025":
            return [short, long] if (fixed_mod, moving_mod) == ("0000", "0001") else [long]
        return [short] if (fixed_mod == moving_mod or (fixed_mod, moving_mod) == ("0000", "0001")) else [long]

    def candidates(self, disp_dir: Path, fixed_id: str, fixed_mod: str, moving_id: str, moving_mod: str) -> list[Path]:
        """Every existing file this version could read for the pair, in its order of preference."""
        return [disp_dir / (stem + ext) for stem in self.stems(fixed_id, fixed_mod, moving_id, moving_mod)
                for ext in self.exts if (disp_dir / (stem + ext)).is_file()]


VERSIONS: dict[str, Version] = {
    "2025": Version("2025", "MDL-UzL/L2R 8847509 (2025-02-10)", (".npz", ".nii.gz"), True, 0.7, 0, False),
    "2024": Version("2024", "MDL-UzL/L2R 28985b7 (2024-08-01)", (".npz", ".nii.gz"), False, 0.7, 0, False),
    "2022": Version("2022", "MDL-UzL/L2R 56f96d5 (2023-07-11)", (".npz", ".nii.gz"), False, 0.3, 0, True),
    "2020": Version("2020", "Learn2Reg 2020 tooling (l2r_conventions.md)", (".npz",), False, 0.3, 1, True, True),
}


def get(name: str) -> Version:
    """The version called ``name``.

    Raises:
        ValueError: unknown name, naming the known ones.
    """
    if name not in VERSIONS:
        raise ValueError(f"protocol: '{name}' received, expected one of {', '.join(NAMES)} "
                         f"(evaluator versions; 2025 is the current one)")
    return VERSIONS[name]
