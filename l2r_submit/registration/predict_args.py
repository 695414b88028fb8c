"""``l2r predict``'s arguments before torch is imported: the checks that need no torch, so a mistake
is reported at once, and what a run was asked (its request key), so that a rerun with nothing to do
(:mod:`l2r_submit.registration.quick_rerun`) never imports torch."""

from __future__ import annotations

from pathlib import Path

STAGE_NAMES = ("network", "affine", "search", "adam")
""":data:`l2r_submit.registration.stages.STAGE_NAMES`, repeated here because ``l2r_submit.registration.stages`` imports torch (a
test keeps the two equal; the stages module parses the names again)."""


def pipeline_order(text: str | None) -> tuple[str, ...] | None:
    """The stages of ``--stages`` (checked by :func:`check_stages`) in the order they run; None without it."""
    if text is None:
        return None
    names = {s.strip() for s in text.split(",")}
    return tuple(n for n in STAGE_NAMES if n in names)


def check_stages(text: str | None) -> None:
    """``--stages``: a comma list of distinct known names.

    Raises:
        ValueError: an unknown or repeated name, or none.
    """
    if text is None:
        return
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names or len(set(names)) != len(names) or any(n not in STAGE_NAMES for n in names):
        raise ValueError(f"--stages/--search-*: stages: '{text}' received, expected a comma list of distinct names "
                         f"among {', '.join(STAGE_NAMES)}")


def request_of(params: dict, checkpoint: Path | None) -> dict | None:
    """What this ``l2r predict`` was asked (:func:`l2r_submit.registration.quick_rerun.request_key`): every option in
    ``params`` but ``quiet`` and ``do_eval`` (they change no field), paths made absolute; None when the
    weights are not usable (the full run then says why)."""
    from . import quick_rerun

    try:
        ckpt = quick_rerun.resolve_checkpoint(checkpoint, quick_rerun.DEFAULT_WEIGHTS_DIR)
    except (ValueError, OSError):
        return None
    options = {k: str(v.absolute()) if isinstance(v, Path) else v for k, v in params.items()
               if k not in ("quiet", "do_eval")}
    return quick_rerun.request_key(options, ckpt)


def parse_axes(text: str) -> tuple[int, ...]:
    """``--search-centre``: ``"0,1"`` -> (0, 1); ``"none"`` -> ().

    Raises:
        ValueError: anything else than distinct axes among 0, 1, 2, or 'none'.
    """
    if text.strip().lower() == "none":
        return ()
    try:
        axes = tuple(int(v) for v in text.split(","))
    except ValueError:
        axes = None
    if not axes or len(set(axes)) != len(axes) or any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"--search-centre: '{text}' received, expected distinct axes among 0, 1, 2 (e.g. 0,1) "
                         "or 'none'")
    return axes


DEFAULT_STAGES = ("search", "adam")  # measured best with the shipped weights (README, "Predict")
NETWORK_STAGES = ("network", "adam")  # the default when weights are named, or when adam is switched off


def default_stage_names(checkpoint: Path | None, io_iters: int | None) -> tuple[str, ...]:
    """The stages when none are named: ``search,adam`` with the shipped weights (with them the network
    measured below no registration, README "Predict"); ``network,adam`` when ``checkpoint`` names
    weights, or when the refinement is off (``io_iters`` 0: the network alone, as before)."""
    return NETWORK_STAGES if checkpoint is not None or io_iters == 0 else DEFAULT_STAGES


def check_options_used(stages: str | None, checkpoint: Path | None, io_iters: int | None,
                       given: list[str], no_network: bool = False) -> None:
    """Options of a stage that will not run change nothing; refuse them rather than ignore them silently.
    The stages that run: ``stages`` as named (a checked ``--stages``; None: :func:`default_stage_names`),
    without the network with ``no_network`` and without adam when ``io_iters`` is 0. ``given``: the
    options typed on the command line, in the order the CLI declares them (``--io-iters 0`` is not among
    them: it asks for no refinement); ``--io-*`` ones belong to adam, ``--search-*`` ones to the search,
    ``--affine-*`` ones to the affine stage.
    Weights named (``checkpoint``) belong to the network (unchecked when no stage is left: the run says so).

    Raises:
        ValueError: a refinement option when adam does not run, a search option when the search does not,
            weights when the network does not.
    """
    if stages is not None:
        names, why = [s.strip() for s in stages.split(",") if s.strip()], ""
    else:
        names = list(default_stage_names(checkpoint, io_iters))
        why = ", the default with --checkpoint" if checkpoint is not None else ", the default"
    if no_network and "network" in names:
        names.remove("network")
        why += "; --no-network drops the network"
    if io_iters == 0 and "adam" in names:
        names.remove("adam")
        why += "; --io-iters 0 turns adam off"
    if checkpoint is not None and names and "network" not in names:
        raise ValueError(f"--checkpoint: the network stage does not run (stages: {','.join(names)}{why}), so the "
                         "weights would change nothing; leave --checkpoint out or run the network (--stages)")
    for stage, prefix in (("adam", "--io-"), ("search", "--search-"), ("affine", "--affine-")):
        unused = [o for o in given if o.startswith(prefix)]
        if stage not in names and unused:
            raise ValueError(f"{', '.join(unused)}: the {stage} stage does not run (stages: "
                             f"{','.join(names) or 'none'}{why}), so {'it' if len(unused) == 1 else 'they'} "
                             f"would change nothing; leave the option out or run {stage} (--stages)")
