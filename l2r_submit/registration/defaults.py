"""Predict's defaults: which stages run and the refinement's settings, chosen by measurement (README,
"Predict", "The global search" and "After the search: half resolution only").

The refinement's defaults depend on whether the search runs before it; :func:`default_stage_names` says
which stages run when none are named, :func:`default_io` gives the refinement's settings for either case.
"""

from __future__ import annotations

from pathlib import Path

from .instance import IOConfig
# the default stages are chosen before torch is imported (the CLI's checks): they live in predict_args
from .predict_args import DEFAULT_STAGES, NETWORK_STAGES, default_stage_names  # noqa: F401

DEFAULT_IO_ITERS = 40  # after the search, half resolution only: README, "After the search: half resolution only"
DEFAULT_IO_ITERS_NO_SEARCH = 80  # from a zero field or the network's: quarter, then half resolution
# after the search, a pair in which an image is not CT (MR-like pairs: README, "More iterations when an image is
# not CT"); two CT images keep DEFAULT_IO_ITERS (80 lost on both real CT pairs), and so does an image floored
# against a CT in the soft-tissue window (MR against abdominal CT: 40 level with 120 there)
DEFAULT_IO_ITERS_NON_CT = 120
DEFAULT_IO_FIELD = "velocity"  # invertible updates: no folds at a weaker regulariser (README, "Predict")
DEFAULT_IO_REG = {"displacement": 1.0, "velocity": 0.25}  # diffusion weight per field model
# after the search the velocity's weight is halved: +0.01-0.03 Dice on every inter-patient case measured, SDlogJ
# 0.085 -> 0.090 (README, "After the search: half resolution only"); the displacement model's is unmeasured there
DEFAULT_IO_REG_AFTER_SEARCH = {"displacement": 1.0, "velocity": 0.125}


def default_io(iters: int | None = None, field: str = DEFAULT_IO_FIELD, reg: float | None = None,
               similarity: str = "mind", after_search: bool = True,
               iters_non_ct: int | None = None) -> IOConfig:
    """The refinement's settings with predict's defaults; ``reg`` None: the default of the field model.

    ``after_search``: the search runs before the refinement, so the large displacements are already found
    and the refinement works on the half-resolution grid only (``coarse_fraction`` 0; ``iters`` None:
    ``DEFAULT_IO_ITERS``; ``reg`` None: ``DEFAULT_IO_REG_AFTER_SEARCH``). Otherwise the quarter-resolution
    level comes first, as it must to find anything from a zero field (IOConfig's ``coarse_fraction``;
    ``iters`` None: ``DEFAULT_IO_ITERS_NO_SEARCH``; ``reg`` None: ``DEFAULT_IO_REG``).
    ``iters_non_ct`` (a pair in which an image is not CT, unless floored against a soft-window CT: :func:`instance.for_pair`) None:
    ``DEFAULT_IO_ITERS_NON_CT``
    when both ``iters`` is None and the search runs first (measured only there), else ``iters``.
    """
    if iters_non_ct is None and iters is None and after_search:
        iters_non_ct = DEFAULT_IO_ITERS_NON_CT
    if iters is None:
        iters = DEFAULT_IO_ITERS if after_search else DEFAULT_IO_ITERS_NO_SEARCH
    if reg is None:
        reg = (DEFAULT_IO_REG_AFTER_SEARCH if after_search else DEFAULT_IO_REG)[field]
    levels = {"coarse_fraction": 0.0} if after_search else {}
    return IOConfig(iters, similarity=similarity, field=field, reg=reg, iters_non_ct=iters_non_ct,
                    **levels)


def io_for_stages(stages: tuple[str, ...] | None, checkpoint: Path | None, iters: int | None = None,
                  field: str = DEFAULT_IO_FIELD, reg: float | None = None, similarity: str = "mind",
                  iters_non_ct: int | None = None) -> IOConfig:
    """:func:`default_io` for the stages that will run: ``stages`` as named (None: :func:`default_stage_names`),
    after the search when ``search`` is among them. What ``l2r predict`` and ``PredictConfig(io=None)`` use."""
    planned = stages if stages is not None else default_stage_names(checkpoint, iters)
    return default_io(iters, field, reg, similarity, after_search="search" in planned,
                      iters_non_ct=iters_non_ct)
