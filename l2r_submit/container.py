"""The container's entrypoint: ``l2r predict`` with the organisers' mounts as defaults.

    docker run [--gpus all] -v DATA:/l2r/data:ro -v OUT:/l2r/output IMAGE [DATASET_JSON] [l2r predict options]

Without DATASET_JSON, the dataset JSON is looked for in /l2r/data (``*_dataset.json`` first, then the
only ``*.json``); a relative DATASET_JSON that is not found from the working folder is taken from /l2r/data;
without ``--out`` (or ``--out=DIR``), fields go to /l2r/output. Every other option is passed to
``l2r predict`` unchanged (``--format``, ``--names``, ``--split``, ``--io-iters``, ``--evaluate``, ...).
"""

from __future__ import annotations

import sys
from pathlib import Path

DATA_DIR = Path("/l2r/data")
OUTPUT_DIR = Path("/l2r/output")

USAGE = __doc__ or ""


def find_dataset_json(data_dir: Path) -> Path:
    """The dataset JSON of a data folder.

    Raises:
        ValueError: none, or several candidates (name the one to use).
    """
    candidates = sorted(data_dir.glob("*_dataset.json")) or sorted(data_dir.glob("*.json"))
    if not candidates:
        raise ValueError(f"{data_dir}: no dataset JSON found; mount the data folder there or pass the JSON path")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise ValueError(f"{data_dir}: several JSON files ({names}); pass the one to use as the first argument")
    return candidates[0]


def build_argv(args: list[str], data_dir: Path = DATA_DIR, output_dir: Path = OUTPUT_DIR) -> list[str]:
    """The ``l2r predict`` argument list for the container's arguments."""
    positional = args[0] if args and not args[0].startswith("-") else None
    rest = args[1:] if positional else list(args)
    dataset_json = Path(positional) if positional else find_dataset_json(data_dir)
    if not dataset_json.is_absolute() and not dataset_json.exists() and (data_dir / dataset_json).exists():
        dataset_json = data_dir / dataset_json  # `docker run ... IMAGE AbdomenCTCT_dataset.json`
    if not any(a == "--out" or a.startswith("--out=") for a in rest):  # a second --out would win over the user's
        rest = [*rest, "--out", str(output_dir)]
    return ["predict", str(dataset_json), *rest]


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    from .cli import main as l2r
    from .commands.common import stop_signals

    if args[:1] in (["-h"], ["--help"]):
        print(USAGE.strip() + "\n\nOptions of l2r predict:\n")
        l2r(["predict", "--help"], prog_name="l2r")
        return
    try:
        l2r_args = build_argv(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    with stop_signals():  # python is the container's first process: without a handler SIGTERM is ignored
        l2r(l2r_args, prog_name="l2r")  # predict says what it kept; earlier, click's "Aborted!" (exit 1)


if __name__ == "__main__":  # pragma: no cover
    main()
