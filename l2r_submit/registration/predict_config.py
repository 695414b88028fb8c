"""What ``l2r predict`` (and :func:`l2r_submit.registration.predict.run`) is asked: :class:`PredictConfig`,
checked when made, and the stages it runs. No file is read here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.dataset import Dataset
from . import stages as stg
from .affine import AffineConfig
from .defaults import default_stage_names, io_for_stages
from .instance import IOConfig
from .quick_rerun import DEFAULT_WEIGHTS_DIR
from .search import SearchConfig


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
        fmt, names: output format and file names (see :func:`l2r_submit.core.disp_files.write_disp`).
        device: ``auto``, ``cpu`` or ``cuda``.
        io: instance optimisation settings (``iters=0``: no ``adam`` stage); None: :func:`default_io` for
            the stages that will run (after the search or not).
        network: False drops the ``network`` stage (the next stage starts from a zero field).
        stages: the stages to run, among ``network``, ``affine``, ``search``, ``adam`` (always in that
            order); None: :func:`default_stages`.
        search: global search settings.
        affine: settings of the ``affine`` stage (used only when ``stages`` names it).
        qc_dir: write one QC picture per pair there.
        overwrite: redo pairs whose outputs exist.
        threads: CPU threads (None: all available; with ``shard`` on CPU, the cores shared out).
        progress: progress bar on stderr.
        pipeline: overlap reading and writing with computing (False: one step after the other).
        shard: ``(K, N)``: only every N-th pair from the K-th (0-based), one of N ranks.
        keep_freed_memory: ask the C allocator to keep freed memory for the whole process
            (:func:`l2r_submit.core.runtime.keep_freed_memory`; ``l2r predict`` sets it).
        request: what the command was asked (:func:`l2r_submit.registration.quick_rerun.request_key`), recorded in
            run.json so that the same request can later be found to have nothing to do without torch.
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
    io: IOConfig | None = None
    network: bool = True
    stages: tuple[str, ...] | None = None
    search: SearchConfig = field(default_factory=SearchConfig)
    affine: AffineConfig = field(default_factory=AffineConfig)
    qc_dir: Path | None = None
    overwrite: bool = False
    threads: int | None = None
    progress: bool = True
    pipeline: bool = True
    shard: tuple[int, int] | None = None
    request: dict | None = None
    keep_freed_memory: bool = False

    def __post_init__(self) -> None:
        """Paths given as strings become Paths; the wrong kind of value is refused here, in one line, rather
        than deep inside the run (a string of pairs was split into its characters).

        Raises:
            ValueError: ``dataset`` not a loaded Dataset, ``pairs`` a single string, ``threads`` below 1.
        """
        if not isinstance(self.dataset, Dataset):
            raise ValueError(f"dataset: a loaded Dataset (l2r_submit.core.dataset.load(path)), not "
                             f"{type(self.dataset).__name__}")
        for name in ("out_dir", "checkpoint", "weights_dir", "qc_dir"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        if isinstance(self.pairs, str):
            raise ValueError(f"pairs: a tuple of names, e.g. ({self.pairs!r},), not a string")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: {self.threads} received, expected at least 1 (None: all)")
        if self.io is None:  # predict's default for the stages that will run (frozen: set once, here)
            object.__setattr__(self, "io", io_for_stages(self.stages, self.checkpoint))


def default_stages(cfg: PredictConfig) -> tuple[str, ...]:
    """:func:`default_stage_names` of ``cfg``."""
    return default_stage_names(cfg.checkpoint, cfg.io.iters)


def active_stages(cfg: PredictConfig) -> tuple[str, ...]:
    """The stages that run: ``cfg.stages`` (or :func:`default_stages`) without ``network`` when
    ``cfg.network`` is False and without ``adam`` when ``cfg.io.iters`` is 0."""
    named = default_stages(cfg) if cfg.stages is None else cfg.stages
    return tuple(s for s in stg.STAGE_NAMES if s in named and not (s == "network" and not cfg.network)
                 and not (s == "adam" and cfg.io.iters <= 0))
