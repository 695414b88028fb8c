"""Score one pair and aggregate pairs, in the official metrics.json schema (eval_version 2.0).

Per case: ``{metric_name: {"mean": x, "detailed": list-or-x}, "num_foldings": {...}}`` exactly as the
official evaluator writes it, plus extra entries beside them (never instead of them):

* ``SDlogJ_plain``: std(log J) over voxels with J > 0 (the official number adds 3 to J first);
* ``jac_nonpos_fraction``: the true fraction of voxels with J <= 0 (the official fold count is always 0);
* ``vanished_labels``: labels present in fixed and moving that the warp removed (their HD95 is inf);
* ``<name>_zero_field`` for each Dice method (``DSC_zero_field`` for the default ``DSC``): per-label
  Dice of the unwarped pair, used for that method's ranking DSC30.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..core import versions
from ..core.metric_specs import MetricSpec
from . import metrics

EXTRA_SCALARS = ("SDlogJ_plain", "jac_nonpos_fraction")


def score_case(fixed_seg: np.ndarray, moving_seg: np.ndarray, disp: np.ndarray,
               specs: Sequence[MetricSpec], sdlogj_mask: np.ndarray | None = None) -> dict:
    """All metrics of one pair.

    Args:
        fixed_seg, moving_seg: (I, J, K) integer label maps.
        disp: (3, I, J, K) voxel pull map on the fixed grid, in the dtype the official loader gives.
        specs: evaluation methods (names, metric kinds, labels).
        sdlogj_mask: (I, J, K) fixed-image mask for ``masked_evaluation``: SDlogJ is then the std over
            the voxels where the mask equals 1 (the evaluator's ``MaskedArray(log_jac, 1 - mask)``);
            ``num_foldings`` and the extra Jacobian numbers stay unmasked, as there.

    Returns:
        The case dict described in the module docstring.

    Raises:
        ValueError: label maps whose shape differs from the field's.
    """
    shape = tuple(disp.shape[1:])
    for name, seg in (("fixed labels", fixed_seg), ("moving labels", moving_seg)):
        if tuple(seg.shape) != shape:
            raise ValueError(f"{name}: shape {tuple(seg.shape)} received, expected {shape} (the field's grid)")
    if sdlogj_mask is not None and tuple(sdlogj_mask.shape) != shape:
        raise ValueError(f"mask: shape {tuple(sdlogj_mask.shape)} received, expected {shape} (the field's grid)")
    case: dict = {}
    label_specs = [s for s in specs if s.metric in ("dice", "hd95")]
    if label_specs:
        max_label = max(max(s.labels, default=0) for s in label_specs)
        warped = metrics.warp_labels(moving_seg, disp)
        boxes_f = metrics.label_boxes(fixed_seg, max_label)
        boxes_m = metrics.label_boxes(moving_seg, max_label)
        boxes_w = metrics.label_boxes(warped, max_label)
    for spec in specs:
        if spec.metric == "sdlogj":
            jac_det = metrics.jacobian_determinant(disp)
            sd, folds = metrics.sdlogj_official(jac_det)
            if sdlogj_mask is not None:
                sd = metrics.sdlogj_masked(jac_det, sdlogj_mask)
            plain, nonpos = metrics.jacobian_stats(jac_det)
            case[spec.name] = {"mean": sd, "detailed": sd}
            case["num_foldings"] = {"mean": folds, "detailed": folds}
            case["SDlogJ_plain"] = {"mean": plain, "detailed": plain}
            case["jac_nonpos_fraction"] = {"mean": nonpos, "detailed": nonpos}
            continue
        detailed = []
        for label in spec.labels:
            bf, bm = boxes_f[label - 1], boxes_m[label - 1]
            if bf is None or bm is None:  # absent in fixed or in the unwarped moving labels
                detailed.append(float("nan"))
                continue
            box = metrics.union_box(bf, boxes_w[label - 1], shape, margin=1)
            f, w = fixed_seg[box] == label, warped[box] == label
            detailed.append(metrics.dice(f, w) if spec.metric == "dice" else metrics.hd95(f, w))
        case[spec.name] = {"mean": _nanmean(detailed), "detailed": detailed}
        if spec.metric == "dice":
            zero = []
            for label in spec.labels:
                bf, bm = boxes_f[label - 1], boxes_m[label - 1]
                if bf is None or bm is None:
                    zero.append(float("nan"))
                    continue
                box = metrics.union_box(bf, bm, shape)
                zero.append(metrics.dice(fixed_seg[box] == label, moving_seg[box] == label))
            case[f"{spec.name}_zero_field"] = {"mean": _nanmean(zero), "detailed": zero}
    if label_specs:
        labels = sorted({lab for s in label_specs for lab in s.labels})
        case["vanished_labels"] = [lab for lab in labels if boxes_f[lab - 1] is not None
                                   and boxes_m[lab - 1] is not None and boxes_w[lab - 1] is None]
    return case


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    if np.isnan(arr).all():
        return float("nan")
    return float(np.nanmean(arr))


def aggregate(cases: dict[str, dict], specs: Sequence[MetricSpec], protocol: str = versions.DEFAULT) -> dict:
    """Aggregates over pairs: ``{name: {"mean", "std", "30"}}`` plus the ranking's ``DSC30_ranking``.

    The rules of evaluator version ``protocol`` (:mod:`l2r_submit.core.versions`): 2025 and 2024 report the
    configured metrics (plus this tool's extra Jacobian numbers) with ddof 0 and SDlogJ's '30' the 0.7
    quantile; 2022 also aggregates ``num_foldings`` and uses the 0.3 quantile everywhere; 2020 adds
    ddof 1.

    Raises:
        ValueError: unknown protocol.
    """
    version = versions.get(protocol)
    out: dict = {}
    if not cases:
        return out
    names = [s.name for s in specs]
    if any(s.metric == "sdlogj" for s in specs):
        names += (["num_foldings"] if version.aggregate_all_keys else []) + list(EXTRA_SCALARS)
    sdlogj_names = {s.name for s in specs if s.metric == "sdlogj"} | set(EXTRA_SCALARS)
    for name in names:
        values = np.array([c[name]["mean"] for c in cases.values()], dtype=np.float64)
        q = version.sdlogj_quantile if name in sdlogj_names else 0.3
        with np.errstate(invalid="ignore"):  # an inf HD95 gives NaN std and quantile, as the evaluator's numpy does
            std = float(values.std(ddof=version.ddof)) if len(values) > version.ddof else float("nan")
            out[name] = {"mean": float(values.mean()), "std": std, "30": float(np.quantile(values, q))}
    for spec in specs:
        if spec.metric == "dice":
            out[f"{spec.name}30_ranking"] = ranking_dsc30(cases, spec.name)
    return out


def ranking_dsc30(cases: dict[str, dict], dice_name: str = "DSC") -> dict:
    """The challenge ranking's DSC30: mean Dice over the 30% of (pair, label) entries that are hardest
    under the zero field (lowest unwarped Dice).

    The rule is the organisers' ranking code (MDL-UzL/L2R): the 2022 ranking notebook
    (``ranking/L2R2122_ranking_final_significance_oasis-3.ipynb`` at 204f881, since deleted) sets every
    NaN Dice to 0 (``dice[dice!=dice] = 0``), the zero field's included, and keeps the entries of the
    lowest ``np.argsort`` of the zero field's Dice, k = 0.3 x pairs x labels (399 = 0.3 x 38 x 35 there);
    ``ranking/ranking_utils.py`` ``rubustify`` (8847509) writes k as ``round((cases * labels) * 0.3)``
    (Python's round: half to even). Every (pair, label) entry of the Dice method takes part. Ties at the
    cut: numpy's default (unstable) sort there, and the current notebooks read the order from a
    ``<task>_ordered_difficulty.csv`` of the organisers' results (not published); here ties keep
    pair/label order, which may differ from theirs where entries tie at the cut.

    Returns:
        ``{"mean": value, "entries": k}``; NaN when k is 0 (no pairs).
    """
    zero, method = [], []
    for case in cases.values():
        for z, d in zip(case[f"{dice_name}_zero_field"]["detailed"], case[dice_name]["detailed"]):
            zero.append(0.0 if math.isnan(z) else z)
            method.append(0.0 if math.isnan(d) else d)
    zero_arr, method_arr = np.asarray(zero, dtype=np.float64), np.asarray(method, dtype=np.float64)
    k = round(len(zero_arr) * 0.3)  # the notebooks' round((num_cases * num_labels) * .3)
    if k == 0:
        return {"mean": float("nan"), "entries": 0}
    hardest = np.argsort(zero_arr, kind="stable")[:k]
    return {"mean": float(np.mean(method_arr[hardest])), "entries": int(k)}
